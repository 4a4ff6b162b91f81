"""`DatasetDistillationMethod`: the base of the dataset family, whose "student" is a `SyntheticSet`.

The trainable object is data, so these methods run their own loop (``own_loop``): every training
step is one outer iteration of the paper's algorithm, and it draws what it needs itself (a
class-balanced real batch, a freshly initialised network, augmentation parameters) from a
generator seeded by ``(run seed, iteration)``. A resumed run therefore replays the same draws, and
the iteration count is ``trainer.max_epochs x iterations_per_epoch``.

Optimisation is manual (``automatic_optimization = False``): the image optimizer is the papers'
SGD with momentum 0.5 (set by the method's parameters, not by the recipe's ``optimizer:``
section), and inner-loop networks are trained with plain ``torch.optim`` or functionally.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import OptimizerSpec
from anydistill.core.teacher import Teacher
from anydistill.dataset.augment import SiameseAugment
from anydistill.dataset.convnet import convnet
from anydistill.dataset.synset import SyntheticSet

_SEED_STRIDE = 1_000_003  # seeds of (run seed, iteration) pairs never collide for < 1M iterations


class DatasetDistillationMethod(DistillationMethod):
    """Shared machinery: real data per class, seeded draws, fresh networks, the image optimizer.

    Args:
        student: the `SyntheticSet` to optimise (built from the recipe's ``student:`` section).
        iterations_per_epoch: outer iterations per trainer epoch (checkpoints are per epoch).
        lr_images: SGD learning rate of the pixels (``lr_img``).
        momentum_images: SGD momentum of the pixels (0.5 in every official script).
        batch_real: real images per class per iteration (``batch_real``, 256).
        dsa_strategy: the siamese augmentation applied to real and synthetic batches alike, or
            ``"none"``. Digits datasets drop ``flip`` (a flipped digit is another glyph).
        net_width, net_depth: the ConvNet the matching uses (the evaluation protocol's, 128 x 3).
    """

    family: ClassVar[str] = "dataset"
    needs_teacher: ClassVar[bool] = False
    own_loop: ClassVar[bool] = True
    paper_iterations: ClassVar[int] = 0  # the outer iterations of the paper's main setting

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
        dsa_strategy: str = "color_crop_cutout_scale_rotate",
        net_width: int = 128,
        net_depth: int = 3,
    ):
        super().__init__(student, teacher, optimizer)
        if not isinstance(student, SyntheticSet):
            raise TypeError(
                f"{type(self).__name__} optimises a synthetic set: use `student: {{name: synthetic-set, ipc: ...}}`, "
                f"not {type(student).__name__}."
            )
        for name, value in (("iterations_per_epoch", iterations_per_epoch), ("batch_real", batch_real),
                            ("net_width", net_width), ("net_depth", net_depth)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        self.automatic_optimization = False
        self.iterations_per_epoch = iterations_per_epoch
        self.lr_images, self.momentum_images = lr_images, momentum_images
        self.batch_real = batch_real
        self.augment = None if dsa_strategy.strip().lower() in ("", "none") else SiameseAugment(dsa_strategy)
        self.net_width, self.net_depth = net_width, net_depth
        self.base_seed = 0
        self.real_x: Tensor | None = None
        self.class_indices: list[Tensor] = []

    # ------------------------------------------------------------------ data and draws

    def data_problems(self, datamodule: Any, teacher: nn.Module | None) -> list[str]:
        """Every class needs ``ipc`` training images: the set starts from them (``init: real``) and
        the random-subset and coreset baselines draw that many per class."""
        _, y = datamodule.split("train")
        counts = torch.bincount(y, minlength=self.student.num_classes).tolist()
        short = {c: n for c, n in enumerate(counts) if n < self.student.ipc}
        if not short:
            return []
        listed = ", ".join(f"class {c}: {n}" for c, n in list(short.items())[:5]) + (", ..." if len(short) > 5 else "")
        return [f"student.ipc={self.student.ipc} is more than some classes have in the training split ({listed}); "
                f"set ipc to at most {min(counts)}."]

    def attach_data(self, datamodule: Any) -> None:
        """Keep the real training split by class and initialise the set (real or noise) from the run seed."""
        x, y = datamodule.split("train")
        self.real_x, self.real_y = x, y
        self.class_indices = [(y == c).nonzero().flatten() for c in range(self.student.num_classes)]
        self.base_seed = torch.initial_seed() % 2**32  # the runner seeded everything with the recipe's seed
        generator = torch.Generator().manual_seed(self.base_seed)
        with torch.no_grad():
            if self.student.init == "real":
                self.student.init_from_real(x, y, generator)
            else:
                self.student.init_from_noise(generator)

    def train_dataloader(self) -> DataLoader:
        # Items are only positions within the epoch; each step draws its own data (see module docstring).
        return DataLoader(range(self.iterations_per_epoch), batch_size=None)

    def iteration(self, batch_idx: int) -> int:
        """The global outer-iteration number of this training step."""
        return self.current_epoch * self.iterations_per_epoch + batch_idx

    def generator(self, iteration: int) -> torch.Generator:
        """The source of every random draw of ``iteration`` (CPU)."""
        return torch.Generator().manual_seed((self.base_seed * _SEED_STRIDE + iteration) % 2**63)

    def real_batch(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """``[min(n, N_c), C, H, W]`` real images of class ``c`` without replacement, on the set's device."""
        members = self.class_indices[c]
        picks = members[torch.randperm(len(members), generator=generator)[:n]]
        return self.real_x[picks].to(self.device)

    def fresh_net(self, generator: torch.Generator) -> nn.Module:
        """A newly initialised matching ConvNet (its initialisation drawn from ``generator``)."""
        channels, height, width = self.student.image_shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            net = convnet(channels, self.student.num_classes, (height, width), width=self.net_width, depth=self.net_depth)
        return net.to(self.device)

    def siamese(self, real: Tensor, syn: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The same augmentation draw applied to both batches (DSA), or both unchanged."""
        if self.augment is None:
            return real, syn
        params = self.augment.sample(1, generator, image_size=syn.shape[-2:])
        return self.augment.apply(real, params), self.augment.apply(syn, params)

    def summary(self) -> dict[str, Any]:
        """Iterations run against the paper's, for the protocol card."""
        return {"iterations": self.current_epoch * self.iterations_per_epoch, "paper_iterations": self.paper_iterations}

    def train_epoch(self, net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                    batch_size: int, generator: torch.Generator) -> None:
        """One shuffled pass of SGD over ``(x [N, C, H, W], y [N] or [N, K])`` with per-image DSA when on.

        ``x`` may stay on the CPU (the real split); each minibatch moves to the method's device.
        """
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            images = x[batch.to(x.device)].to(self.device)
            if self.augment is not None:
                images = self.augment(images, generator)  # an independent draw per image (official seed -1)
            loss = F.cross_entropy(net(images), y[batch.to(y.device)].to(self.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([self.student.images], lr=self.lr_images, momentum=self.momentum_images)

    def image_step(self, loss: Tensor) -> None:
        """One SGD step of the pixels on ``loss`` (checked for NaN before it touches them)."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
