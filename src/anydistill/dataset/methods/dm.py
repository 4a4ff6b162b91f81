"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023; ``main_DM.py``).

Each iteration samples a fresh randomly initialised ConvNet and uses it, without its classifier,
as the embedder psi; for every class c it applies ONE siamese augmentation draw to ``batch_real``
real images of c and to the c-th synthetic block, and matches their mean embeddings:

    L = sum_c || mean_n psi(A(x_c,n)) - mean_m psi(A(s_c,m)) ||^2

then takes one SGD step on the pixels (lr_img 1.0, momentum 0.5; 20,000 iterations, real
initialisation, DSA in the paper). No network is trained and no second-order gradient is needed.
"""

from __future__ import annotations


import torch

from anydistill.core.recipe import OptimizerSpec
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.dataset.matching import distribution_matching_loss
from anydistill.dataset.method import DatasetDistillationMethod
from anydistill.dataset.synset import SyntheticSet


class DM(DatasetDistillationMethod):
    """Distribution matching with randomly initialised embedders (defaults: the official ones)."""

    paper = "Zhao & Bilen, Dataset Condensation with Distribution Matching, WACV 2023"
    # The paper's image learning rate is 1; a decade either side.
    search_space = {"lr_images": LogUniform(0.1, 10.0)}
    paper_iterations = 20000

    def __init__(
        self,
        student: SyntheticSet,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        iterations_per_epoch: int = 50,
        lr_images: float = 1.0,
        momentum_images: float = 0.5,
        batch_real: int = 256,
        dsa_strategy: str = "color_crop_cutout_scale_rotate",
        net_width: int = 128,
        net_depth: int = 3,
    ):
        super().__init__(student, teacher, optimizer, iterations_per_epoch=iterations_per_epoch, lr_images=lr_images,
                         momentum_images=momentum_images, batch_real=batch_real, dsa_strategy=dsa_strategy,
                         net_width=net_width, net_depth=net_depth)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        generator = self.generator(self.iteration(batch_idx))
        net = self.fresh_net(generator).train()
        net.requires_grad_(False)  # the embedder is fixed; only the pixels learn
        loss = torch.zeros((), device=self.device)
        for c in range(self.student.num_classes):
            real, syn = self.siamese(self.real_batch(c, self.batch_real, generator),
                                     self.student.images[self.student.class_slice(c)], generator)
            with torch.no_grad():
                embed_real = net.embed(real)
            loss = loss + distribution_matching_loss(embed_real, net.embed(syn))
        self.image_step(loss)
        self.log_train("dm_loss", loss / self.student.num_classes, batch_size=1, prog_bar=True)
