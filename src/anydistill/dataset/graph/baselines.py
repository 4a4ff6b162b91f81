"""Subsets of the training graphs at a distilled set's budget: the baselines a graph set must beat.

* `random_by_nodes`: random graphs of each class until they hold as many nodes as the distilled
  graphs of that class (the fair comparison when distilled graphs are small and many);
* `random_by_count`: as many random graphs per class as the distilled set has;
* `k_center_by_class`: greedy k-center (`anydistill.dataset.coresets.k_center`) per class, with as
  many graphs as the distilled set has, on Weisfeiler-Lehman histograms (`wl_histograms`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.data.graphs import Graph
from anydistill.dataset.coresets import k_center
from anydistill.dataset.graph.trees import tree_labels


def _members(graphs: list[Graph], c: int, generator: torch.Generator) -> list[int]:
    members = [i for i, g in enumerate(graphs) if g.label == c]
    return [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]


def random_by_count(graphs: list[Graph], counts: list[int], generator: torch.Generator) -> list[int]:
    """Indices of ``counts[c]`` random graphs of each class c (all of them when the class has fewer)."""
    return [i for c, n in enumerate(counts) for i in _members(graphs, c, generator)[:n]]


def random_by_nodes(graphs: list[Graph], nodes: list[int], generator: torch.Generator) -> list[int]:
    """Indices of random graphs of each class c holding about ``nodes[c]`` nodes: the shortest random
    prefix reaching the budget, without its last graph when that lands nearer (none for a budget of 0)."""
    picked = []
    for c, budget in enumerate(nodes):
        total, prefix = 0, []
        for i in _members(graphs, c, generator) if budget > 0 else []:
            prefix.append(i)
            total += graphs[i].num_nodes
            if total >= budget:
                if len(prefix) > 1 and total - budget > budget - (total - graphs[i].num_nodes):
                    prefix.pop()
                break
        picked += prefix
    return picked


def wl_histograms(graphs: list[Graph], iterations: int) -> Tensor:
    """``[G, V]`` float counts of each graph's Weisfeiler-Lehman colours at iterations 0 .. ``iterations``.

    The colours are the canonical computation-tree labels (`trees.tree_labels`): WL's colour of a
    node after k rounds is exactly its depth-k tree, here without WL's relabelling to small ints.
    V is the number of distinct (iteration, colour) pairs among ``graphs``.
    """
    per_graph = [[(k, label) for k, level in enumerate(tree_labels(g, iterations)) for label in level] for g in graphs]
    vocabulary = {key: i for i, key in enumerate(sorted({key for keys in per_graph for key in keys}))}
    out = torch.zeros(len(graphs), len(vocabulary))
    for row, keys in enumerate(per_graph):
        out[row].index_add_(0, torch.tensor([vocabulary[k] for k in keys], dtype=torch.long), torch.ones(len(keys)))
    return out


def k_center_by_class(features: Tensor, graphs: list[Graph], counts: list[int], generator: torch.Generator) -> list[int]:
    """Indices of ``counts[c]`` graphs of each class c picked by greedy k-center on ``features [G, V]``."""
    picked = []
    for c, n in enumerate(counts):
        members = torch.tensor([i for i, g in enumerate(graphs) if g.label == c], dtype=torch.long)
        n = min(n, len(members))
        if n > 0:
            chosen = k_center(features[members], torch.zeros(len(members), dtype=torch.long), n, generator)
            picked += members[chosen].tolist()
    return picked
