"""DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021): gradient matching.

One outer iteration (official ``main.py``): sample a fresh ConvNet; then ``outer_loop`` times:

1. for every class c, the gradients of the cross-entropy on ``batch_real`` real images of c and
   on the c-th synthetic block, with respect to all network parameters (the synthetic side with
   ``create_graph``), and their layer-wise distance ``D`` (`gradient_matching_distance`, "ours");
2. one SGD step on the pixels for ``sum_c D`` (lr_img 0.1, momentum 0.5);
3. unless this was the last outer step, ``inner_loop`` epochs of SGD (lr_net 0.01, batch 256) of
   the network on the (detached) synthetic set.

``outer_loop`` and ``inner_loop`` follow the official ``get_loops(ipc)`` unless set. DSA is DC
plus the same augmentation draw on the real and the synthetic batch of each class (and per-image
augmentation while the network trains on the synthetic set); DC matches without augmentation.
The ConvNet uses instance norm, so the official batch-norm freezing step does not arise.
"""

from __future__ import annotations

import logging

from typing import ClassVar

import torch
import torch.nn.functional as F

from anydistill.core.recipe import OptimizerSpec
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.dataset.matching import gradient_matching_distance
from anydistill.dataset.method import DatasetDistillationMethod
from anydistill.dataset.synset import SyntheticSet

log = logging.getLogger(__name__)

# The official get_loops: images per class -> (outer_loop, inner_loop).
OFFICIAL_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def official_loops(ipc: int) -> tuple[int, int, int]:
    """``(outer_loop, inner_loop, table_ipc)`` of the official ``get_loops`` for ``ipc`` images per
    class. The official table stops at a few values of ipc; any other ipc takes the loops of the
    nearest one (the lower on a tie), ``table_ipc``, which the caller logs and records."""
    table_ipc = min(OFFICIAL_LOOPS, key=lambda known: (abs(known - ipc), known))
    return (*OFFICIAL_LOOPS[table_ipc], table_ipc)


class DC(DatasetDistillationMethod):
    """Gradient matching without augmentation (DC)."""

    paper = "Zhao, Mopuri & Bilen, Dataset Condensation with Gradient Matching, ICLR 2021"
    # The papers' image learning rate is 0.1 (DSA too); digits needed 0.01 (dataset_digits_tune.md).
    search_space = {"lr_images": LogUniform(0.003, 0.3)}
    paper_iterations = 1000
    default_strategy: ClassVar[str] = "none"

    def __init__(
        self,
        student: SyntheticSet,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        iterations_per_epoch: int = 50,
        lr_images: float = 0.1,
        momentum_images: float = 0.5,
        batch_real: int = 256,
        dsa_strategy: str | None = None,
        net_width: int = 128,
        net_depth: int = 3,
        outer_loop: int | None = None,
        inner_loop: int | None = None,
        lr_net: float = 0.01,
        batch_train: int = 256,
        metric: str = "ours",
    ):
        super().__init__(student, teacher, optimizer, iterations_per_epoch=iterations_per_epoch, lr_images=lr_images,
                         momentum_images=momentum_images, batch_real=batch_real,
                         dsa_strategy=self.default_strategy if dsa_strategy is None else dsa_strategy,
                         net_width=net_width, net_depth=net_depth)
        self.derived_loops = {}
        if outer_loop is None or inner_loop is None:
            default_outer, default_inner, table_ipc = official_loops(student.ipc)
            if table_ipc != student.ipc:
                log.warning("%s: the official get_loops has no entry for ipc=%d; using those of ipc=%d (outer_loop=%d, inner_loop=%d), "
                            "recorded in the run's config.yaml.", type(self).__name__, student.ipc, table_ipc, default_outer, default_inner)
            self.derived_loops = {"outer_loop": default_outer if outer_loop is None else outer_loop,
                                  "inner_loop": default_inner if inner_loop is None else inner_loop}
            outer_loop = default_outer if outer_loop is None else outer_loop
            inner_loop = default_inner if inner_loop is None else inner_loop
        if outer_loop < 1 or inner_loop < 0:
            raise ValueError(f"outer_loop must be >= 1 and inner_loop >= 0, got {outer_loop} and {inner_loop}.")
        self.outer_loop, self.inner_loop = outer_loop, inner_loop
        self.lr_net, self.batch_train, self.metric = lr_net, batch_train, metric

    def resolved_params(self) -> dict[str, int]:
        """The loop counts taken from the official table, so the saved config states them."""
        return dict(self.derived_loops)

    def matching_loss(self, net: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
        """``sum_c D(grad on synthetic c, grad on real c)`` for the current network."""
        params = list(net.parameters())
        loss = torch.zeros((), device=self.device)
        for c in range(self.student.num_classes):
            real, syn = self.siamese(self.real_batch(c, self.batch_real, generator),
                                     self.student.images[self.student.class_slice(c)], generator)
            label_real = torch.full((len(real),), c, device=self.device)
            label_syn = torch.full((len(syn),), c, device=self.device)
            grads_real = torch.autograd.grad(F.cross_entropy(net(real), label_real), params)
            grads_syn = torch.autograd.grad(F.cross_entropy(net(syn), label_syn), params, create_graph=True)
            loss = loss + gradient_matching_distance(grads_syn, [g.detach() for g in grads_real], self.metric)
        return loss

    def train_net(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        """``inner_loop`` epochs of the network on the detached synthetic set (per-image DSA when on)."""
        images, labels = self.student.images.detach(), self.student.labels().detach()
        for _ in range(self.inner_loop):
            self.train_epoch(net, optimizer, images, labels, self.batch_train, generator)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        generator = self.generator(self.iteration(batch_idx))
        net = self.fresh_net(generator).train()
        net_optimizer = torch.optim.SGD(net.parameters(), lr=self.lr_net)
        total = torch.zeros((), device=self.device)
        for step in range(self.outer_loop):
            loss = self.matching_loss(net, generator)
            self.image_step(loss)
            total += loss.detach()
            if step < self.outer_loop - 1:
                self.train_net(net, net_optimizer, generator)
        self.log_train("match_loss", total / (self.outer_loop * self.student.num_classes), batch_size=1, prog_bar=True)


class DSA(DC):
    """DC with differentiable siamese augmentation (DSA); digits drop ``flip``."""

    paper = "Zhao & Bilen, Dataset Condensation with Differentiable Siamese Augmentation, ICML 2021"
    default_strategy: ClassVar[str] = "color_crop_cutout_scale_rotate"
