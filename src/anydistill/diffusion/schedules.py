r"""Noise schedules: the forward process of a diffusion or flow model, and the conversions between
what a network may predict.

Every schedule here is a Gaussian path

.. math::  x_t = \alpha(t)\, x_0 + \sigma(t)\, \epsilon,

with continuous time ``t`` in ``[t_min, t_max]`` (data near ``t_min``, noise near ``t_max``), and
analytic derivatives :math:`\dot\alpha = d\alpha/dt`, :math:`\dot\sigma = d\sigma/dt`.

Shapes: ``t`` is ``[B]`` (one time per example) and data are ``[B, ...]``; `expand_t` reshapes
``t`` to ``[B, 1, ..., 1]`` for broadcasting (a 0-dim ``t`` is shared by the whole batch).
The coefficient functions (``alpha``, ``sigma``, ``snr``, ...) take and return ``[B]`` tensors and
compute in the dtype of ``t``; the data functions (``add_noise``, ``convert``, ...) compute in the
dtype of the data. Pass float64 ``t`` where precision matters. ``t`` outside ``[t_min, t_max]`` is
not checked (that would cost a device sync per call): the formulas are simply extrapolated.

Prediction kinds (the ``kind`` arguments), each a fixed linear combination
``a(t) x_0 + b(t) eps``:

* ``"x0"``: the clean sample :math:`x_0` (EDM's denoiser ``D``).
* ``"eps"``: the noise :math:`\epsilon` (DDPM).
* ``"v"``: :math:`v = \alpha\epsilon - \sigma x_0` (Salimans & Ho 2022). On a variance-preserving
  path (:math:`\alpha^2+\sigma^2=1`, `VPCosine`, `TrigFlow`) this is their v-prediction; on the
  other schedules the same general formula is used, so ``v`` is still well defined and invertible
  (the determinant below is :math:`\alpha^2+\sigma^2 > 0`), but it is no longer a unit-variance
  target nor a rotation.
* ``"velocity"``: the flow-ODE velocity :math:`u = dx_t/dt = \dot\alpha x_0 + \dot\sigma\epsilon`
  along a fixed :math:`(x_0, \epsilon)` path: the target of flow matching (``eps - x0`` for
  `RectifiedFlow`) and TrigFlow's :math:`\sigma_d F_\theta`.

Given ``x_t`` and one prediction ``p = a x0 + b eps`` the pair ``(x0, eps)`` solves a 2x2 system
with determinant :math:`\Delta = \alpha b - \sigma a`:
:math:`x_0 = (b\,x_t - \sigma p)/\Delta`, :math:`\epsilon = (\alpha p - a\,x_t)/\Delta`.
So ``eps`` and ``x0`` are singular where :math:`\alpha = 0` and :math:`\sigma = 0` respectively
(pure noise, clean data); ``v`` is invertible everywhere; ``velocity`` wherever
:math:`\alpha\dot\sigma - \sigma\dot\alpha \neq 0` (everywhere for RF, EDM and TrigFlow; for the VP
cosine schedule everywhere but ``t = 0``, where :math:`\dot\sigma` is infinite).
"""

from __future__ import annotations

import difflib
import inspect
import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from anydistill.core.checks import is_finite_number, raise_problems

PredictionKind = Literal["x0", "eps", "v", "velocity"]
PREDICTION_KINDS: tuple[str, ...] = ("x0", "eps", "v", "velocity")


def expand_t(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-example ``t`` of shape ``[B]`` to ``[B, 1, ..., 1]`` so that it broadcasts
    against ``like`` (``[B, ...]``), in ``like``'s dtype. A 0-dim ``t`` is returned as a 0-dim
    tensor (it broadcasts against anything).

    Raises:
        ValueError: ``t`` is neither 0-dim nor ``[B]`` with ``B`` the batch dim of ``like``.
    """
    if t.ndim == 0:
        return t.to(like.dtype)
    if t.ndim != 1 or like.ndim == 0 or t.shape[0] != like.shape[0]:
        raise ValueError(
            "Times 't' must have shape [B], one per example of the data [B, ...], or be 0-dim. "
            f"Got t of shape {tuple(t.shape)} for data of shape {tuple(like.shape)}."
        )
    return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class NoiseSchedule(ABC):
    """The path ``x_t = alpha(t) x0 + sigma(t) eps`` on ``[t_min, t_max]``; see the module docstring.

    Subclasses implement `alpha`, `sigma`, their derivatives `d_alpha`, `d_sigma`, and
    `t_from_edm_sigma` (used by the log-normal time sampler), and define ``t_min`` and ``t_max``.
    Everything else (noising, SNR, conversions between predictions) is derived here.

    ``noise_std`` is the standard deviation of the noise ``eps`` the schedule is used with: 1 for
    every family but `TrigFlow`, whose noise is ``z ~ N(0, sigma_d^2 I)`` as in Lu & Song (2024).
    """

    noise_std: float = 1.0

    @property
    @abstractmethod
    def t_min(self) -> float:
        """The smallest time of the schedule (the data end)."""

    @property
    @abstractmethod
    def t_max(self) -> float:
        """The largest time of the schedule (the noise end)."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha(t)``, shape ``[B]``."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma(t)``, shape ``[B]``."""

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        """``d alpha / dt``, shape ``[B]``."""

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor:
        """``d sigma / dt``, shape ``[B]``."""

    @abstractmethod
    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        """The time ``t`` whose `edm_sigma` is ``edm_sigma`` (the inverse of `edm_sigma`)."""

    # ------------------------------------------------------------------------------------------
    # derived quantities

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``alpha(t)^2 / sigma(t)^2``, shape ``[B]`` (in the schedule's own
        units: for TrigFlow both x0 and its noise have std sigma_d, so this is ``cot(t)^2``)."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def log_snr(self, t: Tensor) -> Tensor:
        """``log snr(t) = 2 (log alpha(t) - log sigma(t))``, shape ``[B]``."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def edm_sigma(self, t: Tensor) -> Tensor:
        """The EDM noise level of ``x_t``: ``noise_std * sigma(t) / alpha(t)``, the std of the noise
        in ``x_t / alpha(t) = x0 + edm_sigma * n`` with ``n ~ N(0, I)``. Equals ``t`` for `EDM`."""
        return self.noise_std * self.sigma(t) / self.alpha(t)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) noise``; ``x0``, ``noise``: ``[B, ...]``; ``t``: ``[B]``."""
        return expand_t(self.alpha(t), x0) * x0 + expand_t(self.sigma(t), x0) * noise

    def sample_noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Noise of ``like``'s shape, dtype and device with std `noise_std`, drawn from ``generator``
        (on the generator's device, then moved)."""
        device = generator.device if generator is not None else like.device
        noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
        return noise.to(like.device) * self.noise_std

    # ------------------------------------------------------------------------------------------
    # conversions between predictions

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor, kind: PredictionKind) -> Tensor:
        """The ``x0`` implied by a prediction ``output`` of the given ``kind`` at ``(x_t, t)``."""
        return self._convert(output, x_t, t, kind, "x0", "to_x0")

    def to_eps(self, output: Tensor, x_t: Tensor, t: Tensor, kind: PredictionKind) -> Tensor:
        """The ``eps`` implied by a prediction ``output`` of the given ``kind`` at ``(x_t, t)``."""
        return self._convert(output, x_t, t, kind, "eps", "to_eps")

    def convert(
        self,
        output: Tensor,
        x_t: Tensor,
        t: Tensor,
        from_kind: PredictionKind,
        to_kind: PredictionKind,
    ) -> Tensor:
        """Re-express a prediction of kind ``from_kind`` as one of kind ``to_kind``.

        Args:
            output: the prediction, ``[B, ...]``.
            x_t: the noisy input it was made from, ``[B, ...]``.
            t: times, ``[B]``.
            from_kind, to_kind: one of ``"x0"``, ``"eps"``, ``"v"``, ``"velocity"``.

        Returns:
            ``[B, ...]``, in the dtype of the data (``output`` and ``x_t``).
        """
        return self._convert(output, x_t, t, from_kind, to_kind, "convert")

    def _convert(
        self, output: Tensor, x_t: Tensor, t: Tensor, from_kind: str, to_kind: str, func: str
    ) -> Tensor:
        # to_x0/to_eps fix to_kind themselves, so only the user's `kind` can be wrong there.
        from_argument = "kind" if func != "convert" else "from_kind"
        problems = [
            _kind_problem(from_kind, from_argument, func),
            _kind_problem(to_kind, "to_kind", func),
        ]
        raise_problems([p for p in problems if p])
        if from_kind == to_kind:
            return output
        # x0 = p_x * x_t + q_x * output and eps = p_e * x_t + q_e * output, all [B].
        p_x, q_x, p_e, q_e = self._solve(from_kind, t)
        if to_kind == "x0":
            p, q = p_x, q_x
        elif to_kind == "eps":
            p, q = p_e, q_e
        else:
            a, b = self._coefficients(to_kind, t)
            p, q = a * p_x + b * p_e, a * q_x + b * q_e
        return expand_t(p, x_t) * x_t + expand_t(q, output) * output

    def _coefficients(self, kind: str, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` with ``prediction = a x0 + b eps``, each ``[B]``."""
        if kind == "x0":
            return torch.ones_like(t), torch.zeros_like(t)
        if kind == "eps":
            return torch.zeros_like(t), torch.ones_like(t)
        if kind == "v":
            return -self.sigma(t), self.alpha(t)
        return self.d_alpha(t), self.d_sigma(t)

    def _solve(self, kind: str, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(p_x, q_x, p_e, q_e)``: ``x0 = p_x x_t + q_x out``, ``eps = p_e x_t + q_e out``."""
        alpha, sigma = self.alpha(t), self.sigma(t)
        # x0 and eps have closed forms of their own, exact where the general one would give 0/0.
        if kind == "x0":
            return torch.zeros_like(t), torch.ones_like(t), 1 / sigma, -alpha / sigma
        if kind == "eps":
            return 1 / alpha, -sigma / alpha, torch.zeros_like(t), torch.ones_like(t)
        a, b = self._coefficients(kind, t)
        det = alpha * b - sigma * a
        return b / det, -sigma / det, -a / det, alpha / det

    def __repr__(self) -> str:
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"


# ----------------------------------------------------------------------------------------------
# the four families


class VPCosine(NoiseSchedule):
    r"""Variance-preserving path with the cosine schedule of Nichol & Dhariwal (2021), "Improved
    Denoising Diffusion Probabilistic Models", in continuous time ``t`` in ``[0, 1]``:

    .. math::
        \bar\alpha(t) = \frac{f(t)}{f(0)},\quad f(t) = \cos^2\phi(t),\quad
        \phi(t) = \frac{t + s}{1 + s}\cdot\frac{\pi}{2},

        \alpha(t) = \sqrt{\bar\alpha(t)} = \frac{\cos\phi(t)}{\cos\phi(0)},\qquad
        \sigma(t) = \sqrt{1 - \bar\alpha(t)}
                  = \frac{\sqrt{\sin(k t)\,\sin(k (t + 2s))}}{\cos\phi(0)},\quad k = \frac{\pi}{2(1+s)},

        \dot\alpha = -\frac{k \sin\phi}{\cos\phi(0)},\qquad
        \dot\sigma = \frac{k \sin 2\phi}{2\sigma\cos^2\phi(0)}.

    The product form of :math:`\sigma` (from :math:`\cos^2 A - \cos^2 B = \sin(B-A)\sin(B+A)`)
    avoids the cancellation of :math:`1 - \bar\alpha` near ``t = 0``. :math:`\alpha^2 + \sigma^2 = 1`;
    ``alpha(1) = 0``, ``sigma(0) = 0``, and :math:`\dot\sigma(0)` is infinite. The discrete
    schedule's clipping of beta at 0.999 has no continuous-time counterpart and is not applied: map
    a discrete step ``i`` of ``T`` to ``t = i / T``.

    Args:
        s: the offset that keeps beta from being too small near ``t = 0`` (0.008 in the paper).
    """

    t_min = 0.0
    t_max = 1.0

    def __init__(self, s: float = 0.008):
        if not (is_finite_number(s) and s >= 0):
            raise_problems([f"The 's' parameter of VPCosine must be a float >= 0. Got {s!r}."])
        self.s = s

    @property
    def _k(self) -> float:
        return math.pi / (2 * (1 + self.s))

    def _phi(self, t: Tensor) -> Tensor:
        return (t + self.s) * self._k

    def alpha(self, t: Tensor) -> Tensor:
        # cos(pi/2) is -4.4e-8 in fp32: clamped, alpha(t_max) is exactly 0 (pure noise), not a
        # negative scale whose inverse (eps -> x0) is -2e7.
        return torch.cos(self._phi(t)).clamp(min=0) / math.cos(self.s * self._k)

    def sigma(self, t: Tensor) -> Tensor:
        k = self._k
        return torch.sqrt(torch.sin(k * t) * torch.sin(k * (t + 2 * self.s))) / math.cos(self.s * k)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -self._k * torch.sin(self._phi(t)) / math.cos(self.s * self._k)

    def d_sigma(self, t: Tensor) -> Tensor:
        c0 = math.cos(self.s * self._k)
        return self._k * torch.sin(2 * self._phi(t)) / (2 * self.sigma(t) * c0**2)

    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        # alpha = 1/sqrt(1 + r^2), so cos(phi) = c0/sqrt(1+r^2), sin(phi) = sqrt(r^2 + s0^2)/sqrt(1+r^2);
        # atan2 keeps full precision near phi(0), where acos would not.
        phi0 = self.s * self._k
        sin_phi = torch.sqrt(edm_sigma**2 + math.sin(phi0) ** 2)
        phi = torch.atan2(sin_phi, torch.full_like(edm_sigma, math.cos(phi0)))
        return phi / self._k - self.s


class EDM(NoiseSchedule):
    r"""Variance-exploding path in the parametrisation of Karras et al. (2022), "Elucidating the
    Design Space of Diffusion-Based Generative Models": time is the noise level,

    .. math::  x_t = x_0 + t\,\epsilon,\qquad \alpha = 1,\ \sigma = t,\ \dot\alpha = 0,\ \dot\sigma = 1,

    on ``t`` in ``[sigma_min, sigma_max]``. With that choice the flow velocity is
    :math:`u = \epsilon = (x_t - D(x_t))/t`, EDM's probability-flow ODE.

    The preconditioning of the network ``F`` (EDM, Table 1) makes the denoiser
    :math:`D(x; \sigma) = c_\text{skip} x + c_\text{out} F(c_\text{in} x; c_\text{noise})` with

    .. math::
        c_\text{skip} = \frac{\sigma_d^2}{\sigma^2 + \sigma_d^2},\quad
        c_\text{out} = \frac{\sigma\,\sigma_d}{\sqrt{\sigma^2 + \sigma_d^2}},\quad
        c_\text{in} = \frac{1}{\sqrt{\sigma^2 + \sigma_d^2}},\quad
        c_\text{noise} = \tfrac14 \ln\sigma.

    Args:
        sigma_min, sigma_max: the range of noise levels (0.002 and 80 in the paper).
        sigma_data: the data's standard deviation :math:`\sigma_d` (0.5 in the paper).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        problems = []
        if not (is_finite_number(sigma_min) and sigma_min > 0):
            problems.append(f"The 'sigma_min' parameter of EDM must be a float > 0. Got {sigma_min!r}.")
        if not (is_finite_number(sigma_max) and (not is_finite_number(sigma_min) or sigma_max > sigma_min)):
            problems.append(
                f"The 'sigma_max' parameter of EDM must be a float > sigma_min ({sigma_min!r}). "
                f"Got {sigma_max!r}."
            )
        if not (is_finite_number(sigma_data) and sigma_data > 0):
            problems.append(
                f"The 'sigma_data' parameter of EDM must be a float > 0. Got {sigma_data!r}."
            )
        raise_problems(problems)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    @property
    def t_min(self) -> float:
        return self.sigma_min

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        return edm_sigma.clone()

    def c_skip(self, t: Tensor) -> Tensor:
        """Skip-connection weight, ``[B]``."""
        return self.sigma_data**2 / (t**2 + self.sigma_data**2)

    def c_out(self, t: Tensor) -> Tensor:
        """Output scale of the network, ``[B]``."""
        return t * self.sigma_data / torch.sqrt(t**2 + self.sigma_data**2)

    def c_in(self, t: Tensor) -> Tensor:
        """Input scale that gives the network unit-variance inputs, ``[B]``."""
        return 1 / torch.sqrt(t**2 + self.sigma_data**2)

    def c_noise(self, t: Tensor) -> Tensor:
        """The noise conditioning fed to the network, ``ln(sigma) / 4``, ``[B]``."""
        return torch.log(t) / 4


class RectifiedFlow(NoiseSchedule):
    r"""The straight path of rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022),
    in the convention of Stable Diffusion 3 and diffusers (data at ``t = 0``, noise at ``t = 1``):

    .. math::  x_t = (1 - t)\,x_0 + t\,\epsilon,\qquad \alpha = 1 - t,\ \sigma = t,\
               \dot\alpha = -1,\ \dot\sigma = 1,

    so the velocity is the constant :math:`u = \epsilon - x_0`. (Liu et al.'s code runs time the
    other way, ``x_t = t x_1 + (1 - t) z``; use ``1 - t`` and ``-u`` to move between the two.)
    """

    t_min = 0.0
    t_max = 1.0

    def __init__(self):
        pass

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        return edm_sigma / (1 + edm_sigma)


class TrigFlow(NoiseSchedule):
    r"""TrigFlow, the path of Lu & Song (2024), "Simplifying, Stabilizing and Scaling
    Continuous-Time Consistency Models", on ``t`` in ``[0, pi/2]``:

    .. math::  x_t = \cos t\,x_0 + \sin t\,z,\qquad z \sim \mathcal N(0, \sigma_d^2 I),\qquad
               \alpha = \cos t,\ \sigma = \sin t,\ \dot\alpha = -\sin t,\ \dot\sigma = \cos t.

    As in the paper the noise ``z`` (the ``eps`` of this class's methods) has std ``sigma_d``, the
    data's std (`noise_std` is ``sigma_d``; draw it with `sample_noise`). The velocity
    :math:`dx_t/dt = \cos t\,z - \sin t\,x_0` equals ``v`` here, and the paper's network predicts it
    as :math:`\sigma_d F_\theta(x_t/\sigma_d, t)`; its consistency function
    :math:`f = \cos t\,x_t - \sin t\,\sigma_d F_\theta` is ``convert(sigma_d * F, x_t, t,
    "velocity", "x0")``. The EDM noise level is :math:`\sigma_d \tan t`.

    Args:
        sigma_d: the data's standard deviation (0.5 in the paper).
    """

    t_min = 0.0
    t_max = math.pi / 2

    def __init__(self, sigma_d: float = 0.5):
        if not (is_finite_number(sigma_d) and sigma_d > 0):
            raise_problems([f"The 'sigma_d' parameter of TrigFlow must be a float > 0. Got {sigma_d!r}."])
        self.sigma_d = sigma_d

    @property
    def noise_std(self) -> float:  # type: ignore[override]
        return self.sigma_d

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.sin(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        return torch.atan(edm_sigma / self.sigma_d)


# ----------------------------------------------------------------------------------------------
# helpers


def _kind_problem(kind: object, argument: str, func: str) -> str | None:
    if kind in PREDICTION_KINDS:
        return None
    close = difflib.get_close_matches(str(kind), PREDICTION_KINDS, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"The '{argument}' argument of {func} must be one of "
        f"{', '.join(repr(k) for k in PREDICTION_KINDS)}{hint}. Got {kind!r}."
    )


