"""Graph classification data: one graph, a batch of graphs in plain torch, and the data-module base.

A `Graph` holds integer node labels (an element, a motif role), directed edges (an undirected
bond is stored both ways) with integer edge labels, and its class. A `GraphBatch` concatenates
graphs for a GNN: node features are the one-hot node labels, edge indices are offset per graph and
``batch`` says which graph each node belongs to. ``pool`` marks the nodes a graph-level readout
sums over: every node of a real graph, only the tree roots of a graph distilled by Mirage.

`GraphData` is the base of the graph sources (``motif-graphs``, ``nci-alerts``, ``wehi-pains``):
subclasses build the whole list of graphs once (``load_graphs``); the split 80/10/10 is
stratified by class and seeded (``split_seed``), independent of the run's seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import lightning as L
import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


@dataclass
class Graph:
    """One labelled graph.

    Attributes:
        node_labels: ``[n]`` int64 node labels, or ``None`` for a graph whose nodes carry none.
        edge_index: ``[2, e]`` int64 (source, target) pairs; an undirected edge appears both ways.
        edge_labels: ``[e]`` int64 edge labels (0 when the source has no edge types).
        label: the graph's class.
        roots: ``[n]`` bool, the nodes a readout pools over, or ``None`` for all of them.
    """

    node_labels: Tensor | None
    edge_index: Tensor
    edge_labels: Tensor
    label: int
    roots: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        if self.node_labels is not None:
            return len(self.node_labels)
        return len(self.roots) if self.roots is not None else int(self.edge_index.max()) + 1 if self.edge_index.numel() else 0


@dataclass
class GraphBatch:
    """Graphs concatenated for a GNN (N nodes, E edges, B graphs in all).

    Attributes:
        x: ``[N, F]`` float32 one-hot node labels (F = the data's node-label count).
        edge_index: ``[2, E]`` int64, offset so that node ids index ``x``.
        edge_labels: ``[E]`` int64.
        batch: ``[N]`` int64, the graph of each node.
        pool: ``[N]`` bool, the nodes the readout sums over.
        y: ``[B]`` int64 graph classes.
    """

    x: Tensor
    edge_index: Tensor
    edge_labels: Tensor
    batch: Tensor
    pool: Tensor
    y: Tensor

    @property
    def num_graphs(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(*(getattr(self, name).to(device) for name in ("x", "edge_index", "edge_labels", "batch", "pool", "y")))


def collate(graphs: Sequence[Graph], num_node_labels: int) -> GraphBatch:
    """One `GraphBatch` of ``graphs``; unlabelled nodes get the constant feature 1 (``num_node_labels`` = 1)."""
    sizes = [g.num_nodes for g in graphs]
    offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
    labels = torch.cat([g.node_labels if g.node_labels is not None else torch.zeros(n, dtype=torch.long)
                        for g, n in zip(graphs, sizes)]) if graphs else torch.zeros(0, dtype=torch.long)
    edges = [g.edge_index + offset for g, offset in zip(graphs, offsets.tolist())]
    return GraphBatch(
        x=torch.nn.functional.one_hot(labels, num_node_labels).float(),
        edge_index=torch.cat(edges, dim=1) if edges else torch.zeros(2, 0, dtype=torch.long),
        edge_labels=torch.cat([g.edge_labels for g in graphs]) if graphs else torch.zeros(0, dtype=torch.long),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(sizes, dtype=torch.long)),
        pool=torch.cat([g.roots if g.roots is not None else torch.ones(n, dtype=torch.bool) for g, n in zip(graphs, sizes)])
        if graphs else torch.zeros(0, dtype=torch.bool),
        y=torch.tensor([g.label for g in graphs], dtype=torch.long),
    )


def graph_bytes(graphs: Sequence[Graph], num_node_labels: int, num_edge_labels: int) -> int:
    """Bytes of ``graphs`` stored for training: one-hot float32 node features and edge labels, int64
    edge indices, one bool per node for the pooled set (compression = distilled bytes / full bytes)."""
    nodes = sum(g.num_nodes for g in graphs)
    edges = sum(g.edge_index.shape[1] for g in graphs)
    return nodes * (4 * num_node_labels + 1) + edges * (2 * 8 + 4 * num_edge_labels)


def undirected(edges: Sequence[tuple[int, int]], labels: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(edge_index [2, 2m], edge_labels [2m])`` storing each of the m undirected edges both ways."""
    if not edges:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    pairs = torch.tensor(edges, dtype=torch.long).t()
    index = torch.cat([pairs, pairs.flip(0)], dim=1)
    values = torch.tensor(list(labels), dtype=torch.long)
    return index, torch.cat([values, values])


def stratified_split(labels: Sequence[int], seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> dict[str, list[int]]:
    """Indices of ``train``, ``val`` and ``test`` (the rest): per class, a seeded permutation cut at
    the fractions (rounded), so every split keeps the class proportions."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_train = round(fractions[0] * len(members))
        n_val = round(fractions[1] * len(members))
        out["train"] += members[:n_train]
        out["val"] += members[n_train : n_train + n_val]
        out["test"] += members[n_train + n_val :]
    return {name: sorted(rows) for name, rows in out.items()}


class GraphData(L.LightningDataModule):
    """Base of the graph classification sources: three lists of `Graph`, split 80/10/10 by class.

    Subclasses set ``num_node_labels``, ``num_edge_labels``, ``num_classes`` (class attributes, or
    instance attributes set in ``__init__`` from their options) and implement ``load_graphs``.
    ``input_shape`` is ``(num_node_labels,)``, the width of the one-hot node features.

    Args:
        split_seed: the seed of the stratified split (fixed by default, so every run sees the same one).
    """

    num_node_labels: ClassVar[int] = 1
    num_edge_labels: ClassVar[int] = 1
    num_classes: ClassVar[int] = 2
    node_labelled: bool = True  # False: the graphs carry no node labels (Mirage refuses them)
    description: ClassVar[str] = ""

    def __init__(self, split_seed: int = 0):
        super().__init__()
        self.split_seed = split_seed
        self.splits: dict[str, list[Graph]] = {}

    @property
    def input_shape(self) -> tuple[int]:
        return (self.num_node_labels,)

    @classmethod
    def missing_package(cls) -> str | None:
        """Why the graphs cannot be built on this machine (an optional package), or None."""
        return None

    def load_graphs(self) -> list[Graph]:
        """Every graph of the source, in a fixed order."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            graphs = self.load_graphs()
            rows = stratified_split([g.label for g in graphs], self.split_seed)
            self.splits = {name: [graphs[i] for i in rows[name]] for name in SPLITS}

    def split(self, name: str) -> list[Graph]:
        """The graphs of split ``name`` ("train", "val" or "test")."""
        self.setup()
        return self.splits[name]

    def batch(self, name: str) -> GraphBatch:
        """The whole split ``name`` as one `GraphBatch`."""
        return collate(self.split(name), self.num_node_labels)

    def fingerprint(self, name: str = "train") -> str:
        """SHA-256 of a split's graphs (labels, edges, classes) and the source's class name."""
        digest = hashlib.sha256(type(self).__name__.encode())
        for g in self.split(name):
            for part in (g.node_labels, g.edge_index, g.edge_labels, torch.tensor([g.label])):
                if part is not None:
                    digest.update(part.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def attach_signals(self, signals: dict[str, Tensor]) -> None:
        """Graph sources serve no teacher signals (the runner calls this for every method)."""
