"""Coreset baselines: random subset, herding, greedy k-center."""

import pytest
import torch

from anydistill.dataset.coresets import herding, k_center, random_subset


def _data(seed=0, n=60, dim=5, classes=(0, 2, 3, 7)):
    """Shuffled labels with unequal class sizes (a class index gap too), and random features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
    labels[: 3 * len(classes)] = torch.tensor(classes).repeat(3)  # every class has >= 3 examples
    labels = labels[torch.randperm(n, generator=g)]
    return torch.randn(n, dim, generator=g), labels


SELECTORS = {
    "random": lambda f, y, ipc, seed: random_subset(y, ipc, torch.Generator().manual_seed(seed)),
    "herding": lambda f, y, ipc, seed: herding(f, y, ipc),
    "k_center_random": lambda f, y, ipc, seed: k_center(f, y, ipc, torch.Generator().manual_seed(seed)),
    "k_center_mean": lambda f, y, ipc, seed: k_center(f, y, ipc, start="mean"),
}


@pytest.mark.parametrize("name", SELECTORS)
@pytest.mark.parametrize("ipc", [1, 3])
def test_ipc_per_class_grouped_in_class_order_valid_and_unique(name, ipc):
    features, labels = _data()
    idx = SELECTORS[name](features, labels, ipc, 0)
    assert idx.dtype == torch.long and idx.shape == (4 * ipc,)
    assert idx.min() >= 0 and idx.max() < len(labels)
    assert len(set(idx.tolist())) == len(idx)
    # Grouped by class, classes in increasing order, exactly ipc each.
    assert labels[idx].tolist() == torch.tensor([0, 2, 3, 7]).repeat_interleave(ipc).tolist()


@pytest.mark.parametrize("name", SELECTORS)
def test_determinism(name):
    features, labels = _data()
    assert torch.equal(SELECTORS[name](features, labels, 3, 5), SELECTORS[name](features, labels, 3, 5))


def test_random_subset_depends_on_the_generator():
    _, labels = _data()
    draws = {tuple(random_subset(labels, 3, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(draws) > 1


def test_herding_first_pick_is_nearest_to_the_class_mean():
    features, labels = _data(seed=1)
    idx = herding(features, labels, 2)
    for c, first in zip([0, 2, 3, 7], idx[::2].tolist()):
        members = torch.nonzero(labels == c).flatten()
        mean = features[members].mean(0)
        nearest = members[(features[members] - mean).norm(dim=1).argmin()]
        assert first == int(nearest)


def test_herding_follows_the_running_mean_rule():
    # One class on a line: mean 5.02. Pick 1: 5.1 (nearest the mean). Pick 2 minimises
    # |5.02 - (5.1 + f) / 2|, i.e. f nearest 4.94: 4 (gap 0.47) beats 6 (gap 0.53).
    values = torch.tensor([0.0, 10.0, 4.0, 6.0, 5.1], dtype=torch.float64)
    assert herding(values[:, None], torch.zeros(5, dtype=torch.long), 2).tolist() == [4, 2]
    # And against a brute-force reading of the rule on random data.
    features, labels = _data(seed=2)
    idx = herding(features, labels, 3)
    for c, picks in zip([0, 2, 3, 7], idx.view(4, 3).tolist()):
        members = torch.nonzero(labels == c).flatten().tolist()
        mean = features[members].double().mean(0)
        chosen, total = [], torch.zeros_like(mean)
        for k in range(1, 4):
            best = min(
                (i for i in members if i not in chosen),
                key=lambda i: float((mean - (total + features[i].double()) / k).norm()),
            )
            chosen.append(best)
            total = total + features[best].double()
        assert picks == chosen


def test_k_center_picks_the_corners_of_a_square():
    # A dense blob at the centre and the four corners: starting nearest the mean (the centre),
    # farthest-first must take the four corners next (each maximises the min distance).
    g = torch.Generator().manual_seed(0)
    blob = 0.05 * torch.randn(20, 2, generator=g)
    blob[0] = 0.0
    corners = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    features = torch.cat([blob, corners])
    idx = k_center(features, torch.zeros(24, dtype=torch.long), 5, start="mean")
    assert idx[0] == 0
    assert set(idx[1:].tolist()) == {20, 21, 22, 23}


def test_k_center_each_pick_maximises_the_min_distance():
    # On a line: start nearest the mean (3.2 -> 3), then 10 (distance 7), then 0 (distance 3).
    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    assert k_center(values[:, None], torch.zeros(5, dtype=torch.long), 3, start="mean").tolist() == [3, 4, 0]
    features, labels = _data(seed=3)
    idx = k_center(features, labels, 4, torch.Generator().manual_seed(0))
    for c, picks in zip([0, 2, 3, 7], idx.view(4, 4).tolist()):
        members = torch.nonzero(labels == c).flatten().tolist()
        for k in range(1, 4):
            def min_dist(i, centres=picks[:k]):
                return min(float((features[i] - features[j]).norm()) for j in centres)
            candidates = [i for i in members if i not in picks[:k]]
            assert min_dist(picks[k]) == pytest.approx(max(min_dist(i) for i in candidates))


def test_k_center_random_start_uses_the_generator():
    features, labels = _data()
    firsts = {k_center(features, labels, 2, torch.Generator().manual_seed(s))[0].item() for s in range(8)}
    assert len(firsts) > 1


def test_k_center_never_repeats_a_centre_with_duplicate_points():
    features = torch.zeros(4, 3)  # all identical: every distance is 0
    idx = k_center(features, torch.zeros(4, dtype=torch.long), 4, start="mean")
    assert sorted(idx.tolist()) == [0, 1, 2, 3]


def test_errors_are_reported_together():
    features, labels = _data()
    with pytest.raises(ValueError) as info:
        k_center(features[:-1], labels.float(), 0, start="median")
    message = str(info.value)
    assert "'start'" in message and "'labels'" in message and "'ipc'" in message
    with pytest.raises(ValueError, match="feature rows"):
        herding(features[:-1], labels, 1)
    with pytest.raises(ValueError, match=r"at least ipc=40 .* class\(es\) 0 \(\d+\), 2"):
        random_subset(labels, 40)
