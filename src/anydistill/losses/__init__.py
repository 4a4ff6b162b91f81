"""Divergences shared by every family: pure functions of tensors, computed in fp32."""

from anydistill.losses.divergences import (
    generalized_jsd,
    kd_kl,
    logit_mse,
    mix_with_ce,
    reverse_kl,
    tvd,
)

__all__ = [
    "generalized_jsd",
    "kd_kl",
    "logit_mse",
    "mix_with_ce",
    "reverse_kl",
    "tvd",
]
