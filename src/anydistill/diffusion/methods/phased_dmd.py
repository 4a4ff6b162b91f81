r"""`phased-dmd`: distribution matching within SNR subintervals (Fan et al. 2025, "Phased DMD: Few-step
Distribution Matching Distillation via Score Matching within Subintervals"; project page
x-niper.github.io/projects/Phased-DMD, training code not released: this follows the paper).

A K-step generator's steps are split into ``phases`` consecutive groups; each phase has its own
expert (a copy of the teacher) that maps the state at the phase's first time to the state
:math:`x_s` at its end time ``s`` (the last phase: the clean sample). The experts sit behind one
time-routed `Denoiser` (`anydistill.models.routed_denoiser`, ``by: time``), so sampling is DMD2's
multistep sampler with each step answered by its phase's expert. Phases train one after another,
``phase_iterations`` each:

* **inputs**: backward simulation through the frozen earlier experts to the phase's start, then,
  inside a phase of several steps, stochastic gradient truncation (a random step backpropagates,
  the steps before it run without gradient), as the paper's main setting does;
* **generator**: the expert's x0 prediction re-noised to ``s`` is :math:`x_s`; its DM gradient
  (`targets.phased_dm_gradient`) compares the teacher and the fake score at
  :math:`x_t \sim q(x_t \mid x_s)`, ``t ~ U(s, t_high)`` ("reverse nested intervals");
* **fake score**: restarted from the teacher (and its optimizer state cleared) at each phase's
  start, trained on :math:`x_s` with the unbiased subinterval target (Eq. 13, x0 form,
  `targets.subinterval_x0_target`), weighted :math:`\min(1, 10\sigma_{t|s}^2)`, ``update_ratio``
  (5) updates per generator update. Data-free: no GAN by default.

Every other `dmd2` option applies (``cfg`` guides the teacher). The earlier phases' experts stay as
trained; each expert starts from the teacher.
"""

from __future__ import annotations

import torch

from anydistill.core.recipe import NonNegativeFloat, PositiveInt
from anydistill.diffusion.common import predict, schedule_of
from anydistill.diffusion.distribution_matching import trainable_copy
from anydistill.diffusion.methods.dmd2 import DMD2, step_times
from anydistill.diffusion.targets import dmd_surrogate_loss
from anydistill.diffusion.targets.phased import phased_dm_gradient, subinterval_noise, subinterval_x0_target
from anydistill.diffusion.timesteps import UniformTime
from anydistill.models.routed_denoiser import routed


class PhasedDMD(DMD2):
    """Phased DMD; see the module docstring.

    Args:
        phases: the number of phases (experts); ``num_steps`` must be a multiple of it.
        phase_iterations: training iterations of each phase.
        num_steps: the generator's steps (4).
        gan_weight_generator, gan_weight_discriminator: 0 (data-free, as the paper).
    """

    paper = "Fan et al. 2025, Phased DMD: Few-step Distribution Matching Distillation via Score Matching within Subintervals"
    data = "data-free"

    def __init__(self, student, teacher=None, optimizer=None, *, phases: PositiveInt = 2, phase_iterations: PositiveInt = 1000,
                 num_steps: PositiveInt = 4, gan_weight_generator: NonNegativeFloat = 0.0, gan_weight_discriminator: NonNegativeFloat = 0.0,
                 **dmd2_options):
        if num_steps % phases:
            raise ValueError(f"phased-dmd: num_steps ({num_steps}) must be a multiple of phases ({phases}), each phase a run of steps.")
        if getattr(student, "preconditioning", "none") != "none":  # EDM preconditioning feeds the net c_noise(t), not t
            raise ValueError("phased-dmd routes each step to its expert by the network's time input: build the model "
                             "without preconditioning.")
        times = step_times(schedule_of(student), num_steps)
        boundaries = [times[p * num_steps // phases] for p in range(phases)]
        super().__init__(routed(student, phases, "time", boundaries), teacher, optimizer, num_steps=num_steps,
                         gan_weight_generator=gan_weight_generator, gan_weight_discriminator=gan_weight_discriminator, **dmd2_options)
        if self.init_from != "teacher":
            raise ValueError("phased-dmd starts every expert from the teacher: drop init_from.")
        self.phases, self.phase_iterations = phases, phase_iterations

    def initialise_networks(self) -> None:
        teacher_net = self.teacher.model.net.state_dict()
        for net in self.student.net.nets:
            net.load_state_dict(teacher_net)
        self.fake = trainable_copy(self.teacher.model)

    def phase_steps(self, phase: int) -> tuple[int, int]:
        per = self.num_steps // self.phases
        return phase * per, (phase + 1) * per

    def end_time(self, phase: int) -> float:
        """``s``: the time of the state the phase hands on (the clean end for the last)."""
        _, end = self.phase_steps(phase)
        return self.times[end] if end < self.num_steps else float(self.schedule.t_min)

    def phase_output(self, phase: int, n: int, cond: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """``x_s [n, ...]`` of the phase's expert, with gradient through its one truncated step."""
        sch = self.schedule
        first, end = self.phase_steps(phase)
        last = first + int(torch.randint(end - first, ()))  # stochastic gradient truncation inside the phase
        x = sch.sigma(torch.tensor(float(sch.t_max), dtype=torch.float64)).float().item() * sch.sample_noise(like[:n], None)
        with torch.no_grad():
            for j in range(last):  # the frozen earlier experts, then this one's own earlier steps
                x0 = predict(self.student, x, self.step_time(j, n, x.device), cond, "x0")
                x = sch.add_noise(x0, sch.sample_noise(x0, None), self.step_time(j + 1, n, x.device))
        x0 = predict(self.student, x, self.step_time(last, n, x.device), cond, "x0")
        s = torch.full((n,), self.end_time(phase), device=x.device)
        return sch.add_noise(x0, sch.sample_noise(x0, None), s) if end < self.num_steps else x0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_c = self.optimizers()[:2]
        iteration = self.iteration(batch_idx)
        phase = min(iteration // self.phase_iterations, self.phases - 1)
        local = iteration - phase * self.phase_iterations
        if local == 0 and phase > 0:  # a new phase: the fake score starts again from the teacher
            self.fake.load_state_dict(self.teacher.model.state_dict())
            opt_c.state.clear()
        real = batch["x"]
        _, cond = self.batch_labels(batch)
        n, sch, s_value = real.shape[0], self.schedule, self.end_time(phase)
        s = torch.full((n,), s_value, device=real.device)
        span = sch.t_max - sch.t_min
        later = UniformTime(s_value, max(sch.t_min + self.t_high * span, s_value + 1e-3 * span))  # t in (s, t_high]
        guidance = self.cfg if cond is not None else None

        if local % self.update_ratio == 0:  # the generator's turn
            x_s = self.phase_output(phase, n, cond, real)
            t = later.sample(n, sch, generator=None, device=real.device)
            grad = phased_dm_gradient(x_s, s, t, sch.sample_noise(x_s, None),
                                      lambda x_t, tt: self.real_teacher.predict(x_t, tt, cond, kind="x0", cfg=guidance),
                                      lambda x_t, tt: predict(self.fake, x_t, tt, cond, "x0"), sch)
            loss_g = dmd_surrogate_loss(x_s, grad, reduction="mean")
            self.step(opt_g, loss_g, self.student.net.nets[phase].parameters())
            self.log_train("train/loss_dm", loss_g, n, prog_bar=True)
            x_s = x_s.detach()
        else:
            with torch.no_grad():
                x_s = self.phase_output(phase, n, cond, real)

        # The fake score, on this phase's states only: the unbiased subinterval target.
        t = later.sample(n, sch, generator=None, device=real.device)
        noise = sch.sample_noise(x_s, None)
        target, weight = subinterval_x0_target(x_s, s, t, noise, sch)
        estimate = predict(self.fake, subinterval_noise(x_s, s, t, noise, sch), t, cond, "x0")
        loss_c = (weight * (estimate - target) ** 2).mean()
        self.step(opt_c, loss_c, [*self.fake.parameters(), *self.discriminator.parameters()])
        self.log_train("train/loss_fake", loss_c, n)
        self.log_train("train/phase", torch.tensor(float(phase)), n)
