"""Mirage's miner (Gupta et al., ICLR 2024; official ``NCI1/graph-nci-finalize-reduce-curr.py``).

No GNN is trained: the training graphs are summarised by the computation trees a GNN would see.

1. Label every node's L-hop computation tree (`trees.tree_labels`); single-node trees are skipped.
2. Per class, keep the tree labels that occur at least ``min_tree_count`` times (the issue's "more
   than once"; the official counter starts at 1 and keeps every tree).
3. Each graph of the class becomes one transaction: the set of its kept tree labels.
4. FP-growth per class with an absolute support threshold (`fpgrowth.fp_growth`).
5. Keep the itemsets of a class that are not frequent in any other class.
6. Each kept itemset becomes one training graph of its class: the disjoint union of its trees
   (`trees.disjoint_union`), edges child -> root, pooled over the roots only.

Several thresholds can be mined at once (the official lowers them by 20 twice and keeps the one
best on validation): steps 1-3 run once, steps 4-6 per threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from anydistill.data.graphs import Graph
from anydistill.dataset.graph.fpgrowth import fp_growth
from anydistill.dataset.graph.trees import (
    ComputationTree,
    adjacency,
    computation_tree,
    disjoint_union,
    tree_labels,
)


@dataclass
class Candidate:
    """The distilled set at one support threshold per class.

    Attributes:
        supports: the absolute threshold of each class.
        patterns: ``(class, itemset of tree labels, support)`` of each kept pattern, in graph order.
        graphs: one distilled `Graph` per pattern.
    """

    supports: list[int]
    patterns: list[tuple[int, frozenset[int], int]]
    graphs: list[Graph]


@dataclass
class Mined:
    """Steps 1-3, shared by every threshold.

    Attributes:
        transactions: per class, one set of kept tree labels per graph that has any.
        kept: per class, the kept tree labels and their counts (occurrences over the class's nodes).
        representative: a (graph, node) whose tree has each kept label (to unroll it).
        nodes: the number of trees labelled (non-isolated nodes).
    """

    transactions: list[list[frozenset[int]]]
    kept: list[dict[int, int]]
    representative: dict[int, tuple[int, int]]
    nodes: int
    seconds: float = 0.0
    trees: dict[int, ComputationTree] = field(default_factory=dict)


def label_trees(graphs: list[Graph], num_classes: int, hops: int, min_tree_count: int = 2) -> Mined:
    """Steps 1-3 on the training ``graphs`` (each with node labels)."""
    started = time.perf_counter()
    per_graph: list[list[int]] = []
    representative: dict[int, tuple[int, int]] = {}
    counts: list[dict[int, int]] = [{} for _ in range(num_classes)]
    nodes = 0
    for index, graph in enumerate(graphs):
        neighbours = adjacency(graph)
        labels = tree_labels(graph, hops, neighbours)[hops]
        mine = [label for v, label in enumerate(labels) if neighbours[v]]  # a lone node is no tree (as the official)
        nodes += len(mine)
        for v, label in enumerate(labels):
            if neighbours[v]:
                representative.setdefault(label, (index, v))
        for label in mine:
            counts[graph.label][label] = counts[graph.label].get(label, 0) + 1
        per_graph.append(mine)
    kept = [{label: n for label, n in c.items() if n >= min_tree_count} for c in counts]
    transactions: list[list[frozenset[int]]] = [[] for _ in range(num_classes)]
    for graph, labels in zip(graphs, per_graph):
        row = frozenset(labels) & kept[graph.label].keys()
        if row:
            transactions[graph.label].append(row)
    used = {label for k in kept for label in k}
    mined = Mined(transactions, kept, {label: at for label, at in representative.items() if label in used}, nodes)
    mined.seconds = time.perf_counter() - started
    return mined


def distil(mined: Mined, graphs: list[Graph], hops: int, supports: list[int], max_itemsets: int | None = None) -> Candidate:
    """Steps 4-6 at the absolute ``supports`` (one per class)."""
    frequent = [fp_growth(rows, s, max_itemsets=max_itemsets) for rows, s in zip(mined.transactions, supports)]
    patterns = []
    for c, found in enumerate(frequent):
        for itemset in sorted(found, key=lambda s: (len(s), sorted(s))):  # a fixed order: the set is reproducible
            if not any(itemset in other for d, other in enumerate(frequent) if d != c):
                patterns.append((c, itemset, found[itemset]))
    out = []
    for c, itemset, _ in patterns:
        trees = [_tree(mined, graphs, label, hops) for label in sorted(itemset)]
        out.append(disjoint_union(trees, c))
    return Candidate(list(supports), patterns, out)


def _tree(mined: Mined, graphs: list[Graph], label: int, hops: int) -> ComputationTree:
    if label not in mined.trees:
        index, node = mined.representative[label]
        mined.trees[label] = computation_tree(graphs[index], node, hops)
    return mined.trees[label]


def mine(graphs: list[Graph], num_classes: int, hops: int, candidates: list[list[int]], *, min_tree_count: int = 2,
         max_itemsets: int | None = None) -> tuple[Mined, list[Candidate]]:
    """Mirage on the training ``graphs``: the shared tree statistics and one `Candidate` per entry
    of ``candidates`` (each a list of per-class absolute support thresholds)."""
    mined = label_trees(graphs, num_classes, hops, min_tree_count)
    return mined, [distil(mined, graphs, hops, supports, max_itemsets) for supports in candidates]
