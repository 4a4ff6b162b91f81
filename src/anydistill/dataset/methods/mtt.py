"""MTT: dataset distillation by matching training trajectories (Cazenavette et al., CVPR 2022).

Experts (``buffer.py``): ``num_experts`` ConvNets trained on the real data for
``expert_train_epochs`` epochs (SGD lr ``lr_teacher``, no momentum or weight decay, batch 256,
per-image DSA), their flat parameters stored after every epoch in an `ExpertBuffer` on disk. The
buffer is built once per (data, architecture, expert settings) and reused by later runs.

One iteration (``distill.py``): pick a random expert and start epoch ``t < max_start_epoch``; start
a student at the expert's ``theta*_t``; take ``syn_steps`` functional SGD steps with the learnable
step size alpha on minibatches of ``batch_syn`` synthetic images (per-image DSA), keeping the graph;
minimise ``||theta_hat - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` (M = ``expert_epochs``)
with SGD (momentum 0.5) on the pixels (``lr_images``) and on alpha (``lr_lr``). Alpha starts at
``syn_lr_init`` (the official ``distill.py --lr_teacher``), or at the set's ``initial_lr`` if unset.

Difference from the official code: alpha is stored as ``log alpha`` (`SyntheticSet.lr`), so that
it stays positive; ``lr_lr`` is therefore the step size of ``log alpha``, not of alpha. A raw step
``lr`` on alpha moves alpha as much as ``lr / alpha^2`` does on ``log alpha``: the official 1e-5 at
alpha = 0.01 is the default 0.1 here.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from anydistill.core.recipe import OptimizerSpec
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.dataset.convnet import flat_parameters, functional_forward, unflatten
from anydistill.dataset.experts import ExpertBuffer, ExpertWriter, MANIFEST
from anydistill.dataset.matching import trajectory_matching_loss
from anydistill.dataset.method import DatasetDistillationMethod
from anydistill.dataset.synset import SyntheticSet


class MTT(DatasetDistillationMethod):
    """Trajectory matching against expert snapshots, with a learnable step size."""

    paper = "Cazenavette et al., Dataset Distillation by Matching Training Trajectories, CVPR 2022"
    # The paper's pixel learning rates run from 100 to 10,000 (per dataset and IPC); ours are per-pixel means.
    search_space = {"lr_images": LogUniform(10.0, 1000.0)}
    paper_iterations = 5000

    def __init__(
        self,
        student: SyntheticSet,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        iterations_per_epoch: int = 50,
        lr_images: float = 100.0,
        momentum_images: float = 0.5,
        lr_lr: float = 0.1,
        syn_steps: int = 20,
        expert_epochs: int = 2,
        max_start_epoch: int = 10,
        batch_syn: int | None = None,
        num_experts: int = 5,
        expert_train_epochs: int = 15,
        lr_teacher: float = 0.01,
        syn_lr_init: float | None = None,
        buffer_dir: str = ".anydistill-cache/experts",
        dsa_strategy: str = "color_crop_cutout_scale_rotate",
        net_width: int = 128,
        net_depth: int = 3,
    ):
        super().__init__(student, teacher, optimizer, iterations_per_epoch=iterations_per_epoch, lr_images=lr_images,
                         momentum_images=momentum_images, dsa_strategy=dsa_strategy, net_width=net_width, net_depth=net_depth)
        if max_start_epoch + expert_epochs > expert_train_epochs + 1:
            raise ValueError(
                f"max_start_epoch + expert_epochs ({max_start_epoch} + {expert_epochs}) must be <= expert_train_epochs + 1 "
                f"({expert_train_epochs + 1}): the target snapshot must exist; lower them or train the experts longer."
            )
        for name, value in (("syn_steps", syn_steps), ("expert_epochs", expert_epochs), ("max_start_epoch", max_start_epoch),
                            ("num_experts", num_experts), ("expert_train_epochs", expert_train_epochs)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        self.lr_lr, self.syn_steps, self.expert_epochs = lr_lr, syn_steps, expert_epochs
        self.max_start_epoch, self.batch_syn = max_start_epoch, batch_syn or student.num_images
        self.num_experts, self.expert_train_epochs, self.lr_teacher = num_experts, expert_train_epochs, lr_teacher
        if syn_lr_init is not None and not (math.isfinite(syn_lr_init) and syn_lr_init > 0):
            raise ValueError(f"syn_lr_init must be a finite float > 0 (alpha at the start), got {syn_lr_init}.")
        self.syn_lr_init = syn_lr_init
        self.buffer_dir = Path(buffer_dir)
        self.buffer: ExpertBuffer | None = None

    # ------------------------------------------------------------------ experts

    def expert_spec(self) -> dict[str, Any]:
        """What the experts depend on besides the data: architecture and training settings."""
        channels, height, width = self.student.image_shape
        return {"architecture": "convnet", "channels": channels, "num_classes": self.student.num_classes,
                "image_size": [height, width], "width": self.net_width, "depth": self.net_depth,
                "lr_teacher": self.lr_teacher, "epochs": self.expert_train_epochs, "batch": 256,
                "dsa_strategy": self.augment.strategy if self.augment else "none"}

    def attach_data(self, datamodule: Any) -> None:
        super().attach_data(datamodule)
        if self.syn_lr_init is not None:  # alpha_0 (official: --lr_teacher of distill.py); a resumed run's checkpoint overrides it
            with torch.no_grad():
                self.student.log_lr.fill_(math.log(self.syn_lr_init))
        fingerprint = datamodule.fingerprint("train")
        spec = self.expert_spec()
        key = hashlib.sha256(json.dumps([fingerprint, spec, self.num_experts], sort_keys=True).encode()).hexdigest()[:16]
        directory = self.buffer_dir / key
        if not (directory / MANIFEST).exists():
            self.train_experts(directory, spec, fingerprint)
        self.buffer = ExpertBuffer.open(directory, expected_model_spec=spec, expected_dataset_fingerprint=fingerprint)

    def train_experts(self, directory: Path, spec: dict[str, Any], fingerprint: str) -> None:
        """Train ``num_experts`` experts on the real split and store their per-epoch snapshots."""
        x, y = self.real_x, self.real_y
        template = self.fresh_net(torch.Generator().manual_seed(0))
        with ExpertWriter(directory, model_spec=spec, dataset_fingerprint=fingerprint,
                          num_params=sum(p.numel() for p in template.parameters())) as writer:
            for expert in range(self.num_experts):
                generator = torch.Generator().manual_seed(10_000 + expert)
                net = self.fresh_net(generator).train()
                optimizer = torch.optim.SGD(net.parameters(), lr=self.lr_teacher)
                snapshots = [flat_parameters(net).cpu()]
                for _ in range(self.expert_train_epochs):
                    self.train_epoch(net, optimizer, x, y, 256, generator)
                    snapshots.append(flat_parameters(net).cpu())
                writer.add_expert(snapshots)

    # ------------------------------------------------------------------ distillation

    def configure_optimizers(self) -> Any:
        images = torch.optim.SGD([self.student.images], lr=self.lr_images, momentum=self.momentum_images)
        if not self.student.learn_lr:
            return images
        return [images, torch.optim.SGD([self.student.log_lr], lr=self.lr_lr, momentum=0.5)]

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        generator = self.generator(self.iteration(batch_idx))
        _, _, start, target = self.buffer.sample_segment(generator, self.max_start_epoch, self.expert_epochs)
        start, target = start.to(self.device), target.to(self.device)
        net = self.fresh_net(generator).train()  # the architecture only; its weights come from the expert
        images, labels, alpha = self.student.images, self.student.labels(), self.student.lr
        params = start.clone().requires_grad_(True)
        chunks: list[torch.Tensor] = []
        for _ in range(self.syn_steps):
            if not chunks:
                chunks = list(torch.randperm(len(images), generator=generator).to(self.device).split(self.batch_syn))
            index = chunks.pop()
            x = images[index] if self.augment is None else self.augment(images[index], generator)
            loss = F.cross_entropy(functional_forward(net, unflatten(net, params), x), labels[index])
            grad = torch.autograd.grad(loss, params, create_graph=True)[0]
            params = params - alpha * grad
        loss = trajectory_matching_loss(params, start, target)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        self.log_train("trajectory_loss", loss, batch_size=1, prog_bar=True)
        self.log_train("syn_lr", alpha.detach(), batch_size=1)
