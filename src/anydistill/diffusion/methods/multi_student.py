r"""`multi-student`: multi-student distillation (Song et al. 2025, "Multi-student Diffusion
Distillation for Better One-step Generators"; no code released, research.nvidia.com/labs/toronto-ai/MSD).

The conditioning classes are split into ``students`` = K consecutive groups, and each group gets its
own one-step generator, chosen by the label (`anydistill.models.routed_denoiser`): each student
spends its capacity on fewer modes, so K students of the teacher's size beat one, and K smaller
students can match one full-size student while each sample runs through a smaller network.

Each student is trained by `dmd2` (DM + GAN, TTUR, backward simulation; every option applies) on
its own classes: the router sends each example to its student, and the fake score, class-
conditional, tracks every student's distribution for its classes at once (the paper trains one
fake score per student; one conditional network is the same estimate, stated on the card).

Students of the teacher's architecture start from the teacher's weights. Smaller students cannot,
so they first learn the teacher's denoiser (the paper's "teacher score matching"): for
``score_matching_steps`` iterations each student regresses the teacher's prediction on noised real
data of its classes, :math:`\lVert F_\text{student}(x_t, t, c) - F_\text{teacher}(x_t, t, c)\rVert^2`
in the native prediction (velocity, x0, eps), ``t`` uniform; then distribution matching begins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anydistill.core.recipe import NonNegativeInt, PositiveInt
from anydistill.diffusion.common import predict
from anydistill.diffusion.distribution_matching import trainable_copy
from anydistill.diffusion.methods.dmd2 import DMD2
from anydistill.diffusion.timesteps import UniformTime
from anydistill.models.routed_denoiser import routed


class MultiStudent(DMD2):
    """Multi-student DMD2; see the module docstring. Every `dmd2` option applies.

    Args:
        students: K, the number of students (consecutive class groups).
        score_matching_steps: iterations of teacher score matching before distribution matching
            (needed, > 0, when the students are smaller than the teacher; 0: start from the teacher).
    """

    paper = "Song et al. 2025, Multi-student Diffusion Distillation for Better One-step Generators (MSD)"

    def __init__(self, student, teacher=None, optimizer=None, *, students: PositiveInt = 4,
                 score_matching_steps: NonNegativeInt = 0, **dmd2_options):
        super().__init__(routed(student, students), teacher, optimizer, **dmd2_options)
        if self.init_from != "teacher":
            raise ValueError("multi-student starts its students from the teacher (or from teacher score matching): drop init_from.")
        self.students, self.score_matching_steps = students, score_matching_steps

    def starts_from_teacher(self) -> bool:
        return False  # smaller students are allowed: they learn the teacher first

    def initialise_networks(self) -> None:
        """Students of the teacher's shape copy its network; the fake score is a copy of the teacher."""
        teacher_net = self.teacher.model.net.state_dict()
        same = all(k in teacher_net and teacher_net[k].shape == v.shape for k, v in self.student.net.nets[0].state_dict().items())
        if same and len(teacher_net) == len(self.student.net.nets[0].state_dict()):
            for net in self.student.net.nets:
                net.load_state_dict(teacher_net)
        elif self.score_matching_steps == 0:
            raise ValueError("multi-student: the students are not the teacher's architecture, so they cannot start from it; set "
                             "score_matching_steps (e.g. 2000) to have them learn the teacher's denoiser first.")
        self.fake = trainable_copy(self.teacher.model)

    def iteration(self, batch_idx: int) -> int:
        """The distribution-matching iteration (negative during teacher score matching)."""
        return super().iteration(batch_idx) - self.score_matching_steps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.iteration(batch_idx) < 0:
            self.match_teacher(batch)
            return
        super().training_step(batch, batch_idx)

    def match_teacher(self, batch: dict[str, torch.Tensor]) -> None:
        """One step of teacher score matching on noised real data (each row trains its class's student)."""
        x, y = batch["x"], batch["y"]
        t = UniformTime().sample(x.shape[0], self.schedule, generator=None, device=x.device)
        x_t = self.schedule.add_noise(x, self.schedule.sample_noise(x, None), t)
        kind = self.student.prediction
        loss = F.mse_loss(predict(self.student, x_t, t, y, kind), self.real_teacher.predict(x_t, t, y, kind=kind))
        self.step(self.optimizers()[0], loss, self.student.parameters())
        self.log_train("train/loss_score_matching", loss, x.shape[0], prog_bar=True)
