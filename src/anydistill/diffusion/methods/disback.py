r"""`disback`: distribution backtracking (Zhang et al. 2024, "Distribution Backtracking Builds A Faster
Convergence Trajectory for Diffusion Distillation"; official code SYZhang0805/DisBack on the DMD2
codebase, ``main/degradation.py`` and ``main/train_sd.py``).

DMD's real score is the teacher from the first step, far from the generator's own distribution, so
its early gradients are poor guides. DisBack gives the generator a path of intermediate targets:

1. **Degradation path** (the first ``path_checkpoints x path_interval`` iterations): a copy of the
   teacher is trained with the fake-score (denoising) loss on the samples of the *frozen initial
   generator*, and a snapshot is kept every ``path_interval`` updates. The snapshots walk from the
   teacher's distribution towards the initial generator's.
2. **Backtracking** (the rest): `dmd2`, whose real score walks that path backwards, the most degraded
   snapshot first, one snapshot per ``switch_every`` iterations, ending at the teacher, which it
   keeps. The fake score starts from the most degraded snapshot: it already models the initial
   generator (the README's pseudocode; see the card for what the released script does instead).

Every `dmd2` option applies to stage 2. The snapshots are submodules, so a checkpoint taken
anywhere on the path resumes there. Deviations from the released code (which records the path with
DMD2's guidance update, GAN term included, and whose stage-2 loop, as published, loads one snapshot
at most): the path network trains with the fake-score loss alone, and the walk is the paper's.
"""

from __future__ import annotations

import torch
from torch import nn

from anydistill.core.optim import make_optimizer
from anydistill.core.recipe import PositiveFloat, PositiveInt
from anydistill.diffusion.common import diffusion_teacher, predict
from anydistill.diffusion.distribution_matching import fake_score_loss, trainable_copy
from anydistill.diffusion.methods.dmd2 import DMD2


class DisBack(DMD2):
    """DisBack; see the module docstring. Every `dmd2` option applies to stage 2.

    Args:
        path_checkpoints: snapshots on the degradation path (the official 10).
        path_interval: path-network updates between snapshots (the official 100).
        switch_every: stage-2 iterations on each snapshot before the next, less degraded one.
        path_lr: the path network's learning rate (default the fake score's).
    """

    paper = "Zhang et al. 2024, Distribution Backtracking Builds A Faster Convergence Trajectory for Diffusion Distillation (DisBack)"

    def __init__(self, student, teacher=None, optimizer=None, *, path_checkpoints: PositiveInt = 10, path_interval: PositiveInt = 100,
                 switch_every: PositiveInt = 200, path_lr: PositiveFloat | None = None, **dmd2_options):
        super().__init__(student, teacher, optimizer, **dmd2_options)
        self.path_checkpoints, self.path_interval, self.switch_every, self.path_lr = path_checkpoints, path_interval, switch_every, path_lr
        self.path_steps = path_checkpoints * path_interval

    def setup(self, stage: str) -> None:
        if self.teacher is not None and not any(True for _ in self.teacher.model.parameters()):
            raise ValueError("disback records its path by training a copy of the teacher: give it a network teacher (an exact "
                             "teacher such as analytic-mixture has no weights to train).")
        super().setup(stage)
        if not hasattr(self, "path_net"):
            self.path_net = trainable_copy(self.teacher.model)  # recorded from the teacher towards the initial generator
            self.path = nn.ModuleList(trainable_copy(self.teacher.model).requires_grad_(False) for _ in range(self.path_checkpoints))

    def configure_optimizers(self):
        generator, critic = super().configure_optimizers()
        spec = self.optimizer_spec
        return [generator, critic, make_optimizer(spec, self.path_net.parameters(), lr=self.path_lr or self.fake_lr or spec.lr)]

    def target_index(self, iteration: int) -> int | None:
        """Which snapshot is the real score at stage-2 ``iteration`` (counted from the stage's start):
        the most degraded first, then one step back every ``switch_every``; None: the teacher."""
        back = iteration // self.switch_every
        return None if back >= self.path_checkpoints else self.path_checkpoints - 1 - back

    def iteration(self, batch_idx: int) -> int:
        """The stage-2 iteration (negative while the path is recorded): DMD2's update rule counts from stage 2."""
        return super().iteration(batch_idx) - self.path_steps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        iteration = self.iteration(batch_idx)
        if iteration < 0:
            self.record_path(batch, iteration + self.path_steps)
            return
        index = self.target_index(iteration)
        self.real_teacher = diffusion_teacher(self.teacher if index is None else self.path[index])
        self.log_train("train/target_snapshot", torch.tensor(float(self.path_checkpoints if index is None else index)), batch["x"].shape[0])
        super().training_step(batch, batch_idx)

    def record_path(self, batch: dict[str, torch.Tensor], iteration: int) -> None:
        """Stage 1: one update of the path network on the frozen generator's samples; a snapshot every
        ``path_interval`` updates; at the last, the fake score takes the most degraded snapshot."""
        real = batch["x"]
        _, cond = self.batch_labels(batch)
        k = int(torch.randint(self.num_steps, ()))
        with torch.no_grad():
            x = predict(self.student, self.generator_input(k, real, cond), self.step_time(k, real.shape[0], real.device), cond, "x0")
        loss = fake_score_loss(self.path_net, self.schedule, x, cond, times=self.critic_times, weighting=self.fake_weighting)
        self.step(self.optimizers()[2], loss, self.path_net.parameters())
        self.log_train("train/loss_path", loss, real.shape[0], prog_bar=True)
        if (iteration + 1) % self.path_interval == 0:
            snapshot = self.path[(iteration + 1) // self.path_interval - 1]
            snapshot.load_state_dict(self.path_net.state_dict())
            if iteration + 1 == self.path_steps:
                self.fake.load_state_dict(self.path_net.state_dict())
