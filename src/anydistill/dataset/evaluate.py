"""The dataset family's evaluator: train fresh ConvNets on a set, test them on the real test split.

Every row of a dataset-distillation run comes from `SynsetEvaluator` with one `EvalProtocol`:
the distilled sets, and the baselines it measures itself at the same images per class (a random
real subset, herding and k-center coresets) and on the whole training split. `summarise` adds the
gap closed ``(syn - random) / (full - random)`` to every row once the baselines exist, and the
protocol card (`card`) is written beside them as ``evaluation.json``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from anydistill.core.evaluator import Evaluator
from anydistill.core.teacher import Teacher
from anydistill.dataset.convnet import convnet
from anydistill.dataset.coresets import herding, k_center, random_subset
from anydistill.dataset.protocol import EvalProtocol, evaluate_set, gap_closed, train_and_test
from anydistill.dataset.synset import SyntheticSet

Baseline = Literal["random", "herding", "k-center", "full-data"]


SCORE_SPLITS = ("test", "val")


class SynsetEvaluator(Evaluator):
    """Scores synthetic sets (and coreset baselines) with the standard protocol.

    Args:
        data: the set-up data module (its train split is the source, ``score_split`` the score).
        student_spec: the recipe's ``student`` section (``ipc`` sizes the baselines).
        epochs, lr, batch_size, dsa_strategy, dc_augment, num_models: the `EvalProtocol`
            (defaults: DSA/DM's 1000 epochs with DSA, without flip since digits are not symmetric).
        net_width, net_depth: the evaluated ConvNet (128 x 3 in every paper).
        baselines: which baselines to measure once per run.
        random_subsets: how many random subsets the random baseline averages over (each scored
            with ``num_models`` models).
        full_data_epochs: passes over the whole training split for the full-data row (the
            protocol's 1000 are meant for 10-500 images; the full set converges in far fewer).
        use_learned_lr: train with the set's learned step size when it has one (MTT evaluates so).
        score_split: the real split every set is tested on: "test" for reported numbers, "val"
            to choose a method's settings without looking at the test split.
    """

    # images: the set's size; eval_s_per_model: what training on it costs (the point of a small set).
    headline = ("accuracy", "accuracy_std", "gap_closed", "images", "eval_s_per_model", "iterations", "eval_lr", "train_time_s")

    def __init__(
        self,
        data: Any,
        student_spec: dict[str, Any] | None = None,
        data_name: str | None = None,
        *,
        epochs: int = 1000,
        lr: float = 0.01,
        batch_size: int = 256,
        dsa_strategy: str | None = "color_crop_cutout_scale_rotate",
        dc_augment: bool = False,
        num_models: int = 5,
        net_width: int = 128,
        net_depth: int = 3,
        baselines: list[Baseline] = ("random", "herding", "k-center", "full-data"),  # a tuple: an immutable default
        random_subsets: int = 3,
        full_data_epochs: int = 20,
        use_learned_lr: bool = True,
        score_split: str = "test",
    ):
        super().__init__(data, student_spec, data_name)
        self.protocol = EvalProtocol(epochs=epochs, lr=lr, batch_size=batch_size, dsa_strategy=dsa_strategy,
                                     dc_augment=dc_augment, num_models=num_models)
        self.net_width, self.net_depth = net_width, net_depth
        self.baseline_names = list(dict.fromkeys(baselines))
        self.random_subsets, self.full_data_epochs = random_subsets, full_data_epochs
        self.use_learned_lr = use_learned_lr
        self.x_train, self.y_train = data.split("train")
        self.score_split = score_split
        self.x_test, self.y_test = data.split(score_split)
        self.ipc = self.student_spec.get("ipc")
        self._feature_net: nn.Module | None = None

    @classmethod
    def settings_problems(cls, settings: dict[str, Any]) -> list[str]:
        keys = ("epochs", "lr", "batch_size", "dsa_strategy", "dc_augment", "num_models")
        try:
            EvalProtocol(**{k: settings[k] for k in keys if k in settings})
        except ValueError as error:
            return str(error).splitlines()
        problems = [f"{name} must be >= 1, got {settings[name]}." for name in ("net_width", "net_depth", "random_subsets", "full_data_epochs")
                    if name in settings and settings[name] < 1]
        if settings.get("score_split", "test") not in SCORE_SPLITS:
            problems.append(f"score_split must be one of {SCORE_SPLITS} (val to tune settings, test to report), "
                            f"got {settings['score_split']!r}.")
        return problems

    def new_model(self) -> nn.Module:
        """A freshly initialised evaluation ConvNet for the data's image shape."""
        channels, height, width = self.x_train.shape[1:]
        return convnet(channels, int(self.y_train.max()) + 1, (height, width), width=self.net_width, depth=self.net_depth)

    def score(self, x: Tensor, y: Tensor, protocol: EvalProtocol | None = None, seeds: int | list[int] | None = None) -> dict[str, Any]:
        """``accuracy`` (mean over the models), ``accuracy_std`` and the per-model ``accuracies`` of training on ``(x, y)``,
        ``images`` and ``eval_s_per_model`` (wall seconds to train and test one model on the set, this machine)."""
        started = time.perf_counter()
        mean, std, accuracies = evaluate_set(self.new_model, x, y, self.x_test, self.y_test, protocol or self.protocol, seeds)
        seconds = (time.perf_counter() - started) / max(len(accuracies), 1)
        return {"accuracy": mean, "accuracy_std": std, "accuracies": accuracies, "images": len(x), "eval_models": len(accuracies),
                "eval_s_per_model": round(seconds, 3)}

    def evaluate(self, model: nn.Module, teacher: Teacher | None, method: str) -> dict[str, Any]:
        synset: SyntheticSet = model
        protocol = self.protocol
        if synset.learn_lr and self.use_learned_lr:
            protocol = dataclasses.replace(protocol, lr=float(synset.lr.detach()))
        labels = synset.labels().detach()
        row = self.score(synset.images.detach().cpu(), labels.cpu(), protocol)
        return {**row, "ipc": synset.ipc, "eval_lr": protocol.lr}

    def export(self, model: nn.Module, spec: dict[str, Any], directory: Path, method: str) -> Path:
        return model.save(directory, source_fingerprint=self.data.fingerprint("train"), method=method,
                          normalisation=self.data.normalisation, source_data=self.data_name)

    # ------------------------------------------------------------------ baselines

    def baselines(self, skip: set[str]) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        wanted = [name for name in self.baseline_names if name not in skip]
        if "full-data" in wanted:
            rows["full-data"] = self._full_data()
        for name in wanted:
            if name == "random":
                scores = [self.score(*self._subset(random_subset(self.y_train, self.ipc, torch.Generator().manual_seed(s))),
                                     seeds=s * self.protocol.num_models) for s in range(self.random_subsets)]
                accuracies = [a for row in scores for a in row["accuracies"]]
                subset_means = [row["accuracy"] for row in scores]
                rows[name] = {**scores[0], "accuracy": statistics.fmean(accuracies), "accuracy_std": statistics.pstdev(accuracies),
                              "accuracies": accuracies, "subset_means": subset_means, "method": "random", "ipc": self.ipc}
            elif name in ("herding", "k-center"):
                features = self._features()
                select = herding(features, self.y_train, self.ipc) if name == "herding" else k_center(features, self.y_train, self.ipc)
                rows[name] = {**self.score(*self._subset(select)), "method": name, "ipc": self.ipc}
        return rows

    def _subset(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.x_train[index], self.y_train[index]

    def _full_protocol(self) -> EvalProtocol:
        return dataclasses.replace(self.protocol, epochs=self.full_data_epochs)

    def _full_data(self) -> dict[str, Any]:
        protocol = self._full_protocol()
        started = time.perf_counter()
        mean, std, accuracies = evaluate_set(self.new_model, self.x_train, self.y_train, self.x_test, self.y_test, protocol)
        seconds = (time.perf_counter() - started) / max(len(accuracies), 1)
        return {"accuracy": mean, "accuracy_std": std, "accuracies": accuracies, "images": len(self.x_train),
                "eval_models": len(accuracies), "eval_epochs": protocol.epochs, "method": "full-data",
                "eval_s_per_model": round(seconds, 3)}

    def _features(self) -> Tensor:
        """Embeddings of the training split by a ConvNet trained on all of it (herding and k-center select in them)."""
        if self._feature_net is None:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                net = self.new_model()
            train_and_test(net, self.x_train, self.y_train, self.x_test[:1], self.y_test[:1], self._full_protocol(),
                           torch.Generator().manual_seed(0))
            self._feature_net = net.eval()
        with torch.no_grad():
            return torch.cat([self._feature_net.embed(self.x_train[i : i + 1024]) for i in range(0, len(self.x_train), 1024)])

    # ------------------------------------------------------------------ summary

    def summarise(self, metrics: dict[str, dict[str, Any]]) -> None:
        random_row, full_row = metrics.get("random"), metrics.get("full-data")
        if not random_row or not full_row or full_row["accuracy"] == random_row["accuracy"]:
            return
        for label, row in metrics.items():
            if label not in ("random", "full-data") and isinstance(row.get("accuracy"), float):
                row["gap_closed"] = gap_closed(row["accuracy"], random_row["accuracy"], full_row["accuracy"])

    def card(self) -> dict[str, Any]:
        """The protocol card: what a reader needs to compare these numbers with a paper's."""
        p = self.protocol
        return {
            "architecture": f"ConvNet-{self.net_depth} width {self.net_width}, instance norm, avg pool",
            "image_size": "x".join(str(d) for d in self.x_train.shape[1:]),
            "eval_epochs": p.epochs,
            "eval_lr": p.lr,
            "augmentation": "DC MNIST (crop/scale/rotate)" if p.dc_augment else (p.dsa_strategy or "none"),
            "eval_models": p.num_models,
            "full_data_epochs": self.full_data_epochs,
            "train_images": len(self.x_train),
            "score_split": self.score_split,
            "test_images": len(self.x_test),
        }
