"""Train one GNN on a set of graphs and keep its best-validation epoch (the Mirage protocol).

Adam (lr 1e-3), cross-entropy, shuffled minibatches, ``epochs`` passes; after every epoch the
model is scored on the validation batch, and the weights of the best epoch (ties: the later one,
as the official ``best_val_acc <= val_acc``) are restored at the end. The test split is not read
here: the caller scores the returned model once.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor

from anydistill.data.graphs import Graph, GraphBatch, collate
from anydistill.dataset.graph.gnn import GraphClassifier


@dataclass(frozen=True)
class GNNProtocol:
    """How every GNN of a run is trained (one protocol for distilled sets and baselines alike)."""

    hidden: int = 128
    layers: int = 2
    dropout: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 0.0  # the official 1e2 looks like a typo (it would zero every weight)
    epochs: int = 300
    batch_size: int = 500


def scores(logits: Tensor, y: Tensor) -> dict[str, float]:
    """``roc_auc`` (binary: of class 1; more classes: macro one-vs-rest) and ``accuracy`` of ``logits [B, K]``."""
    probabilities = logits.float().softmax(1).numpy()
    labels = y.numpy()
    accuracy = float((probabilities.argmax(1) == labels).mean())
    if len(np.unique(labels)) < 2:
        return {"roc_auc": float("nan"), "accuracy": accuracy}
    if probabilities.shape[1] == 2:
        auc = roc_auc_score(labels, probabilities[:, 1])
    else:
        auc = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=list(range(probabilities.shape[1])))
    return {"roc_auc": float(auc), "accuracy": accuracy}


@torch.no_grad()
def predict(model: GraphClassifier, batch: GraphBatch) -> Tensor:
    """Logits ``[B, K]`` in eval mode."""
    model.eval()
    return model(batch)


def fit_gnn(kind: str, graphs: list[Graph], val: GraphBatch, protocol: GNNProtocol, seed: int, *, num_node_labels: int,
            num_edge_labels: int, num_classes: int) -> tuple[GraphClassifier, float, float]:
    """Train a ``kind`` GNN on ``graphs`` from ``seed``.

    Returns:
        (the model at its best validation epoch, that epoch's validation ROC-AUC, training seconds).
    """
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GraphClassifier(kind, num_node_labels, num_edge_labels, num_classes, hidden=protocol.hidden,
                                layers=protocol.layers, dropout=protocol.dropout)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
        best, best_state = -float("inf"), copy.deepcopy(model.state_dict())
        for _ in range(protocol.epochs):
            model.train()
            order = torch.randperm(len(graphs), generator=generator).tolist()
            for start in range(0, len(order), protocol.batch_size):
                batch = collate([graphs[i] for i in order[start : start + protocol.batch_size]], num_node_labels)
                loss = F.cross_entropy(model(batch), batch.y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            score = scores(predict(model, val), val.y)["roc_auc"]
            if score >= best:  # a NaN score (one class in val) never wins
                best, best_state = score, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
    return model.eval(), best, time.perf_counter() - started
