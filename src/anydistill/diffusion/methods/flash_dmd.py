r"""`flash-dmd`: timestep-aware DMD with a GAN on the clean steps and joint reward tuning (Chen et al.
2025, "Flash-DMD", arXiv 2511.20549; code "coming soon": this follows the paper as reported, see
the card for what could not be checked).

What changes from `dmd2`:

* **timestep-aware distillation**: of the K generator steps, the noisier ones train with the DM
  loss and the last ``adversarial_steps`` (the cleaner ones; SDXL at 4 steps: 999/749/499 DM, 249
  GAN) with the GAN loss alone: their input comes from backward simulation (no gradient) and their
  x0 goes to the discriminator on real data;
* **a lighter critic**: TTUR 2 by default (the paper: 1-2, where DMD2 uses 5), and optionally the
  fake score pulled towards the generator's weights after each generator update,
  :math:`\psi \leftarrow \lambda\psi + (1-\lambda)\theta` (``fake_ema`` = λ, the paper's "stabilised
  score estimator");
* **joint reward tuning**: ``reward_weight`` times a differentiable reward of the generator's x0
  (`anydistill.diffusion.rewards`) is maximised while distillation continues, which the paper
  claims keeps the generator from hacking the reward; ``distill: false`` tunes on the reward alone
  (the baseline it is compared with). The paper's RL is a DPO-style preference loss on sampler
  steps scored by a latent reward model, alternated 5:1 with distillation; here the reward's
  gradient is added to the generator's loss (the issue's setting, stated on the card).

Rewards: ``mode-preference`` (2-D: the share of responsibility on ``preferred_modes``, the true
preference), ``proxy`` (an MLP fitted to it on the training data only: exploitable off the data),
``ink`` (8x8 digits: a bold-vs-thin classifier's logit).
"""

from __future__ import annotations

from typing import Literal

import torch

from anydistill.core.recipe import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt
from anydistill.diffusion.methods.dmd2 import DMD2, gan_weight


def build_reward(kind: str, datamodule, preferred: list[int]) -> torch.nn.Module:
    """The reward model ``reward(x, cond) -> [B]`` named ``kind`` for the data module's data."""
    from anydistill.diffusion import rewards

    x = datamodule.split("train")[0]
    if kind == "ink":
        if x.ndim != 4:
            raise ValueError("flash-dmd: reward ink scores 8x8 digit images; use digits-generation data, or mode-preference / proxy on 2-D points.")
        return rewards.ink_reward(x)
    from anydistill.data.toy2d_distributions import mode_std, modes

    name = getattr(datamodule, "name", None)
    centres = modes(name) if isinstance(name, str) else None
    if centres is None:
        raise ValueError(f"flash-dmd: reward {kind} prefers modes of a 2-D Gaussian mixture; the data ({name}) has none known.")
    true = rewards.ModePreference(centres, 3 * mode_std(name), preferred)
    return true if kind == "mode-preference" else rewards.proxy_reward(x, true)


class FlashDMD(DMD2):
    """Flash-DMD; see the module docstring. Every `dmd2` option applies.

    Args:
        adversarial_steps: the last steps trained by the GAN loss instead of DM (needs GAN weights > 0 when > 0).
        update_ratio: critic updates per generator update (2).
        fake_ema: λ of the fake score's pull towards the generator after each generator update (None: off).
        reward: ``none``, ``mode-preference``, ``proxy`` or ``ink``.
        reward_weight: the reward's weight in the generator's loss (maximised).
        preferred_modes: the modes the 2-D rewards prefer.
        distill: False tunes on the reward alone (no DM, no GAN: the reward-only baseline).
    """

    paper = "Chen et al. 2025, Flash-DMD: Towards High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint Reinforcement Learning"

    def __init__(self, student, teacher=None, optimizer=None, *, adversarial_steps: NonNegativeInt = 1, update_ratio: PositiveInt = 2,
                 fake_ema: Fraction | None = None, reward: Literal["none", "mode-preference", "proxy", "ink"] = "none",
                 reward_weight: NonNegativeFloat = 0.0, preferred_modes: list[int] | None = None, distill: bool = True,
                 num_steps: PositiveInt = 4, **dmd2_options):
        super().__init__(student, teacher, optimizer, update_ratio=update_ratio, num_steps=num_steps, **dmd2_options)
        if adversarial_steps >= num_steps:
            raise ValueError(f"flash-dmd: adversarial_steps ({adversarial_steps}) must leave DM steps among the {num_steps}.")
        if adversarial_steps and distill and self.gan_weight_generator == 0:
            raise ValueError("flash-dmd: adversarial_steps need the GAN: set gan_weight_generator (and _discriminator) > 0, or adversarial_steps: 0.")
        if (reward == "none") != (reward_weight == 0):
            raise ValueError("flash-dmd: give both reward and reward_weight > 0 (or neither).")
        if not distill and reward == "none":
            raise ValueError("flash-dmd: distill: false tunes on the reward alone: set a reward.")
        self.adversarial_steps, self.fake_ema, self.reward_kind, self.reward_weight = adversarial_steps, fake_ema, reward, reward_weight
        self.preferred_modes, self.distill = preferred_modes or [0, 1], distill

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.fake_ema is not None and self.lora_rank is not None:
            raise ValueError("flash-dmd: fake_ema pulls the fake score towards the generator's weights, which LoRA keeps apart: drop one.")
        if self.reward_kind != "none" and not hasattr(self, "reward_model"):
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            if datamodule is None:
                raise ValueError("flash-dmd: the reward is fitted to the run's data: fit with a data module.")
            self.reward_model = build_reward(self.reward_kind, datamodule, self.preferred_modes)
            self.reward_model.requires_grad_(False)

    def generator_objective(self, x: torch.Tensor, cond: torch.Tensor | None, k: int, real: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        loss = x.new_zeros(())
        if self.distill:
            if k < self.num_steps - self.adversarial_steps:  # the noisier steps: distribution matching
                loss = super().generator_objective(x, cond, k, real)
            else:  # the cleaner steps: the GAN alone (DMD2's GAN term below is skipped for them)
                gan = self.discriminator.generator_loss(self.fake, x, cond)
                loss = gan_weight(self.gan_weight_generator, self.gan_scale, x[0].numel()) * gan
                self.log_train("train/loss_gan_clean_steps", gan, n)
        if self.reward_kind != "none":
            reward = self.reward_model(x, cond).mean()
            self.log_train("train/reward", reward, n, prog_bar=True)
            loss = loss - self.reward_weight * reward
        return loss

    def generator_gan_applies(self, k: int) -> bool:
        """DMD2's GAN term on the generator: only on the DM steps here (the clean steps have it already)."""
        return self.distill and k < self.num_steps - self.adversarial_steps

    def trains_critic(self) -> bool:
        """Tuning on the reward alone uses neither the fake score nor the discriminator."""
        return self.distill

    def after_generator_step(self) -> None:
        if self.fake_ema is not None:
            with torch.no_grad():
                for fake, own in zip(self.fake.parameters(), self.student.parameters()):
                    fake.lerp_(own, 1 - self.fake_ema)
