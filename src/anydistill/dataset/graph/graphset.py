r"""`GraphSet`: the "student" of graph distillation, a small set of labelled graphs.

Mirage fills it with one distilled set per candidate support threshold; the evaluator picks one on
validation. Everything is stored in flat buffers (so a Lightning checkpoint holds it):

* ``node_labels [N]``, ``roots [N]`` bool (the pooled nodes), ``node_ptr [G + 1]``: graph g owns
  nodes ``node_ptr[g] : node_ptr[g + 1]``;
* ``edge_index [2, E]`` (node ids local to their graph), ``edge_labels [E]``, ``edge_ptr [G + 1]``;
* ``labels [G]`` the classes, ``candidate [G]`` the candidate each graph belongs to;
* ``supports [K, C]`` each candidate's per-class thresholds;
* ``items [P]``, ``item_ptr [G + 1]``: the tree labels (itemset) each graph was built from.

The buffers change size when filled; loading a state dict resizes them first.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from anydistill import __version__
from anydistill.data.graphs import Graph

BUFFERS = ("node_labels", "roots", "node_ptr", "edge_index", "edge_labels", "edge_ptr", "labels", "candidate", "supports",
           "items", "item_ptr")


class GraphSet(nn.Module):
    """Distilled graphs of ``num_classes`` classes with ``num_node_labels`` node labels, empty until filled.

    Args:
        num_classes: K, the classes of the source data.
        num_node_labels: F, the node-label count of the source data (the one-hot width).
    """

    def __init__(self, num_classes: int, num_node_labels: int):
        super().__init__()
        self.num_classes, self.num_node_labels = int(num_classes), int(num_node_labels)
        empty = torch.zeros(0, dtype=torch.long)
        for name in BUFFERS:
            self.register_buffer(name, empty.clone())
        self.edge_index = torch.zeros(2, 0, dtype=torch.long)
        self.roots = torch.zeros(0, dtype=torch.bool)
        self.node_ptr, self.edge_ptr, self.item_ptr = (torch.zeros(1, dtype=torch.long) for _ in range(3))
        self.supports = torch.zeros(0, self.num_classes, dtype=torch.long)

    @property
    def num_candidates(self) -> int:
        return len(self.supports)

    @property
    def filled(self) -> bool:
        return self.num_candidates > 0

    def fill(self, candidates: list[tuple[list[int], list[tuple[Graph, frozenset[int]]]]]) -> None:
        """Store the candidates: per candidate its per-class supports and its (graph, itemset) pairs."""
        graphs = [(k, g, items) for k, (_, pairs) in enumerate(candidates) for g, items in pairs]
        cat = lambda parts, dtype=torch.long: torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
        ptr = lambda sizes: torch.tensor([0, *sizes], dtype=torch.long).cumsum(0)
        self.node_labels = cat([g.node_labels for _, g, _ in graphs])
        self.roots = cat([g.roots for _, g, _ in graphs], torch.bool)
        self.node_ptr = ptr([g.num_nodes for _, g, _ in graphs])
        self.edge_index = torch.cat([g.edge_index for _, g, _ in graphs], dim=1) if graphs else torch.zeros(2, 0, dtype=torch.long)
        self.edge_labels = cat([g.edge_labels for _, g, _ in graphs])
        self.edge_ptr = ptr([g.edge_index.shape[1] for _, g, _ in graphs])
        self.labels = torch.tensor([g.label for _, g, _ in graphs], dtype=torch.long)
        self.candidate = torch.tensor([k for k, _, _ in graphs], dtype=torch.long)
        self.supports = torch.tensor([s for s, _ in candidates], dtype=torch.long).reshape(len(candidates), self.num_classes)
        self.items = cat([torch.tensor(sorted(items), dtype=torch.long) for _, _, items in graphs])
        self.item_ptr = ptr([len(items) for _, _, items in graphs])

    def graphs(self, candidate: int) -> list[Graph]:
        """The distilled graphs of candidate ``candidate`` (roots marked)."""
        out = []
        for g in (self.candidate == candidate).nonzero().flatten().tolist():
            n0, n1, e0, e1 = self.node_ptr[g], self.node_ptr[g + 1], self.edge_ptr[g], self.edge_ptr[g + 1]
            out.append(Graph(self.node_labels[n0:n1], self.edge_index[:, e0:e1], self.edge_labels[e0:e1], int(self.labels[g]),
                             self.roots[n0:n1]))
        return out

    def patterns(self, candidate: int) -> list[tuple[int, frozenset[int]]]:
        """``(class, itemset of tree labels)`` of each graph of candidate ``candidate``."""
        return [(int(self.labels[g]), frozenset(self.items[self.item_ptr[g] : self.item_ptr[g + 1]].tolist()))
                for g in (self.candidate == candidate).nonzero().flatten().tolist()]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in BUFFERS:  # a filled set has other sizes than an empty one
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, graphs={len(self.labels)}, candidates={self.num_candidates}"

    def save(self, directory: Path, **manifest: Any) -> Path:
        """Write ``graphset.safetensors`` and ``manifest.json`` (``manifest`` entries added) under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in BUFFERS}
        handle, temporary = tempfile.mkstemp(prefix=".graphset.", dir=directory)
        os.close(handle)
        save_file(tensors, temporary)
        os.replace(temporary, directory / "graphset.safetensors")
        record = {"format": "anydistill graph set", "anydistill": __version__, "num_classes": self.num_classes,
                  "num_node_labels": self.num_node_labels, "graphs": len(self.labels), "supports": self.supports.tolist(), **manifest}
        (directory / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
        return directory


def graph_set(input_shape: tuple[int, ...], num_classes: int) -> GraphSet:
    """The builder a recipe names ``student: {name: graph-set}``: an empty set for graph data
    (``input_shape`` is ``(node labels,)``)."""
    return GraphSet(num_classes, input_shape[0])
