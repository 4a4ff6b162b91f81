"""Computation trees of a graph's nodes and their canonical labels (Mirage, step 1 and 2).

The L-hop computation tree of a node v is the breadth-first unrolling of its neighbourhood: v is
the root, its children are all its neighbours (the node it came from included, as message
passing sees it), their children all of theirs, down to depth L. An L-layer message-passing GNN
computes v's embedding from exactly this tree, so two nodes with isomorphic trees get the same
embedding.

Canonical label (the official ``get_can_lab_tree``, with a hash instead of digit strings)::

    label_0(v) = hash(node_label(v))
    label_k(v) = hash(node_label(v), sorted((label_{k-1}(u), edge_label(v, u)) for u in N(v)))

``label_L(v)`` labels v's depth-L tree: sorting the children makes it independent of node order,
and two trees get equal labels iff they are isomorphic as rooted, labelled trees (up to a 63-bit
BLAKE2b collision). It is computed for all nodes at once, level by level, in O(L * E log d)
rather than by unrolling each tree (whose size grows as d^L).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from anydistill.data.graphs import Graph

_MASK = (1 << 63) - 1  # labels fit in an int64 tensor


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & _MASK


def adjacency(graph: Graph) -> list[list[tuple[int, int]]]:
    """``(neighbour, edge label)`` pairs of every node, following the stored edge directions."""
    neighbours: list[list[tuple[int, int]]] = [[] for _ in range(graph.num_nodes)]
    for (u, v), e in zip(graph.edge_index.t().tolist(), graph.edge_labels.tolist()):
        neighbours[u].append((v, e))
    return neighbours


def require_node_labels(graph: Graph, where: str = "Mirage") -> list[int]:
    """The graph's node labels as a list; a graph without them is refused (computation trees are labelled)."""
    if graph.node_labels is None:
        raise ValueError(f"{where} mines labelled computation trees, but these graphs have no node labels: "
                         "give every node an integer label (e.g. motif-graphs with node_labels: true).")
    return graph.node_labels.tolist()


def tree_labels(graph: Graph, depth: int, neighbours: list[list[tuple[int, int]]] | None = None) -> list[list[int]]:
    """Canonical labels of every node's computation trees of depth 0 .. ``depth``.

    Returns:
        ``depth + 1`` lists of ``n`` ints: entry ``[k][v]`` labels v's depth-k tree (63-bit, >= 0).
    """
    node_labels = require_node_labels(graph)
    neighbours = adjacency(graph) if neighbours is None else neighbours
    levels = [[_hash(f"{x}") for x in node_labels]]
    for _ in range(depth):
        below = levels[-1]
        levels.append([_hash(f"{x}|{sorted((below[u], e) for u, e in neighbours[v])}") for v, x in enumerate(node_labels)])
    return levels


@dataclass
class ComputationTree:
    """One unrolled computation tree, in breadth-first order (node 0 is the root).

    Attributes:
        node_labels: ``[k]`` the label of each tree node (copied from the graph node it unrolls).
        parent: ``[k]`` the parent's position, -1 for the root.
        edge_labels: ``[k]`` the label of the edge to the parent, -1 for the root.
        depth: the unrolling depth L.
    """

    node_labels: list[int]
    parent: list[int]
    edge_labels: list[int]
    depth: int

    def as_graph(self, label: int) -> Graph:
        """The tree as a `Graph` of class ``label`` with edges child -> parent (messages flow to the
        root, as in the official ``MPTree.reverse()``) and only the root pooled."""
        children = range(1, len(self.parent))
        edge_index = torch.tensor([list(children), [self.parent[c] for c in children]], dtype=torch.long).reshape(2, -1)
        roots = torch.zeros(len(self.parent), dtype=torch.bool)
        roots[0] = True
        return Graph(torch.tensor(self.node_labels, dtype=torch.long), edge_index,
                     torch.tensor(self.edge_labels[1:], dtype=torch.long), label, roots)


def computation_tree(graph: Graph, root: int, depth: int, neighbours: list[list[tuple[int, int]]] | None = None) -> ComputationTree:
    """The depth-``depth`` computation tree of ``root``: BFS that re-enters visited nodes (unrolled)."""
    node_labels = require_node_labels(graph)
    neighbours = adjacency(graph) if neighbours is None else neighbours
    tree = ComputationTree([node_labels[root]], [-1], [-1], depth)
    frontier = [(root, 0)]  # (graph node, tree position)
    for _ in range(depth):
        grown = []
        for v, position in frontier:
            for u, e in neighbours[v]:
                tree.node_labels.append(node_labels[u])
                tree.parent.append(position)
                tree.edge_labels.append(e)
                grown.append((u, len(tree.parent) - 1))
        frontier = grown
    return tree


def disjoint_union(trees: list[ComputationTree], label: int) -> Graph:
    """One `Graph` of class ``label`` made of ``trees`` side by side (Mirage's distilled graph);
    only the roots are pooled."""
    parts = [t.as_graph(label) for t in trees]
    offsets = torch.tensor([0] + [g.num_nodes for g in parts[:-1]]).cumsum(0).tolist()
    return Graph(
        torch.cat([g.node_labels for g in parts]),
        torch.cat([g.edge_index + o for g, o in zip(parts, offsets)], dim=1),
        torch.cat([g.edge_labels for g in parts]),
        label,
        torch.cat([g.roots for g in parts]),
    )
