r"""Coreset baselines of dataset distillation: pick ``ipc`` real examples per class.

Every table of the matching family (DC, DSA, DM, MTT, ...) compares the synthetic set with real
subsets of the same size, selected per class by three rules: a random subset, herding and greedy
k-center. These functions return the selection as indices into the dataset; training on
``x[idx], y[idx]`` with the evaluation protocol (`anydistill.dataset.protocol`) gives the baseline.

Common contract
---------------
* ``labels`` is a 1-D integer tensor ``[N]``; the classes are its distinct values, in increasing
  order (a class absent from ``labels`` gets nothing).
* The result is a 1-D ``int64`` tensor of ``C * ipc`` indices on ``labels.device``, grouped by
  class in class order: ``idx[c * ipc:(c + 1) * ipc]`` are the picks of the ``c``-th class, in the
  order they were picked. Indices are unique; a class with fewer than ``ipc`` examples is an error.
* ``features`` (herding, k-center) is ``[N, D]`` (anything ``[N, ...]`` is flattened). Distances are
  Euclidean and computed in float64, so ties and near-ties do not depend on the input precision;
  ties go to the lowest index.

Which features
--------------
The rules are only as good as the embedding they run on, and the caller chooses it. The DC/DSA
papers' Herding and K-Center baselines select on the embedding of a ConvNet trained on the whole
real training set (the penultimate features, `ConvNet.embed`); use such features to compare with
their tables, and report the embedder in the protocol card. Raw pixels work as well for a quick
baseline but are not what the papers report.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["random_subset", "herding", "k_center"]


def random_subset(labels: Tensor, ipc: int, generator: torch.Generator | None = None) -> Tensor:
    """``ipc`` examples per class drawn uniformly without replacement.

    Args:
        labels: ``[N]`` integer class labels.
        ipc: examples per class, ``>= 1``.
        generator: the source of randomness (``None``: torch's global RNG). One ``randperm`` is
            drawn per class, in class order, so the same generator state gives the same subset.

    Returns:
        ``[C * ipc]`` int64 indices, grouped by class in class order, in draw order within a class.

    Raises:
        ValueError: bad ``labels`` or ``ipc``, or a class with fewer than ``ipc`` examples.
    """
    members = _members(labels, None, ipc, "random_subset")
    device = generator.device if generator is not None else torch.device("cpu")
    picks = []
    for idx in members:
        order = torch.randperm(len(idx), generator=generator, device=device)[:ipc].to(idx.device)
        picks.append(idx[order])
    return torch.cat(picks)


def herding(features: Tensor, labels: Tensor, ipc: int) -> Tensor:
    r"""Herding (Welling, ICML 2009), in the greedy form used for exemplar and coreset selection.

    Per class with features ``phi_1 .. phi_n`` and mean ``mu = (1/n) sum_i phi_i``, pick ``ipc``
    examples one at a time so that the mean of the picked examples tracks ``mu``: with ``S_{k-1}``
    the sum of the ``k - 1`` features picked so far, step ``k`` picks

    .. math:: p_k = \arg\min_{i \notin \{p_1..p_{k-1}\}} \left\| \mu - \tfrac{1}{k}(S_{k-1} + \phi_i) \right\|_2

    (equivalently ``argmin || k mu - S_{k-1} - phi_i ||``; ties go to the lowest index). The first
    pick is therefore the example nearest the class mean. This is the rule of iCaRL (Rebuffi et al.
    2017) and of the coreset baselines of the dataset-distillation benchmarks; it is deterministic.
    It is not the weight-vector form ``w <- w + mu - phi(x_t)``, ``x_{t+1} = argmax <w, phi>`` of
    Welling's paper, which picks differently unless the features have equal norms. iCaRL
    L2-normalises the features first; this function uses them as given (normalise them before
    calling if you want that).

    Args:
        features: ``[N, D]`` (or ``[N, ...]``, flattened) features of the examples.
        labels: ``[N]`` integer class labels.
        ipc: examples per class, ``>= 1``.

    Returns:
        ``[C * ipc]`` int64 indices, grouped by class in class order, in pick order within a class.

    Raises:
        ValueError: bad ``features``, ``labels`` or ``ipc``, or a class with fewer than ``ipc`` examples.
    """
    members = _members(labels, features, ipc, "herding")
    flat = features.detach().reshape(len(features), -1).to(torch.float64)
    picks = []
    for idx in members:
        phi = flat[idx.to(flat.device)]
        mu = phi.mean(dim=0)
        running_sum = torch.zeros_like(mu)
        available = torch.ones(len(phi), dtype=torch.bool, device=phi.device)
        chosen = []
        for k in range(1, ipc + 1):
            # Distance between the class mean and the mean the subset would have with each candidate.
            gap = (mu - (running_sum + phi) / k).norm(dim=1)
            gap[~available] = torch.inf
            pick = int(torch.argmin(gap))
            chosen.append(pick)
            available[pick] = False
            running_sum = running_sum + phi[pick]
        picks.append(idx[torch.tensor(chosen, dtype=torch.long, device=idx.device)])
    return torch.cat(picks)


def k_center(
    features: Tensor,
    labels: Tensor,
    ipc: int,
    generator: torch.Generator | None = None,
    *,
    start: Literal["random", "mean"] = "random",
) -> Tensor:
    r"""Greedy k-center (farthest-first traversal; Sener & Savarese, ICLR 2018), per class.

    Per class, pick a first centre, then repeatedly add the example farthest from the centres
    picked so far:

    .. math:: p_k = \arg\max_{i \notin \{p_1..p_{k-1}\}} \min_{j < k} \| \phi_i - \phi_{p_j} \|_2

    (ties go to the lowest index). This is the 2-approximation of the k-center problem (minimise the
    largest distance from any example to its nearest centre) that Sener & Savarese use as their
    core-set. With no labelled pool to start from, the first centre is:

    * ``start='random'`` (default): an example drawn uniformly with ``generator``, as in the
      common greedy k-center implementations (e.g. DeepCore's ``kCenterGreedy`` with nothing
      already selected);
    * ``start='mean'``: the example nearest the class mean (deterministic; ``generator`` unused).

    Args:
        features: ``[N, D]`` (or ``[N, ...]``, flattened) features of the examples.
        labels: ``[N]`` integer class labels.
        ipc: examples per class, ``>= 1``.
        generator: the source of the random first centres (``None``: torch's global RNG); one draw
            per class, in class order.
        start: ``'random'`` or ``'mean'``, the rule for the first centre.

    Returns:
        ``[C * ipc]`` int64 indices, grouped by class in class order, in pick order within a class.

    Raises:
        ValueError: bad arguments, or a class with fewer than ``ipc`` examples.
    """
    problems = []
    if start not in ("random", "mean"):
        problems.append(f"The 'start' parameter of k_center must be 'random' or 'mean'. Got {start!r}.")
    members = _members(labels, features, ipc, "k_center", problems)
    flat = features.detach().reshape(len(features), -1).to(torch.float64)
    device = generator.device if generator is not None else torch.device("cpu")
    picks = []
    for idx in members:
        phi = flat[idx.to(flat.device)]
        if start == "random":
            first = int(torch.randint(len(phi), (1,), generator=generator, device=device))
        else:
            first = int(torch.argmin((phi - phi.mean(dim=0)).norm(dim=1)))
        chosen = [first]
        # Distance of every example to its nearest centre so far; picked ones are excluded with -inf
        # (not 0), so exact duplicates of a centre can still be picked rather than a centre twice.
        nearest = (phi - phi[first]).norm(dim=1)
        nearest[first] = -torch.inf
        for _ in range(ipc - 1):
            pick = int(torch.argmax(nearest))
            chosen.append(pick)
            nearest = torch.minimum(nearest, (phi - phi[pick]).norm(dim=1))
            nearest[pick] = -torch.inf
        picks.append(idx[torch.tensor(chosen, dtype=torch.long, device=idx.device)])
    return torch.cat(picks)


def _members(
    labels: object, features: object, ipc: object, caller: str, problems: list[str] | None = None
) -> list[Tensor]:
    """Validate the arguments (all problems at once) and return each class's indices, in class order."""
    problems = [] if problems is None else problems
    labels_ok = isinstance(labels, Tensor) and labels.dim() == 1 and not labels.is_floating_point() \
        and not labels.is_complex() and labels.dtype != torch.bool
    if not labels_ok:
        got = f"shape {tuple(labels.shape)}, dtype {labels.dtype}" if isinstance(labels, Tensor) else repr(type(labels))
        problems.append(f"The 'labels' argument of {caller} must be a 1-D integer tensor [N]. Got {got}.")
    elif len(labels) == 0:
        problems.append(f"The 'labels' argument of {caller} is empty; there is nothing to select from.")
    if features is not None:
        if not isinstance(features, Tensor) or features.dim() < 2 or not features.is_floating_point():
            got = f"shape {tuple(features.shape)}, dtype {features.dtype}" if isinstance(features, Tensor) \
                else repr(type(features))
            problems.append(f"The 'features' argument of {caller} must be a float tensor [N, D]. Got {got}.")
        elif labels_ok and len(features) != len(labels):
            problems.append(
                f"{caller} got {len(features)} feature rows for {len(labels)} labels; they must describe the same examples."
            )
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        problems.append(f"The 'ipc' parameter of {caller} must be an int >= 1. Got {ipc!r}.")
    members: list[Tensor] = []
    if labels_ok and len(labels) > 0:
        for c in torch.unique(labels, sorted=True).tolist():
            members.append(torch.nonzero(labels == c).flatten())
        if not problems:
            short = [f"{c} ({len(m)})" for c, m in zip(torch.unique(labels, sorted=True).tolist(), members) if len(m) < ipc]
            if short:
                problems.append(
                    f"{caller} needs at least ipc={ipc} examples in every class; class(es) {', '.join(short)} "
                    "have fewer. Lower ipc or give more examples."
                )
    if problems:
        raise ValueError("\n".join(problems))
    return members
