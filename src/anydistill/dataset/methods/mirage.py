"""Mirage: model-agnostic graph distillation by mining computation trees (Gupta et al., ICLR 2024;
frigategnn/Mirage, ``NCI1/graph-nci-finalize-reduce-curr.py``).

A GNN with L layers sees each node only through its L-hop computation tree, and pools node
embeddings into a graph embedding. So a graph class is summarised by the sets of trees that occur
together in many of its graphs and rarely in other classes'. Mirage labels every tree canonically,
mines the frequent tree sets per class with FP-growth, keeps those not frequent elsewhere, and
writes each as one small training graph (its trees side by side, pooled at the roots). No GNN is
trained to distill; any GNN architecture can then train on the result
(`anydistill.dataset.graph.mining` has the steps).

The support threshold is absolute, per class. The official code starts NCI1 at 460/590 and lowers
both by 20 twice before mining, keeping the threshold whose set scores best on validation; here
``support`` is the first threshold tried and ``support_steps`` thresholds ``support - k * support_step``
are mined in one run (give 440/570 to mine the official NCI1 candidates); the evaluator picks one
on the validation split.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, ClassVar

from torch.utils.data import DataLoader

from anydistill.core.errors import TrainingError
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import OptimizerSpec
from anydistill.core.teacher import Teacher
from anydistill.dataset.graph.fpgrowth import TooManyItemsets
from anydistill.dataset.graph.graphset import GraphSet
from anydistill.dataset.graph.mining import mine

# Mirage trains no parameters: it fills buffers in one step, so it has no optimizer to configure.
warnings.filterwarnings("ignore", message=".*configure_optimizers` returned `None`.*")

GRAPH_SOURCES = "motif-graphs, nci-alerts or wehi-pains"


class Mirage(DistillationMethod):
    """Frequent computation-tree sets per class as distilled graphs (defaults: the paper's NCI1 setting).

    Args:
        student: the `GraphSet` to fill (``student: {name: graph-set}``).
        support: the absolute support threshold of the first candidate, one per class or one for all.
        hops: L, the depth of the computation trees (= the evaluating GNNs' layers; 2 for NCI1, 3 for molbace).
        support_step: how much each further candidate lowers every class's threshold (20).
        support_steps: the number of candidate thresholds mined (2).
        min_tree_count: a tree label is kept for a class when it occurs at least this often in the
            class's graphs (2: "more than once").
        max_itemsets: stop with one error line when a class has more frequent itemsets than this
            (their number grows as 2^k when the support is low).
    """

    family: ClassVar[str] = "dataset"
    paper: ClassVar[str] = "Gupta et al., Mirage: Model-Agnostic Graph Distillation for Graph Classification, ICLR 2024"
    needs_teacher: ClassVar[bool] = False
    own_loop: ClassVar[bool] = True
    evaluator: ClassVar[str] = "anydistill.dataset.graph.evaluate:GraphEvaluator"

    def __init__(
        self,
        student: GraphSet,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        support: int | list[int],
        hops: int = 2,
        support_step: int = 20,
        support_steps: int = 2,
        min_tree_count: int = 2,
        max_itemsets: int = 100_000,
    ):
        super().__init__(student, teacher, optimizer)
        if not isinstance(student, GraphSet):
            raise TypeError(f"Mirage fills a graph set: use `student: {{name: graph-set}}`, not {type(student).__name__}.")
        supports = [support] if isinstance(support, int) else list(support)
        problems = [f"{name} must be >= {low}, got {value}." for name, value, low in
                    (("hops", hops, 1), ("support_steps", support_steps, 1), ("support_step", support_step, 0),
                     ("min_tree_count", min_tree_count, 1), ("max_itemsets", max_itemsets, 1)) if value < low]
        if not supports or min(supports) - support_step * (support_steps - 1) < 1:
            problems.append(f"support={support} lowered {support_steps - 1} times by {support_step} must stay >= 1; "
                            "raise support or lower support_steps.")
        if problems:
            raise ValueError("\n".join(problems))
        self.automatic_optimization = False
        self.supports, self.hops = supports, hops
        self.support_step, self.support_steps = support_step, support_steps
        self.min_tree_count, self.max_itemsets = min_tree_count, max_itemsets
        self.graphs: list[Any] = []
        self.stats: dict[str, Any] = {}

    def class_supports(self, num_classes: int) -> list[int]:
        """The first candidate's threshold of each class."""
        return self.supports * num_classes if len(self.supports) == 1 else self.supports

    def candidates(self, num_classes: int) -> list[list[int]]:
        """Per candidate, the threshold of each class (each candidate ``support_step`` lower)."""
        return [[s - k * self.support_step for s in self.class_supports(num_classes)] for k in range(self.support_steps)]

    def data_problems(self, datamodule: Any, teacher: Any) -> list[str]:
        """Graph data with node labels, one threshold per class (or one), none above its class's size."""
        if not hasattr(datamodule, "num_edge_labels"):
            return [f"mirage distills graphs; {type(datamodule).__name__} is not a graph source: use {GRAPH_SOURCES}."]
        train = datamodule.split("train")
        if not datamodule.node_labelled or any(g.node_labels is None for g in train):
            return [("mirage mines labelled computation trees, but these graphs have no node labels: "
                     "give every node an integer label (motif-graphs: node_labels: true).")]
        k = datamodule.num_classes
        if len(self.supports) not in (1, k):
            return [f"support has {len(self.supports)} thresholds for {k} classes: give one per class or one for all."]
        sizes = [sum(g.label == c for g in train) for c in range(k)]
        over = [f"class {c}: {s} > {n}" for c, (s, n) in enumerate(zip(self.class_supports(k), sizes)) if s > n]
        if over:
            return [(f"support is above the number of training graphs of a class ({', '.join(over)}), so nothing can be frequent; "
                     f"set each class's support to at most its size ({sizes}).")]
        return []

    def attach_data(self, datamodule: Any) -> None:
        """Keep the training graphs (the run's checks refused graphs without node labels)."""
        self.graphs = datamodule.split("train")
        self.num_classes = datamodule.num_classes

    def train_dataloader(self) -> DataLoader:
        return DataLoader(range(1), batch_size=None)  # one step: the mining

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if not self.student.filled:  # a resumed run restores the mined set from its checkpoint
            started = time.perf_counter()
            try:
                mined, found = mine(self.graphs, self.num_classes, self.hops, self.candidates(self.num_classes),
                                    min_tree_count=self.min_tree_count, max_itemsets=self.max_itemsets)
            except TooManyItemsets as error:
                raise TrainingError(f"mirage: {error}; raise support (or max_itemsets).") from None
            self.student.fill([(c.supports, [(g, p[1]) for g, p in zip(c.graphs, c.patterns)]) for c in found])
            self.stats = {"mining_s": round(time.perf_counter() - started, 4), "trees_labelled": mined.nodes,
                          "kept_trees": [len(k) for k in mined.kept], "transactions": [len(t) for t in mined.transactions],
                          "patterns": [len(c.patterns) for c in found]}
        self.trainer.should_stop = True  # nothing more to do, whatever max_epochs says

    def summary(self) -> dict[str, Any]:
        """Mining time and sizes (the distilled set's own figures come from the evaluator)."""
        return {**self.stats, "hops": self.hops}
