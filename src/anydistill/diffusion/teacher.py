r"""The frozen diffusion teacher, and the denoising loss that trains one.

`DiffusionTeacher` wraps a denoiser network ``model(x_t, t_in, cond) -> out`` (``out`` shaped like
``x_t``) together with the `NoiseSchedule` it was trained on and the kind of prediction its raw
output is (``prediction``: ``"x0"``, ``"eps"``, ``"v"`` or ``"velocity"``, as in
`anydistill.diffusion.schedules`). It answers in any kind: ``predict(x_t, t, cond, kind="eps")``.

Like `anydistill.core.teacher.Teacher` it is a plain object, not an ``nn.Module``, so assigning it
to a method does not register its parameters: it never enters a student's ``state_dict``,
optimizer or DDP wrapper. The network is put in eval mode with ``requires_grad_(False)``, put back
in eval mode if anyone calls ``train()`` on it, and run under ``torch.no_grad()``.

**Preconditioning.** With ``preconditioning="none"`` the network sees ``(x_t, t, cond)``: the
schedule's own time is its time input (see `anydistill.models.denoisers` for the ranges that suit a
sinusoidal embedding). With ``preconditioning="edm"`` (only for the `EDM` schedule) the network is
EDM's ``F`` (Karras et al. 2022, Table 1) and the wrapper's native output is the denoiser

.. math::  D(x; \sigma) = c_\text{skip}(\sigma)\,x + c_\text{out}(\sigma)\,
           F(c_\text{in}(\sigma)\,x;\ c_\text{noise}(\sigma)),

an ``x0`` prediction (so ``prediction`` must then be ``"x0"``). ``preconditioning="consistency"``
feeds the network the same EDM inputs and forms the consistency model's boundary-corrected output
(Song et al. 2023, Appendix C; `targets.consistency_coefficients`): ``f = c_skip' x + c_out' F`` with
``f(x, t_min) = x`` exactly. Consistency distillation switches an EDM student to it, as the
official code does with the EDM teacher's weights.

**Classifier-free guidance** (Ho & Salimans 2022) is applied to the *native* output, before any
conversion: ``out_u + w (out_c - out_u)``. This loses nothing, because guidance is linear in every
kind: at fixed ``(x_t, t)`` each kind is an affine function of the native output,
``convert(out) = p(t) x_t + q(t) out`` (and EDM's ``D`` is affine in ``F``), with the same ``p``
and ``q`` for the conditional and the unconditional branch; an affine map preserves the affine
combination ``(1 - w) out_u + w out_c`` (its weights sum to 1), so guiding then converting equals
converting then guiding, in any kind. Guiding natively costs one conversion instead of two.
`predict_pair` keeps the two branches apart (Decoupled DMD uses them separately).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from anydistill.core.checks import choice_problems, is_int, raise_problems
from anydistill.core.teacher import Teacher
from anydistill.diffusion.schedules import EDM, PREDICTION_KINDS, NoiseSchedule, expand_t

PRECONDITIONINGS: tuple[str, ...] = ("none", "edm", "consistency")
WEIGHTINGS: tuple[str, ...] = ("none", "edm")


def network_output(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor,
    cond: Tensor | None,
    preconditioning: str = "none",
) -> Tensor:
    """The native prediction of a denoiser network at ``(x_t, t)``: the raw ``model(x_t, t, cond)``
    without preconditioning, EDM's ``D = c_skip x_t + c_out F(c_in x_t, c_noise)`` with it.

    Args:
        model: the network, ``model(x_t [B, ...], t_in [B], cond [B] | None) -> [B, ...]``.
        schedule: the schedule (an `EDM` when ``preconditioning="edm"``).
        x_t: noisy inputs, ``[B, ...]``.
        t: times, ``[B]`` or 0-dim; the network receives them as ``[B]``.
        cond: labels ``[B]`` or ``None``.
        preconditioning: ``"none"``, ``"edm"`` or ``"consistency"`` (see the module docstring).

    Gradients flow (this is also the training forward); the caller picks ``no_grad``.
    """
    t = _batch_t(t, x_t)
    if preconditioning == "none":
        return model(x_t, t.to(x_t.dtype), cond)
    c_skip, c_out, c_in = _edm_coefficients(schedule, t, x_t)
    f = model(c_in * x_t, schedule.c_noise(t).to(x_t.dtype), cond)
    if preconditioning == "consistency":  # the boundary-corrected output; the inputs stay EDM's
        from anydistill.diffusion.targets.consistency import consistency_coefficients

        c_skip, c_out = (expand_t(c.to(x_t.dtype), x_t) for c in consistency_coefficients(t, schedule, schedule.sigma_data))
    return c_skip * x_t + c_out * f


def _edm_coefficients(schedule: EDM, t: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in)`` shaped to broadcast against ``x_t``."""
    return tuple(expand_t(c(t), x_t) for c in (schedule.c_skip, schedule.c_out, schedule.c_in))


class DiffusionTeacher:
    """A frozen denoiser with its schedule; see the module docstring.

    Args:
        model: the network ``model(x_t, t_in, cond) -> out``; put in eval mode, parameters frozen.
        schedule: the `NoiseSchedule` it was trained with.
        prediction: what its raw output is: ``"x0"``, ``"eps"``, ``"v"`` or ``"velocity"``
            (``"x0"`` with EDM preconditioning, where the raw output is ``F`` and the wrapper
            forms ``D``).
        preconditioning: ``"none"`` or ``"edm"`` (EDM's c_skip/c_out/c_in/c_noise; `EDM` only).
        null_class: the label meaning "unconditional", used to batch the two branches of
            guidance into one forward; default ``model.null_class`` when the model has one (as
            the `anydistill.models.denoisers` nets do). Without one, the unconditional branch is a
            second forward with ``cond=None``.
        name: how reports and cache manifests name it.
        spec: how the model was built, part of the `fingerprint`.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        prediction: str,
        *,
        preconditioning: str = "none",
        null_class: int | None = None,
        name: str = "teacher",
        spec: str = "",
    ):
        problems = []
        if not isinstance(model, nn.Module):
            problems.append(
                "The 'model' parameter of DiffusionTeacher must be a torch.nn.Module. "
                f"Got {type(model).__name__}."
            )
        if not isinstance(schedule, NoiseSchedule):
            problems.append(
                "The 'schedule' parameter of DiffusionTeacher must be a NoiseSchedule "
                f"(VPCosine, EDM, RectifiedFlow, TrigFlow). Got {type(schedule).__name__}."
            )
        owner = "DiffusionTeacher"
        problems += choice_problems(prediction, PREDICTION_KINDS, name="prediction", owner=owner, what="parameter")
        problems += choice_problems(preconditioning, PRECONDITIONINGS, name="preconditioning", owner=owner, what="parameter")
        if preconditioning in ("edm", "consistency"):
            if isinstance(schedule, NoiseSchedule) and not isinstance(schedule, EDM):
                problems.append(
                    f"The 'preconditioning' parameter of DiffusionTeacher can be {preconditioning!r} only with the EDM "
                    f"schedule. Got schedule {schedule!r}; use preconditioning='none'."
                )
            if prediction in PREDICTION_KINDS and prediction != "x0":
                problems.append(
                    "The 'prediction' parameter of DiffusionTeacher must be 'x0' with "
                    f"preconditioning={preconditioning!r} (the network predicts F and the wrapper returns an x0 "
                    f"prediction). Got {prediction!r}."
                )
        if null_class is None and isinstance(model, nn.Module):
            null_class = getattr(model, "null_class", None)
        if null_class is not None and not (is_int(null_class) and null_class >= 0):
            problems.append(
                "The 'null_class' parameter of DiffusionTeacher must be an int >= 0 or None. "
                f"Got {null_class!r}."
            )
        raise_problems(problems)
        self.model = model.eval().requires_grad_(False)
        self.schedule = schedule
        self.prediction = prediction
        self.preconditioning = preconditioning
        self.null_class = null_class
        self.name = name
        self.spec = spec

    def to(self, device: torch.device | str) -> DiffusionTeacher:
        """Move the network to ``device`` (kept in eval mode)."""
        self.model.to(device)
        return self

    # ------------------------------------------------------------------------------------------
    # predictions

    @torch.no_grad()
    def predict(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Tensor | None = None,
        *,
        kind: str = "x0",
        cfg: float | Tensor | None = None,
    ) -> Tensor:
        """The teacher's prediction at ``(x_t, t)``, expressed as ``kind``.

        Args:
            x_t: noisy inputs ``[B, ...]``.
            t: times ``[B]`` (or 0-dim, shared by the batch).
            cond: labels ``LongTensor [B]``, or ``None`` for the unconditional (null-class) output.
            kind: ``"x0"``, ``"eps"``, ``"v"`` or ``"velocity"``.
            cfg: guidance weight ``w`` (a float, or a tensor ``[B]`` of per-example weights), or
                ``None`` for no guidance. With ``w`` the result is
                ``out_u + w (out_c - out_u)``, computed from one batched forward in the native
                kind (``w = 1``: conditional, ``w = 0``: unconditional); needs ``cond``.

        Returns:
            ``[B, ...]`` on the device and in the dtype of ``x_t``.
        """
        self._check_kind(kind, "predict")
        if cfg is None:
            out = self._forward(x_t, t, cond)
        else:
            out_c, out_u = self._forward_pair(x_t, t, cond, "predict")
            w = expand_t(cfg.to(out_c.device), out_c) if isinstance(cfg, Tensor) else _check_weight(cfg)
            out = out_u + w * (out_c - out_u)
        return self._convert(out, x_t, t, kind)

    @torch.no_grad()
    def predict_pair(
        self, x_t: Tensor, t: Tensor, cond: Tensor, kind: str = "x0"
    ) -> tuple[Tensor, Tensor]:
        """``(conditional, unconditional)`` predictions at ``(x_t, t)`` as ``kind``, from one batched
        forward, kept apart (Decoupled DMD's CA term is their difference). Shapes as in `predict`."""
        self._check_kind(kind, "predict_pair")
        out_c, out_u = self._forward_pair(x_t, t, cond, "predict_pair")
        return self._convert(out_c, x_t, t, kind), self._convert(out_u, x_t, t, kind)

    # ------------------------------------------------------------------------------------------
    # bookkeeping

    def fingerprint(self) -> str:
        """SHA-256 of the network (class, every parameter and buffer, as core `Teacher` does) and of
        everything that changes what `predict` returns: schedule, prediction kind, preconditioning,
        null class and ``spec``. Computed afresh on each call."""
        spec = (
            f"{self.spec}|schedule={self.schedule!r}|prediction={self.prediction}"
            f"|preconditioning={self.preconditioning}|null_class={self.null_class}"
        )
        return Teacher(self.model, self.name, spec).fingerprint()

    def num_parameters(self) -> int:
        """Number of parameters of the wrapped network."""
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return (
            f"DiffusionTeacher({type(self.model).__name__}, {self.schedule!r}, "
            f"prediction={self.prediction!r}, preconditioning={self.preconditioning!r})"
        )

    # ------------------------------------------------------------------------------------------
    # internals

    def _place(self, x_t: Tensor, t: Tensor, cond: Tensor | None):
        """Inputs on the network's device (``x_t`` in its precision), the network in eval mode."""
        if self.model.training:  # a user may have flipped it; dropout/normalisation must stay frozen
            self.model.eval()
        reference = next(self.model.parameters(), None)
        if reference is None:
            return x_t, t, cond
        x = x_t.to(reference.device, reference.dtype)
        t = t.to(reference.device)
        return x, t, (cond.to(reference.device) if cond is not None else None)

    def _forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        x, t, cond = self._place(x_t, t, cond)
        return network_output(self.model, self.schedule, x, t, cond, self.preconditioning)

    def _forward_pair(
        self, x_t: Tensor, t: Tensor, cond: Tensor | None, func: str
    ) -> tuple[Tensor, Tensor]:
        if cond is None:
            raise ValueError(
                f"DiffusionTeacher.{func} needs class labels 'cond' [B] for the conditional branch. "
                "Got None (for the unconditional output alone, call predict(x_t, t, None))."
            )
        x, t, cond = self._place(x_t, t, cond)
        if self.null_class is None:
            # No label is known to mean "unconditional": two forwards, the second with cond=None.
            out_c = network_output(self.model, self.schedule, x, t, cond, self.preconditioning)
            return out_c, network_output(self.model, self.schedule, x, t, None, self.preconditioning)
        t = _batch_t(t, x)
        null = torch.full_like(cond, self.null_class)
        out = network_output(
            self.model,
            self.schedule,
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([cond, null]),
            self.preconditioning,
        )
        return out.chunk(2)

    def _convert(self, out: Tensor, x_t: Tensor, t: Tensor, kind: str) -> Tensor:
        x = x_t.to(out.device, out.dtype)
        converted = self.schedule.convert(out, x, _batch_t(t.to(out.device), x), self.prediction, kind)
        return converted.to(x_t.device, x_t.dtype)

    def _check_kind(self, kind: object, func: str) -> None:
        raise_problems(choice_problems(kind, PREDICTION_KINDS, name="kind", owner=f"DiffusionTeacher.{func}"))


# ----------------------------------------------------------------------------------------------
# training a teacher


def denoiser_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    cond: Tensor | None,
    prediction: str,
    weighting: str = "none",
    *,
    preconditioning: str = "none",
) -> Tensor:
    r"""Denoising regression loss for training a teacher (or a fake-score net): the network's
    native prediction at ``x_t = alpha(t) x0 + sigma(t) noise`` regressed onto the target of its
    kind, built from ``(x0, noise)``:

    .. math::
        \mathcal L = \mathbb E_{b}\Big[\lambda(t_b)\ \tfrac1d \big\|\text{out}_b -
        \text{target}_b\big\|^2\Big],\qquad
        \text{target} = a(t)\,x_0 + b(t)\,\epsilon

    with ``(a, b)`` = ``(1, 0)`` for ``"x0"``, ``(0, 1)`` for ``"eps"``, ``(-sigma, alpha)`` for
    ``"v"`` and ``(d_alpha, d_sigma)`` for ``"velocity"`` (flow matching), and ``d`` the number of
    elements per example (so the scale does not depend on the data size).

    Weightings :math:`\lambda`:

    * ``"none"``: 1 (the "simple" loss of DDPM for eps, flow matching for velocity).
    * ``"edm"``: :math:`\lambda(\sigma) = 1/c_\text{out}(\sigma)^2 =
      (\sigma^2 + \sigma_d^2)/(\sigma\sigma_d)^2` (Karras et al. 2022, Table 1), on
      ``x0`` predictions with the `EDM` schedule. With ``preconditioning="edm"``
      (``D = c_skip x_t + c_out F``) it equals the unit-weight loss on the network itself,
      :math:`\|F - (x_0 - c_\text{skip} x_t)/c_\text{out}\|^2`, which is how it is computed: in
      ``F``'s space there is no ``1/c_out^2`` blow-up of rounding at small ``sigma``.

    Args:
        model: the network ``model(x_t, t_in, cond)`` (its time input as in `network_output`).
        schedule: the `NoiseSchedule`.
        x0: clean data ``[B, ...]``.
        t: times ``[B]``.
        noise: the noise ``[B, ...]`` (std ``schedule.noise_std``).
        cond: labels ``[B]`` or ``None`` (drop labels to the null class beforehand for CFG).
        prediction: the network's kind (``"x0"`` with EDM preconditioning).
        weighting: ``"none"`` or ``"edm"``.
        preconditioning: ``"none"`` or ``"edm"``.

    Returns:
        A scalar in float32 (float64 for float64 data), differentiable w.r.t. the network.
    """
    problems = [
        *choice_problems(prediction, PREDICTION_KINDS, name="prediction", owner="denoiser_loss"),
        *choice_problems(weighting, WEIGHTINGS, name="weighting", owner="denoiser_loss"),
        *choice_problems(preconditioning, PRECONDITIONINGS, name="preconditioning", owner="denoiser_loss"),
    ]
    if preconditioning == "consistency":
        problems.append("denoiser_loss trains a denoiser (preconditioning 'none' or 'edm'); a consistency-parametrised model "
                        "(preconditioning 'consistency') is trained by consistency distillation.")
    options = {"weighting": weighting, "preconditioning": preconditioning}
    edm_needed = [f"{name}={value!r}" for name, value in options.items() if value == "edm"]
    if edm_needed and not isinstance(schedule, EDM):
        problems.append(
            f"denoiser_loss with {' and '.join(edm_needed)} needs the EDM schedule. Got {schedule!r}."
        )
    if edm_needed and prediction in PREDICTION_KINDS and prediction != "x0":
        problems.append(
            f"denoiser_loss with {' and '.join(edm_needed)} needs prediction='x0' (EDM's denoiser D). "
            f"Got {prediction!r}."
        )
    raise_problems(problems)

    x_t = schedule.add_noise(x0, noise, t)
    dtype = torch.promote_types(x0.dtype, torch.float32)  # losses are computed in (at least) fp32
    weight = torch.ones_like(t, dtype=dtype)
    if preconditioning == "edm":
        c_skip, c_out, c_in = _edm_coefficients(schedule, t, x_t)
        f = model(c_in * x_t, schedule.c_noise(t).to(x_t.dtype), cond)
        residual = f.to(dtype) - ((x0 - c_skip * x_t) / c_out).to(dtype)
        # ||D - x0||^2 = c_out^2 ||F - F_target||^2, so the EDM weight 1/c_out^2 leaves weight 1
        if weighting == "none":
            weight = (schedule.c_out(t) ** 2).to(dtype)
    else:
        out = model(x_t, t.to(x_t.dtype), cond)
        a, b = _target_coefficients(schedule, prediction, t)
        target = expand_t(a, x0) * x0 + expand_t(b, x0) * noise
        residual = out.to(dtype) - target.to(dtype)
        if weighting == "edm":
            weight = (1 / schedule.c_out(t) ** 2).to(dtype)
    per_example = residual.pow(2).reshape(residual.shape[0], -1).mean(dim=1)
    return (weight * per_example).mean()


def _target_coefficients(schedule: NoiseSchedule, kind: str, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, b)``, each ``[B]``, with ``target = a x0 + b eps`` for a prediction of ``kind``."""
    if kind == "x0":
        return torch.ones_like(t), torch.zeros_like(t)
    if kind == "eps":
        return torch.zeros_like(t), torch.ones_like(t)
    if kind == "v":
        return -schedule.sigma(t), schedule.alpha(t)
    return schedule.d_alpha(t), schedule.d_sigma(t)


# ----------------------------------------------------------------------------------------------
# helpers


def _batch_t(t: Tensor, x: Tensor) -> Tensor:
    """``t`` as ``[B]``: a 0-dim time is shared by the batch; a wrong shape is refused."""
    if t.ndim == 0:
        return t.expand(x.shape[0])
    expand_t(t, x)  # raises the schedule module's shape error
    return t


def _check_weight(w: object) -> float:
    if isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w):
        return float(w)
    raise ValueError(
        "The 'cfg' argument of DiffusionTeacher.predict must be a finite float, a tensor [B] or "
        f"None. Got {w!r}."
    )


