r"""Sample-based metrics for generators: distances between sample sets and trajectory diagnostics.

Pure functions of tensors, no models. Conventions:

* A sample set is a tensor ``[N, D]`` (rows are samples); two sets may have different ``N`` but
  must share ``D``. Images are flattened by the caller (``x.flatten(1)``).
* The arithmetic is done in float64 (sums of many small squared differences, sorts of nearly
  equal projections and kernel averages lose digits in float32); inputs of any floating dtype
  and device are accepted, and every metric returns a Python ``float`` (``mode_coverage`` two).
* Randomness (the projections of ``sliced_wasserstein``) comes from an explicit generator; by
  default a fixed seed, so a metric is a deterministic function of its inputs.
* Invalid arguments raise one ``ValueError`` listing every problem.

Functions:

* ``sliced_wasserstein``: :math:`SW_p` over random unit directions, exact 1-D :math:`W_p` on each.
* ``mmd_rbf``: unbiased :math:`\mathrm{MMD}^2` with a mixture of Gaussian kernels.
* ``energy_distance``: Székely's energy distance :math:`2E|X-Y| - E|X-X'| - E|Y-Y'|`.
* ``mode_coverage``: modes hit and fraction of high-quality samples, for Gaussian mixtures.
* ``within_class_modes``: for labelled samples of a mixture whose classes own several modes, the
  sub-modes each class keeps and how evenly it spreads over them (within-class diversity).
* ``coupling_error``: mean :math:`\|G(z) - \mathrm{ODE}_{teacher}(z)\|_2` over paired samples.
* ``straightness``: :math:`S` of rectified flow (Liu et al., 2022) from a sampled trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from anydistill.core.checks import is_finite_number, is_int, raise_problems

# Rows per block when forming N x M distance matrices: bounds memory at about 16M float64 (128 MB).
_BLOCK_ELEMENTS = 1 << 24


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    num_projections: int = 256,
    generator: torch.Generator | None = None,
    *,
    p: int = 2,
) -> float:
    r"""Sliced Wasserstein distance :math:`SW_p` between two empirical distributions.

    .. math::

        SW_p(\mu, \nu) = \Big( \frac{1}{L} \sum_{l=1}^{L}
            W_p^p\big(\theta_l {}_\# \mu,\; \theta_l {}_\# \nu\big) \Big)^{1/p},
        \qquad \theta_l \sim \mathcal{U}(S^{D-1})

    (Bonneel et al., 2015). The default is :math:`p = 2`, as in most diffusion toy benchmarks;
    the value returned is :math:`SW_2` itself, not its square. Each 1-D distance is exact: with
    :math:`F^{-1}, G^{-1}` the empirical quantile functions of the projections,

    .. math::

        W_p^p = \int_0^1 \big| F^{-1}(u) - G^{-1}(u) \big|^p \, du,

    which for ``N == M`` is the mean of :math:`|x_{(i)} - y_{(i)}|^p` over sorted projections. For
    ``N != M`` the quantile functions are step functions and the integral is summed exactly over
    the merged breakpoints :math:`\{i/N\} \cup \{j/M\}` (no resampling, so a set and the same set
    repeated twice are at distance 0).

    Closed form used in the tests: for ``y = x + s`` (a shift), :math:`W_2(\theta) = |s \cdot \theta|`
    and :math:`SW_2^2 = E_\theta[(s \cdot \theta)^2] = \|s\|^2 / D`.

    Args:
        x: ``[N, D]`` samples.
        y: ``[M, D]`` samples.
        num_projections: :math:`L`, the number of random directions.
        generator: source of the directions (drawn on the CPU as normalised standard normals);
            ``None`` uses a fresh generator seeded with 0, so equal inputs give equal values.
        p: 1 or 2.

    Returns:
        :math:`SW_p \ge 0`.
    """
    problems = _check_pair("sliced_wasserstein", x, y, min_rows=1)
    if not is_int(num_projections) or num_projections < 1:
        problems.append(
            "The 'num_projections' argument of sliced_wasserstein must be an int >= 1. "
            f"Got {num_projections!r}."
        )
    if p not in (1, 2) or isinstance(p, bool):
        problems.append(f"The 'p' argument of sliced_wasserstein must be 1 or 2. Got {p!r}.")
    raise_problems(problems)

    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x, y = x.double(), y.double()
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    x_proj = (x @ theta).T.sort(dim=1).values  # [L, N]
    y_proj = (y.to(x.device) @ theta).T.sort(dim=1).values  # [L, M]

    n, m = x_proj.shape[1], y_proj.shape[1]
    if n == m:
        per_direction = (x_proj - y_proj).abs().pow(p).mean(dim=1)
    else:
        # Breakpoints of both quantile step functions; on the interval ending at u_k, F^{-1} is
        # x_(floor(mid * N)), where mid is the interval's midpoint (zero-width intervals add 0).
        f64 = {"dtype": torch.float64, "device": x.device}
        u = torch.cat([torch.arange(1, n + 1, **f64) / n, torch.arange(1, m + 1, **f64) / m])
        u = u.sort().values
        u_prev = torch.cat([u.new_zeros(1), u[:-1]])
        mid = (u + u_prev) / 2
        ix = (mid * n).long().clamp(max=n - 1)
        iy = (mid * m).long().clamp(max=m - 1)
        diff = (x_proj[:, ix] - y_proj[:, iy]).abs().pow(p)  # [L, N + M]
        per_direction = (diff * (u - u_prev)).sum(dim=1)
    return float(per_direction.mean() ** (1.0 / p))


def mmd_rbf(
    x: Tensor,
    y: Tensor,
    bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0),
) -> float:
    r"""Unbiased squared maximum mean discrepancy with a mixture of Gaussian (RBF) kernels.

    .. math::

        k(a, b) = \frac{1}{|\Sigma|} \sum_{\sigma \in \Sigma}
            \exp\!\Big(-\frac{\|a - b\|^2}{2 \sigma^2}\Big)

        \widehat{\mathrm{MMD}}^2_u = \frac{1}{N(N-1)} \sum_{i \ne j} k(x_i, x_j)
            + \frac{1}{M(M-1)} \sum_{i \ne j} k(y_i, y_j)
            - \frac{2}{NM} \sum_{i, j} k(x_i, y_j)

    (Gretton et al., 2012, Eq. 3). The kernels are *averaged* over the bandwidths, so
    :math:`k(a, a) = 1` and the value is at most 2 whatever the number of bandwidths. The
    estimate is unbiased, hence symmetric in ``(x, y)``, zero in expectation when both sets come
    from the same distribution, and can be slightly negative. The defaults suit the 2-D toys
    (mode std 0.02 to data scale ~2); pass bandwidths on the data's scale for other data.

    Args:
        x: ``[N, D]`` samples, ``N >= 2``.
        y: ``[M, D]`` samples, ``M >= 2``.
        bandwidths: the :math:`\sigma` values, each > 0.

    Returns:
        :math:`\widehat{\mathrm{MMD}}^2_u`.
    """
    problems = _check_pair("mmd_rbf", x, y, min_rows=2)
    bandwidths = tuple(bandwidths) if isinstance(bandwidths, Sequence) else bandwidths
    if not (
        isinstance(bandwidths, tuple)
        and bandwidths
        and all(is_finite_number(s) and s > 0 for s in bandwidths)
    ):
        problems.append(
            "The 'bandwidths' argument of mmd_rbf must be a non-empty sequence of numbers > 0. "
            f"Got {bandwidths!r}."
        )
    raise_problems(problems)

    x, y = x.double(), y.double().to(x.device)
    gammas = [1.0 / (2.0 * float(s) ** 2) for s in bandwidths]

    def kernel(d2: Tensor) -> Tensor:
        # In place on one buffer: N x M blocks are large, and allocation dominates otherwise.
        total, buffer = d2.new_zeros(()), torch.empty_like(d2)
        for g in gammas:
            torch.mul(d2, -g, out=buffer)
            total += buffer.exp_().sum()
        return total / len(gammas)

    def kernel_sum(a: Tensor, b: Tensor) -> Tensor:
        return _pairwise_sum(a, b, kernel)

    n, m = x.shape[0], y.shape[0]
    # k(a, a) = 1 for every row, so the i != j sums are the full sums minus the diagonal.
    k_xx = (kernel_sum(x, x) - n) / (n * (n - 1))
    k_yy = (kernel_sum(y, y) - m) / (m * (m - 1))
    k_xy = kernel_sum(x, y) / (n * m)
    return float(k_xx + k_yy - 2 * k_xy)


def energy_distance(x: Tensor, y: Tensor) -> float:
    r"""Energy distance of Székely and Rizzo between two sample sets (V-statistic).

    .. math::

        \mathcal{E}(X, Y) = 2\,E\|X - Y\| - E\|X - X'\| - E\|Y - Y'\|

    with every expectation the plain average over all pairs (``N^2``, ``M^2`` and ``N M`` terms,
    diagonals included), the convention of ``dcor.energy_distance`` and of SciPy: in 1-D,
    ``scipy.stats.energy_distance(x, y) == sqrt(energy_distance(x, y))`` (SciPy returns the
    square root). This estimate is always :math:`\ge 0` and is 0 only for equal empirical
    distributions; its small positive bias for same-distribution samples shrinks as ``1/N``.

    Args:
        x: ``[N, D]`` samples.
        y: ``[M, D]`` samples.

    Returns:
        :math:`\mathcal{E} \ge 0` (in the data's units, not squared).
    """
    raise_problems(_check_pair("energy_distance", x, y, min_rows=1))
    x, y = x.double(), y.double().to(x.device)

    def mean_distance(a: Tensor, b: Tensor) -> Tensor:
        return _pairwise_sum(a, b, torch.sqrt) / (a.shape[0] * b.shape[0])

    value = 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)
    # Rounding can leave -1e-17 for equal sets; the V-statistic is >= 0 in exact arithmetic.
    return max(float(value), 0.0)


def mode_coverage(
    x: Tensor,
    modes: Tensor,
    std: float,
    k: float = 3.0,
    *,
    min_count: int = 1,
) -> tuple[float, float]:
    r"""Mode coverage and sample quality for a Gaussian-mixture target (VEEGAN, PacGAN protocol).

    Each sample is assigned to its nearest mode :math:`\mu_j` and is *high-quality* when
    :math:`\|x_i - \mu_j\| \le k \, \sigma`. A mode is *covered* when at least ``min_count``
    high-quality samples are assigned to it. ``min_count = 1`` ("at least one sample") is the
    default; some papers ask for more, to be robust to stray samples (e.g. a mode is "recovered"
    by a GAN only when a few percent of the samples expected there land there); pass
    ``min_count = ceil(c * N / K)`` for such a threshold.

    Args:
        x: ``[N, D]`` samples.
        modes: ``[K, D]`` mode centres (``anydistill.data.toy2d_distributions.modes(name)``).
        std: :math:`\sigma > 0`, the per-axis std of each component (``mode_std(name)``).
        k: the radius in stds, > 0 (3 in the literature).
        min_count: high-quality samples a mode needs to count as covered, >= 1.

    Returns:
        ``(coverage, quality)``: the fraction of the ``K`` modes covered and the fraction of the
        ``N`` samples that are high-quality. A sample collapsed onto one mode gives ``(1/K, 1)``.
    """
    problems = _check_pair("mode_coverage", x, modes, min_rows=1, names=("x", "modes"))
    if not (is_finite_number(std) and std > 0):
        problems.append(f"The 'std' argument of mode_coverage must be a number > 0. Got {std!r}.")
    if not (is_finite_number(k) and k > 0):
        problems.append(f"The 'k' argument of mode_coverage must be a number > 0. Got {k!r}.")
    if not is_int(min_count) or min_count < 1:
        problems.append(
            f"The 'min_count' argument of mode_coverage must be an int >= 1. Got {min_count!r}."
        )
    raise_problems(problems)

    x, modes = x.double(), modes.double().to(x.device)
    dist, nearest = _nearest(x, modes)
    good = dist <= k * std
    counts = torch.bincount(nearest[good], minlength=modes.shape[0])
    coverage = (counts >= min_count).double().mean()
    return float(coverage), float(good.double().mean())


def within_class_modes(
    x: Tensor, labels: Tensor, modes: Tensor, mode_classes: Tensor, std: float, k: float = 3.0, *, share: float = 0.1
) -> tuple[float, float]:
    r"""Within-class sub-mode coverage and evenness of labelled samples of a Gaussian mixture.

    A sample counts for mode :math:`j` when it lies within :math:`k\sigma` of its nearest mode and
    that mode belongs to the sample's label. For class :math:`c` with :math:`n_c` samples and
    :math:`S_c` modes, mode :math:`j` is *kept* when it gets at least ``share`` of its fair count
    :math:`n_c / S_c`; the *evenness* of the class is the entropy of its counts over its modes divided
    by :math:`\log S_c` (1: spread equally, 0: one mode). A generator that keeps the class but drops
    sub-modes (mode seeking) scores high class accuracy and low values here.

    Args:
        x: ``[N, D]`` samples; labels: ``[N]`` their classes.
        modes: ``[K, D]`` mode centres; mode_classes: ``[K]`` the class of each (every class owns >= 2).
        std: the components' per-axis std; k: the radius in stds; share: the fraction of the fair
            count a mode needs to count as kept.

    Returns:
        ``(kept, evenness)``: the fraction of all (class, mode) pairs kept, over the classes present
        in ``labels``, and the mean evenness over those classes.
    """
    x, modes = x.double(), modes.double().to(x.device)
    mode_classes, labels = mode_classes.to(x.device), labels.to(x.device)
    dist, nearest = _nearest(x, modes)
    good = (dist <= k * std) & (mode_classes[nearest] == labels)
    counts = torch.bincount(nearest[good], minlength=modes.shape[0]).double()  # [K]
    kept, evenness = [], []
    for c in labels.unique():
        own = mode_classes == c
        fair = float((labels == c).sum()) / int(own.sum())
        kept.append((counts[own] >= share * fair).double())
        p = counts[own] / counts[own].sum().clamp(min=1)
        evenness.append(float(-(p * p.clamp(min=1e-300).log()).sum()) / float(torch.log(own.sum().double())))
    return float(torch.cat(kept).mean()), sum(evenness) / len(evenness)


def coupling_error(student_out: Tensor, teacher_out: Tensor) -> float:
    r"""Mean L2 distance between paired samples: :math:`\frac{1}{N}\sum_i \|G(z_i)-\Phi(z_i)\|_2`.

    ``student_out[i]`` and ``teacher_out[i]`` must come from the *same* noise :math:`z_i`:
    :math:`G` is the student, :math:`\Phi` the teacher's ODE solved from :math:`z_i` (many
    steps). Small for trajectory-preserving distillation (progressive distillation, consistency
    distillation, rectified flow), free to be large for distribution matching (DMD), whose
    student may map a noise to another sample of the right distribution.

    Args:
        student_out: ``[N, ...]``; trailing dims are flattened (images give ``[N, C*H*W]``).
        teacher_out: same shape.

    Returns:
        The mean per-sample Euclidean distance (not squared).
    """
    problems = []
    for name, t in (("student_out", student_out), ("teacher_out", teacher_out)):
        if not isinstance(t, Tensor) or t.ndim < 1 or t.shape[0] < 1:
            problems.append(
                f"The '{name}' argument of coupling_error must be a tensor [N, ...] with N >= 1. "
                f"Got {_describe(t)}."
            )
    if not problems and student_out.shape != teacher_out.shape:
        problems.append(
            "The 'student_out' and 'teacher_out' arguments of coupling_error must have the same "
            f"shape (pairs from the same noise). Got {tuple(student_out.shape)} and "
            f"{tuple(teacher_out.shape)}."
        )
    raise_problems(problems)
    a = student_out.double().reshape(student_out.shape[0], -1)
    b = teacher_out.double().to(a.device).reshape(teacher_out.shape[0], -1)
    return float((a - b).norm(dim=1).mean())


def straightness(trajectory: Tensor, times: Tensor) -> float:
    r"""Straightness :math:`S` of sampled ODE trajectories (Liu et al., 2022, rectified flow).

    The paper's definition for a path :math:`Z_t, t \in [0, 1]`, is
    :math:`S(Z) = \int_0^1 E\,\|(Z_1 - Z_0) - \dot Z_t\|^2 \, dt`: zero iff every path is a
    straight line traversed at constant speed, which one Euler step then integrates exactly.
    Given the states :math:`x_k` at times :math:`t_k`, ``k = 0..T``, in either direction
    (noise to data or data to noise) and on any grid, the time is first mapped affinely onto
    [0, 1], :math:`s_k = (t_k - t_0) / (t_T - t_0)`, and the integral becomes a Riemann sum over
    the steps with finite-difference velocities:

    .. math::

        v_k = \frac{x_{k+1} - x_k}{s_{k+1} - s_k}, \qquad
        S = \sum_{k=0}^{T-1} (s_{k+1} - s_k) \; \frac{1}{N} \sum_{n=1}^{N}
            \big\| (x_T - x_0)_n - v_{k,n} \big\|_2^2 .

    On a uniform grid this is the plain mean over the ``T`` steps. Equivalently (the cross term
    telescopes), :math:`S = \sum_k \Delta s_k \, E\|v_k\|^2 - E\|x_T - x_0\|^2`.
    :math:`S` depends on the time variable the trajectory is parametrised by (a straight path
    at varying speed in ``t`` is not straight in this sense): pass the times of the
    parametrisation whose straightness matters, e.g. the flow time of a rectified flow.

    Args:
        trajectory: ``[T+1, N, D]`` states (``[T+1, N, ...]`` is flattened), ``T >= 1``.
        times: ``[T+1]`` strictly monotonic times of the states.

    Returns:
        :math:`S \ge 0`, in squared data units.
    """
    problems = []
    if not isinstance(trajectory, Tensor) or trajectory.ndim < 3 or trajectory.shape[0] < 2:
        problems.append(
            "The 'trajectory' argument of straightness must be a tensor [T+1, N, D] with T >= 1. "
            f"Got {_describe(trajectory)}."
        )
    if not isinstance(times, Tensor) or times.ndim != 1:
        problems.append(
            "The 'times' argument of straightness must be a 1-D tensor [T+1]. "
            f"Got {_describe(times)}."
        )
    elif not problems and times.shape[0] != trajectory.shape[0]:
        problems.append(
            "The 'times' argument of straightness must have one time per state, "
            f"[{trajectory.shape[0]}]. Got {times.shape[0]}."
        )
    elif not problems:
        dt = times.double().diff()
        if not ((dt > 0).all() or (dt < 0).all()):
            problems.append(
                "The 'times' argument of straightness must be strictly increasing or strictly "
                f"decreasing. Got {times.tolist()}."
            )
    raise_problems(problems)

    x = trajectory.double().flatten(2)  # [T+1, N, D]
    t = times.double().to(x.device)
    s = (t - t[0]) / (t[-1] - t[0])
    ds = s.diff()  # [T], all > 0
    v = x.diff(dim=0) / ds[:, None, None]  # [T, N, D]
    displacement = x[-1] - x[0]  # [N, D]
    per_step = (displacement - v).pow(2).sum(dim=-1).mean(dim=-1)  # [T]
    return float((ds * per_step).sum())


# ----------------------------------------------------------------------------------------------


def _pairwise_sum(a: Tensor, b: Tensor, fn) -> Tensor:
    """``sum_ij fn(||a_i - b_j||^2)`` in row blocks, so ``N x M`` need not fit in memory."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, b.shape[0]))
    total = a.new_zeros(())
    for start in range(0, a.shape[0], rows):
        # cdist without the matmul expansion: exact squared distances (no cancellation).
        d = torch.cdist(a[start : start + rows], b, compute_mode="donot_use_mm_for_euclid_dist")
        total = total + fn(d.square_()).sum()
    return total


def _nearest(x: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Distance ``[N]`` to, and index ``[N]`` of, the row of ``centres`` nearest each row of ``x``."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, centres.shape[0]))
    dists, idx = [], []
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        d = torch.cdist(block, centres, compute_mode="donot_use_mm_for_euclid_dist")
        best = d.min(dim=1)
        dists.append(best.values)
        idx.append(best.indices)
    return torch.cat(dists), torch.cat(idx)


def _check_pair(
    func: str, x: object, y: object, *, min_rows: int, names: tuple[str, str] = ("x", "y")
) -> list[str]:
    problems = []
    for name, t in zip(names, (x, y)):
        is_table = isinstance(t, Tensor) and t.ndim == 2
        if not (is_table and t.shape[0] >= min_rows and t.shape[1] >= 1):
            problems.append(
                f"The '{name}' argument of {func} must be a tensor [N, D] with N >= {min_rows} "
                f"and D >= 1. Got {_describe(t)}."
            )
        elif not t.is_floating_point():
            problems.append(
                f"The '{name}' argument of {func} must be a floating-point tensor. Got {t.dtype}."
            )
    if not problems and x.shape[1] != y.shape[1]:
        problems.append(
            f"The '{names[0]}' and '{names[1]}' arguments of {func} must have the same number of "
            f"columns D. Got {x.shape[1]} and {y.shape[1]}."
        )
    return problems


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"a tensor of shape {tuple(t.shape)}"
    return f"{type(t).__name__} {t!r}"[:120]


