"""Synthetic graphs with a planted class motif: the ground truth for a graph-pattern miner.

Every graph is a Barabási–Albert base graph (networkx) whose nodes carry labels drawn from
``1 .. base_labels``, plus one motif (its nodes labelled 0) joined to a random base node by one
edge from the motif's ``ANCHOR`` node. The motif is the class: a house (class 0) or a 5-cycle
(class 1); the 3-class variant adds a 3x3 grid (class 2). Both 2-class motifs have 5 nodes, so
counting labels cannot tell the classes apart: the structure must.

Options add noise: ``noise_edges`` random edges per graph (which can touch the motif) and
``label_noise``, the fraction of training graphs whose class is replaced by another (validation
and test stay clean). ``node_labels: false`` drops every node label (the plain BA-motif setting,
which a label-based miner refuses).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import networkx as nx
import torch

from anydistill.core.recipe import PositiveInt
from anydistill.data.graphs import Graph, GraphData, undirected

Motif = Literal["house", "cycle", "grid"]
MOTIFS: dict[str, Callable[[], nx.Graph]] = {
    "house": nx.house_graph,
    "cycle": lambda: nx.cycle_graph(5),
    "grid": lambda: nx.convert_node_labels_to_integers(nx.grid_2d_graph(3, 3)),
}
ANCHOR = 0  # the motif node joined to the base graph
MOTIF_LABEL = 0


def motif_graph(name: str) -> nx.Graph:
    """The motif ``name`` alone, every node labelled `MOTIF_LABEL` (attribute ``label``), every edge 0."""
    graph = MOTIFS[name]()
    nx.set_node_attributes(graph, MOTIF_LABEL, "label")
    nx.set_edge_attributes(graph, 0, "label")
    return graph


def planted(name: str, hops: int) -> tuple[Graph, list[int]]:
    """The ground truth for a miner: motif ``name`` alone as a `Graph`, and its nodes whose
    ``hops``-deep computation tree is the same in every generated graph (without noise edges).

    Those are the nodes at distance >= ``hops`` from the `ANCHOR`: neither the base graph nor the
    anchor's extra edge enters their trees.
    """
    motif = motif_graph(name)
    edges = list(motif.edges())
    index, edge_labels = undirected(edges, [0] * len(edges))
    alone = Graph(torch.full((motif.number_of_nodes(),), MOTIF_LABEL), index, edge_labels, 0)
    return alone, sorted(v for v, d in nx.single_source_shortest_path_length(motif, ANCHOR).items() if d >= hops)


class MotifGraphsData(GraphData):
    """BA base graphs with a planted motif per class (networkx; generated, never downloaded).

    Args:
        num_graphs: graphs in all, the same number per class (the remainder to the first classes).
        motifs: the class motifs in class order; ``[house, cycle]`` (2 classes) or ``[house, cycle, grid]``.
        base_nodes: nodes of each BA base graph.
        attach_edges: edges each new BA node brings (``m``; 1 gives a tree, so every cycle is the motif's).
        base_labels: base nodes are labelled uniformly from ``1 .. base_labels`` (the motif's are 0).
        noise_edges: random extra edges per graph, between any two nodes.
        label_noise: the fraction of training graphs given another class, drawn uniformly.
        node_labels: keep the node labels (false: graphs without node labels).
        seed: the generation seed (fixed by default: every run sees the same graphs).
        split_seed: the seed of the 80/10/10 stratified split.
    """

    num_edge_labels = 1
    description = "Barabási–Albert graphs with a planted class motif"

    def __init__(
        self,
        num_graphs: PositiveInt = 1000,
        motifs: list[Motif] = ("house", "cycle"),  # a tuple: an immutable default
        base_nodes: PositiveInt = 20,
        attach_edges: PositiveInt = 1,
        base_labels: PositiveInt = 2,
        noise_edges: int = 0,
        label_noise: float = 0.0,
        node_labels: bool = True,
        seed: int = 0,
        split_seed: int = 0,
    ):
        super().__init__(split_seed)
        problems = []
        if len(set(motifs)) != len(motifs) or len(motifs) < 2:
            problems.append(f"data.motifs must name at least 2 different motifs (one per class), got {list(motifs)}.")
        if attach_edges >= base_nodes:
            problems.append(f"data.attach_edges={attach_edges} must be below base_nodes={base_nodes} (networkx's BA model).")
        if noise_edges < 0:
            problems.append(f"data.noise_edges must be >= 0, got {noise_edges}.")
        if not 0.0 <= label_noise < 1.0:
            problems.append(f"data.label_noise is a fraction of the training graphs in [0, 1), got {label_noise}.")
        if problems:
            raise ValueError("\n".join(problems))
        self.num_graphs, self.motifs = num_graphs, list(motifs)
        self.base_nodes, self.attach_edges, self.base_labels = base_nodes, attach_edges, base_labels
        self.noise_edges, self.label_noise, self.seed = noise_edges, label_noise, seed
        self.num_classes = len(self.motifs)
        self.node_labelled = node_labels
        self.num_node_labels = base_labels + 1 if node_labels else 1

    def load_graphs(self) -> list[Graph]:
        rng = random.Random(self.seed)
        return [self._one(i % self.num_classes, rng) for i in range(self.num_graphs)]

    def _one(self, label: int, rng: random.Random) -> Graph:
        base = nx.barabasi_albert_graph(self.base_nodes, self.attach_edges, seed=rng)
        labels = [rng.randint(1, self.base_labels) for _ in range(self.base_nodes)]
        motif = motif_graph(self.motifs[label])
        offset = self.base_nodes
        edges = list(base.edges()) + [(u + offset, v + offset) for u, v in motif.edges()]
        edges.append((rng.randrange(self.base_nodes), ANCHOR + offset))
        labels += [MOTIF_LABEL] * motif.number_of_nodes()
        present = {frozenset(e) for e in edges}
        n = len(labels)
        for _ in range(self.noise_edges):
            u, v = rng.sample(range(n), 2)
            if frozenset((u, v)) not in present:  # a simple graph: no repeated edge
                present.add(frozenset((u, v)))
                edges.append((u, v))
        index, edge_labels = undirected(edges, [0] * len(edges))
        node_labels = torch.tensor(labels, dtype=torch.long) if self.node_labelled else None
        return Graph(node_labels, index, edge_labels, label, roots=None if self.node_labelled else torch.ones(n, dtype=torch.bool))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        if self.label_noise > 0:  # training labels only: validation and test measure the clean task
            rng = random.Random(self.seed + 1)
            train = self.splits["train"]
            for i in rng.sample(range(len(train)), round(self.label_noise * len(train))):
                g = train[i]
                other = rng.choice([c for c in range(self.num_classes) if c != g.label])
                train[i] = Graph(g.node_labels, g.edge_index, g.edge_labels, other, g.roots)
