"""`GraphEvaluator`: scores distilled graph sets and their baselines with fresh GCN, GIN and GAT.

Every set (a distilled candidate, a baseline subset, the full training split) is scored the same
way: for each GNN kind and each evaluation seed 1 .. ``seeds``, a fresh model is trained on it
(`train.fit_gnn`: best-validation epoch) and scored once on ``score_split``; every seed is
reported (the official script keeps the best 5 of 10 by validation; we do not).

A `GraphSet` may hold several candidates (support thresholds): the one with the best mean
validation ROC-AUC over kinds and seeds is scored, one set for all three kinds. Its baselines at
the same budget (random graphs with as many nodes, random graphs as many, k-center on WL
histograms) are scored in the same call and become rows of their own in `summarise`
(``random-nodes@<label>``...), which also adds the mining cost as a ratio to one full-data GNN
training measured in the same run.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from anydistill.core.errors import TrainingError
from anydistill.core.evaluator import Evaluator
from anydistill.core.teacher import Teacher
from anydistill.data.graphs import Graph, graph_bytes
from anydistill.dataset.graph.baselines import (
    k_center_by_class,
    random_by_count,
    random_by_nodes,
    wl_histograms,
)
from anydistill.dataset.graph.gnn import KINDS, Kind
from anydistill.dataset.graph.graphset import GraphSet
from anydistill.dataset.graph.train import GNNProtocol, fit_gnn, predict, scores

GraphBaseline = Literal["random-nodes", "random-graphs", "k-center", "full-data"]
MATCHED = ("random-nodes", "random-graphs", "k-center")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return (statistics.fmean(values), statistics.pstdev(values)) if values else (float("nan"), float("nan"))


class GraphEvaluator(Evaluator):
    """GNN evaluation of graph sets (Mirage's protocol; see the module docstring).

    Args:
        data: the set-up graph data module (``split`` returns lists of `Graph`).
        models: the GNN kinds, each scored separately.
        layers, hidden, dropout, lr, weight_decay, epochs, batch_size: the `GNNProtocol`
            (layers = the miner's ``hops``: the trees are what an L-layer GNN sees).
        seeds: evaluation seeds per kind (10 in the paper), all reported.
        baselines: which baselines to measure (the matched ones at each distilled set's budget).
        score_split: "test" to report, "val" to choose settings without the test split.
    """

    headline = ("roc_auc", "roc_auc_gcn", "roc_auc_gin", "roc_auc_gat", "graphs", "nodes", "compression", "support",
                "mining_over_gnn_training", "train_time_s")

    def __init__(
        self,
        data: Any,
        student_spec: dict[str, Any] | None = None,
        data_name: str | None = None,
        *,
        models: list[Kind] = KINDS,
        layers: int = 2,
        hidden: int = 128,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        epochs: int = 300,
        batch_size: int = 500,
        seeds: int = 10,
        baselines: list[GraphBaseline] = ("random-nodes", "random-graphs", "k-center", "full-data"),
        score_split: Literal["test", "val"] = "test",
    ):
        super().__init__(data, student_spec, data_name)
        if not hasattr(data, "num_edge_labels"):
            raise ValueError(f"The graph evaluator scores graph sets; '{data_name}' is not a graph source (use motif-graphs or nci-alerts).")
        self.kinds = list(dict.fromkeys(models))
        self.protocol = GNNProtocol(hidden, layers, dropout, lr, weight_decay, epochs, batch_size)
        self.seeds = list(range(1, seeds + 1))  # the official seeds 1..10
        self.baseline_names = list(dict.fromkeys(baselines))
        self.score_split = score_split
        self.train = data.split("train")
        self.val = data.batch("val")
        self.scored = data.batch(score_split)
        self.shape = {"num_node_labels": data.num_node_labels, "num_edge_labels": data.num_edge_labels, "num_classes": data.num_classes}
        self.full_bytes = graph_bytes(self.train, data.num_node_labels, data.num_edge_labels)
        self._wl: torch.Tensor | None = None

    @classmethod
    def settings_problems(cls, settings: dict[str, Any]) -> list[str]:
        problems = [f"{name} must be >= 1, got {settings[name]}." for name in ("layers", "hidden", "epochs", "batch_size", "seeds")
                    if name in settings and settings[name] < 1]
        if not 0 <= settings.get("dropout", 0.5) < 1:
            problems.append(f"dropout must be in [0, 1), got {settings['dropout']}.")
        if settings.get("lr", 1e-3) <= 0:
            problems.append(f"lr must be > 0, got {settings['lr']}.")
        if not settings.get("models", KINDS):
            problems.append(f"models must name at least one GNN of {', '.join(KINDS)}.")
        return problems

    # ------------------------------------------------------------------ scoring

    def _train(self, graphs: list[Graph], subsets: list[list[Graph]] | None = None) -> dict[str, list[tuple[nn.Module, float, float]]]:
        """Per kind, ``(model, best val ROC-AUC, training seconds)`` for each seed (``subsets[i]``: seed i's own graphs)."""
        return {kind: [fit_gnn(kind, subsets[i] if subsets else graphs, self.val, self.protocol, seed, **self.shape)
                       for i, seed in enumerate(self.seeds)] for kind in self.kinds}

    def _row(self, trained: dict[str, list[tuple[nn.Module, float, float]]], graphs: list[Graph]) -> dict[str, Any]:
        """Score every trained model once on the score split; sizes of ``graphs`` (seed 1's set for a random baseline)."""
        row: dict[str, Any] = {}
        means = []
        for kind, runs in trained.items():
            found = [scores(predict(model, self.scored), self.scored.y) for model, _, _ in runs]
            for metric in ("roc_auc", "accuracy"):
                values = [f[metric] for f in found]
                row[f"{metric}_{kind}"], row[f"{metric}_{kind}_std"] = _mean_std(values)
                row[f"{metric}_{kind}_seeds"] = values
            row[f"val_roc_auc_{kind}"] = _mean_std([v for _, v, _ in runs])[0]
            means.append(row[f"roc_auc_{kind}"])
        seconds = [s for runs in trained.values() for _, _, s in runs]
        stored = graph_bytes(graphs, self.shape["num_node_labels"], self.shape["num_edge_labels"])
        return {"roc_auc": statistics.fmean(means), **row, "graphs": len(graphs), "nodes": sum(g.num_nodes for g in graphs),
                "edges": sum(g.edge_index.shape[1] for g in graphs), "bytes": stored, "compression": stored / self.full_bytes,
                "eval_seeds": len(self.seeds), "gnn_train_s": round(statistics.fmean(seconds), 3)}

    def score(self, graphs: list[Graph]) -> dict[str, Any]:
        """The row of ``graphs`` (every kind, every seed)."""
        return self._row(self._train(graphs), graphs)

    def evaluate(self, model: nn.Module, teacher: Teacher | None, method: str) -> dict[str, Any]:
        graphset: GraphSet = model
        best, best_val, tried = None, -float("inf"), []
        for k in range(graphset.num_candidates):
            graphs = graphset.graphs(k)
            trained = self._train(graphs) if graphs else None
            val = statistics.fmean(v for runs in trained.values() for _, v, _ in runs) if trained else float("nan")
            tried.append({"support": graphset.supports[k].tolist(), "graphs": len(graphs), "val_roc_auc": val})
            if val > best_val:  # the first of equals: the higher threshold, the smaller set
                best, best_val = (k, graphs, trained), val
        if best is None:
            raise TrainingError(f"{method} distilled no graph at any support ({[t['support'] for t in tried]}): lower the support.")
        k, graphs, trained = best
        row = {**self._row(trained, graphs), "support": graphset.supports[k].tolist(), "supports_tried": tried}
        counts = [sum(g.label == c for g in graphs) for c in range(self.shape["num_classes"])]
        nodes = [sum(g.num_nodes for g in graphs if g.label == c) for c in range(self.shape["num_classes"])]
        row["matched"] = {name: self._matched(name, counts, nodes) for name in MATCHED if name in self.baseline_names}
        return row

    def _matched(self, name: str, counts: list[int], nodes: list[int]) -> dict[str, Any]:
        """A baseline at the distilled set's budget; the random ones draw a new subset per seed."""
        if name == "k-center":
            if self._wl is None:
                self._wl = wl_histograms(self.train, self.protocol.layers)
            picked = k_center_by_class(self._wl, self.train, counts, torch.Generator().manual_seed(0))
            return {**self.score([self.train[i] for i in picked]), "method": name}
        draw = random_by_nodes if name == "random-nodes" else random_by_count
        budget = nodes if name == "random-nodes" else counts
        subsets = [[self.train[i] for i in draw(self.train, budget, torch.Generator().manual_seed(seed))] for seed in self.seeds]
        return {**self._row(self._train([], subsets), subsets[0]), "method": name, "subset_nodes": [sum(g.num_nodes for g in s) for s in subsets]}

    def baselines(self, skip: set[str]) -> dict[str, dict[str, Any]]:
        if "full-data" in self.baseline_names and "full-data" not in skip:
            return {"full-data": {**self.score(self.train), "method": "full-data"}}
        return {}

    def export(self, model: nn.Module, spec: dict[str, Any], directory: Path, method: str) -> Path:
        return model.save(directory, source_fingerprint=self.data.fingerprint("train"), method=method, source_data=self.data_name)

    # ------------------------------------------------------------------ summary

    def summarise(self, metrics: dict[str, dict[str, Any]]) -> None:
        """Lift each set's matched baselines into rows; add its gap to full data and its mining cost
        over one full-data GNN training (``gnn_train_s`` of the full-data row, same run)."""
        full = metrics.get("full-data")
        for label, row in list(metrics.items()):
            for name, sub in row.pop("matched", {}).items():
                metrics[f"{name}@{label}"] = {**sub, "role": "baseline"}
            if full and label != "full-data" and "mining_s" in row:
                row["mining_over_gnn_training"] = row["mining_s"] / full["gnn_train_s"]
                for kind in self.kinds:
                    if f"roc_auc_{kind}" in row and f"roc_auc_{kind}" in full:
                        row[f"gap_to_full_{kind}"] = full[f"roc_auc_{kind}"] - row[f"roc_auc_{kind}"]

    def card(self) -> dict[str, Any]:
        p = self.protocol
        return {
            "models": self.kinds, "layers": p.layers, "hidden": p.hidden, "dropout": p.dropout, "pooling": "sum (roots only for distilled graphs)",
            "optimizer": f"Adam lr {p.lr} weight_decay {p.weight_decay}", "epochs": p.epochs, "batch_size": p.batch_size,
            "selection": "best validation ROC-AUC epoch; the candidate support with the best mean validation ROC-AUC",
            "eval_seeds": self.seeds, "train_graphs": len(self.train), "score_split": self.score_split,
            "scored_graphs": self.scored.num_graphs, "full_bytes": self.full_bytes,
        }

