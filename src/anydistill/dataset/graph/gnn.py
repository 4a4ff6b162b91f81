r"""GCN, GIN and GAT graph classifiers in plain torch (``index_add_``; no torch-geometric).

Edge labels enter every layer through a learned embedding ``e_ij`` (the OGB molecule layers the
official Mirage code uses). For a layer input ``h [N, D]`` and directed edges ``j -> i``:

* GCN (Kipf & Welling; OGB's ``GCNConv``): ``d_i = 1 + in-degree(i)``,
  ``h'_i = sum_j relu(W h_j + e_ij) / sqrt(d_i d_j) + relu(W h_i + r) / d_i``.
* GIN (Xu et al.; GINE): ``h'_i = MLP(h_i + sum_j relu(h_j + e_ij))`` (eps = 0, MLP = Linear-ReLU-Linear).
* GAT (Velickovic et al.; one head, edge-aware scores as torch-geometric's ``edge_dim``):
  ``a_ij = softmax_j(LeakyReLU_0.2(u . W h_i + v . W h_j + w . e_ij))`` over j in N(i) and i itself
  (self loop with a learned edge embedding), ``h'_i = sum_j a_ij W h_j + b``.

`GraphClassifier`: one-hot node labels -> Linear -> L layers (ReLU between, dropout after each) ->
sum over the pooled nodes of each graph -> dropout -> Linear to the class logits. A distilled graph
pools only its tree roots; a real graph all its nodes (`GraphBatch.pool`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.data.graphs import GraphBatch

Kind = Literal["gcn", "gin", "gat"]
KINDS = ("gcn", "gin", "gat")


def scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """``out[i] = sum of values[k] with index[k] == i``: ``[E, ...] -> [size, ...]``."""
    return values.new_zeros(size, *values.shape[1:]).index_add_(0, index, values)


class GCNLayer(nn.Module):
    """Symmetric-normalised graph convolution with edge-label embeddings: ``[N, D] -> [N, D]``."""

    def __init__(self, dim: int, num_edge_labels: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.edge = nn.Embedding(num_edge_labels, dim)
        self.root = nn.Parameter(torch.zeros(dim))

    def forward(self, h: Tensor, edge_index: Tensor, edge_labels: Tensor) -> Tensor:
        src, dst = edge_index
        wh = self.linear(h)
        degree = scatter_sum(torch.ones_like(dst, dtype=h.dtype), dst, len(h)) + 1
        norm = (degree[src] * degree[dst]).rsqrt().unsqueeze(1)
        messages = norm * F.relu(wh[src] + self.edge(edge_labels))
        return scatter_sum(messages, dst, len(h)) + F.relu(wh + self.root) / degree.unsqueeze(1)


class GINLayer(nn.Module):
    """Graph isomorphism layer with edge-label embeddings (GINE, eps 0): ``[N, D] -> [N, D]``."""

    def __init__(self, dim: int, num_edge_labels: int):
        super().__init__()
        self.edge = nn.Embedding(num_edge_labels, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, h: Tensor, edge_index: Tensor, edge_labels: Tensor) -> Tensor:
        src, dst = edge_index
        return self.mlp(h + scatter_sum(F.relu(h[src] + self.edge(edge_labels)), dst, len(h)))


class GATLayer(nn.Module):
    """Single-head graph attention with edge-aware scores and self loops: ``[N, D] -> [N, D]``."""

    def __init__(self, dim: int, num_edge_labels: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.edge = nn.Embedding(num_edge_labels + 1, dim)  # the last row embeds the self loop
        self.att_dst, self.att_src, self.att_edge = (nn.Parameter(torch.randn(dim) / dim**0.5) for _ in range(3))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.self_loop = num_edge_labels

    def forward(self, h: Tensor, edge_index: Tensor, edge_labels: Tensor) -> Tensor:
        n = len(h)
        loops = torch.arange(n, device=h.device)
        src = torch.cat([edge_index[0], loops])
        dst = torch.cat([edge_index[1], loops])
        kinds = torch.cat([edge_labels, torch.full((n,), self.self_loop, device=h.device, dtype=edge_labels.dtype)])
        wh = self.linear(h)
        score = F.leaky_relu(wh[dst] @ self.att_dst + wh[src] @ self.att_src + self.edge(kinds) @ self.att_edge, 0.2)
        # Softmax over each node's incoming edges: subtract the per-node max for stability.
        top = score.new_full((n,), -torch.inf).scatter_reduce(0, dst, score, "amax")
        weight = (score - top[dst]).exp()
        alpha = weight / scatter_sum(weight, dst, n)[dst]
        return scatter_sum(alpha.unsqueeze(1) * wh[src], dst, n) + self.bias


LAYERS = {"gcn": GCNLayer, "gin": GINLayer, "gat": GATLayer}


class GraphClassifier(nn.Module):
    """An L-layer GNN with sum pooling over each graph's pooled nodes.

    Args:
        kind: ``"gcn"``, ``"gin"`` or ``"gat"``.
        num_node_labels: F, the one-hot input width.
        num_edge_labels: the edge-label count (embedded per layer).
        num_classes: K.
        hidden: D (128 in the paper).
        layers: L (= the computation trees' depth).
        dropout: after every layer and before the classifier (0.5).
    """

    def __init__(self, kind: Kind, num_node_labels: int, num_edge_labels: int, num_classes: int, *, hidden: int = 128,
                 layers: int = 2, dropout: float = 0.5):
        super().__init__()
        if kind not in LAYERS:
            raise ValueError(f"Unknown GNN '{kind}': use one of {', '.join(KINDS)}.")
        self.embed = nn.Linear(num_node_labels, hidden)
        self.layers = nn.ModuleList(LAYERS[kind](hidden, max(num_edge_labels, 1)) for _ in range(layers))
        self.head = nn.Linear(hidden, num_classes)
        self.dropout = dropout

    def forward(self, batch: GraphBatch) -> Tensor:
        """``batch`` (N nodes, B graphs) -> logits ``[B, K]``."""
        h = self.embed(batch.x)
        for position, layer in enumerate(self.layers):
            h = layer(h, batch.edge_index, batch.edge_labels)
            if position < len(self.layers) - 1:
                h = F.relu(h)
            h = F.dropout(h, self.dropout, self.training)
        pooled = scatter_sum(h[batch.pool], batch.batch[batch.pool], batch.num_graphs)
        return self.head(F.dropout(pooled, self.dropout, self.training))
