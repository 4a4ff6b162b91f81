"""The diffusion family's evaluator: every model sampled at its NFEs from the same noise, scored
against the held-out test split.

Rows (one per model, keys suffixed ``@<NFE>``):

* 2-D data: sliced Wasserstein-2 (256 projections) ``swd``, multi-bandwidth RBF ``mmd``, and for
  Gaussian mixtures mode ``coverage`` and ``high_quality`` fraction (within 3 std of a mode);
  ``coupling``: mean ``|G(z) - ODE_teacher(z)|`` against the teacher's many-step ODE solution from
  the same noise.
* 8x8 digits: ``fd``, the Fréchet distance in the features of a digit classifier trained here
  (`anydistill.diffusion.digit_features`); ``class_acc``, the fraction of conditional samples the
  classifier assigns to their label; ``diversity``, the mean within-class pairwise distance.
* Always: ``ms_per_sample`` (wall-clock per sample at that NFE, batch of ``num_samples``, this
  machine) and, for models sampled with an ODE solver, ``straightness`` of their Euler trajectory.
* With ``reference: teacher``, also the distances to the teacher's ``teacher_steps`` samples
  (``swd_to_teacher``, ``mmd_to_teacher``; digits ``fd_to_teacher``): how close a student comes to
  what it distils, apart from how close the teacher comes to the data (0 for the teacher's own row
  at ``teacher_steps``, which is the reference).

The teacher (a model without a ``sampling`` spec) is measured at ``teacher_steps`` (>= 50 by
default) and at each of ``student_steps``; a student at the NFEs its method declares. `export`
writes ``model.safetensors`` + ``model.json`` (with the sampling spec) and ``samples.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from anydistill.core.evaluator import Evaluator
from anydistill.core.export import export_model
from anydistill.core.recipe import PositiveInt
from anydistill.core.teacher import Teacher
from anydistill.diffusion import sample_metrics as sm
from anydistill.diffusion.common import ODE_SAMPLERS, check_denoiser, labels_for, model_classes, pure_noise_problem, schedule_of
from anydistill.diffusion.digit_features import digit_classifier, features_and_logits, frechet_distance, per_class_diversity
from anydistill.diffusion.generate import generate
from anydistill.diffusion.plots import sample_panels
from anydistill.diffusion.samplers import time_grid


class DiffusionEvaluator(Evaluator):
    """Scores generators; see the module docstring.

    Args:
        num_samples: samples per model and NFE (fixed noise, seeded by ``sample_seed``).
        teacher_steps: the teacher's many-step reference (its ODE sampler's step count).
        teacher_sampler: ``euler``, ``heun`` or ``ddim``: how a plain denoiser is sampled.
        student_steps: the step counts the teacher is also measured at (the students').
        cfg: classifier-free guidance weight for conditional teachers (``None``: conditional, unguided).
        sample_seed: seeds the noise and labels shared by every model.
        straightness_steps: Euler steps of the trajectory whose straightness is reported.
        classifier_epochs: training epochs of the digit feature classifier.
        mmd_points: samples and test points the MMD uses (its cost is quadratic).
        plots: write ``samples.png`` beside each export.
        reference_draws: fresh exact samples the ``data`` row (2-D) averages over: one draw's
            sliced Wasserstein alone varies by about 30 % (8-Gaussian ring, 5,000 points).
        reference: ``data`` (the test split), or ``teacher``: the distances to the teacher's
            ``teacher_steps`` samples as well (``*_to_teacher@NFE``).
        curve_every: score each student every N optimizer steps while it trains, on a fixed draw
            against the validation split (`diffusion.curves`: ``curve.json`` and ``curve.png`` in its
            log folder); None: off.
        curve_samples: samples per curve point.
    """

    # Quality at each NFE, then size and the sampling cost the NFE buys (ms per sample).
    headline = ("swd@*", "high_quality@*", "fd@*", "class_acc@*", "params", "ms_per_sample@*")

    def __init__(
        self,
        data: Any,
        student_spec: dict[str, Any] | None = None,
        data_name: str | None = None,
        *,
        num_samples: PositiveInt = 2000,
        teacher_steps: PositiveInt = 64,
        teacher_sampler: Literal["euler", "heun", "ddim"] = "euler",
        student_steps: list[PositiveInt] = [1, 2, 4],  # noqa: B006
        cfg: float | None = None,
        sample_seed: int = 0,
        straightness_steps: PositiveInt = 32,
        classifier_epochs: PositiveInt = 30,
        mmd_points: PositiveInt = 2000,
        plots: bool = True,
        reference_draws: PositiveInt = 5,
        reference: Literal["data", "teacher"] = "data",
        curve_every: PositiveInt | None = None,
        curve_samples: PositiveInt = 512,
    ):
        super().__init__(data, student_spec, data_name)
        self.num_samples, self.teacher_steps, self.teacher_sampler = num_samples, teacher_steps, teacher_sampler
        self.student_steps, self.cfg, self.sample_seed = sorted(set(student_steps)), cfg, sample_seed
        self.straightness_steps, self.classifier_epochs, self.plots = straightness_steps, classifier_epochs, plots
        self.mmd_points, self.reference_draws, self.reference_kind = mmd_points, reference_draws, reference
        self.x_test, self.y_test = data.split("test")
        self.x_val = data.split("val")[0]
        self.curve_every, self.curve_samples = curve_every, curve_samples
        self.is_points = self.x_test.ndim == 2
        name = getattr(data, "name", None)
        from anydistill.data import toy2d_distributions as toy2d

        self.modes = toy2d.modes(name) if self.is_points and name in toy2d._MIXTURES else None
        self.mode_std = toy2d.mode_std(name) if self.modes is not None else None
        self.mode_classes = toy2d.mode_classes(name) if self.modes is not None and self.data.num_classes else None
        self._references: dict[int, Tensor] = {}  # teacher ODE samples, by id of the teacher network
        self._pending: tuple[int, dict] | None = None  # samples drawn by export, reused by evaluate
        self._classifier_accuracy: float | None = None

    @classmethod
    def settings_problems(cls, settings: dict[str, Any]) -> list[str]:
        problems = []
        if settings.get("teacher_steps", 64) < 2:
            problems.append("teacher_steps must be >= 2 (the teacher's many-step reference; 50 or more is usual).")
        return problems

    def callbacks(self, label: str, directory: Path) -> list[Any]:
        """A learning curve of the model the method trains (``curve_every``)."""
        from anydistill.diffusion.curves import CurveCallback

        return [CurveCallback(self, directory, self.curve_every, self.curve_samples)] if self.curve_every else []

    @classmethod
    def model_problems(cls, settings: dict[str, Any], *, teacher_model: nn.Module | None, student_model: nn.Module | None) -> list[str]:
        """Models that cannot be sampled from pure noise (`pure_noise_problem`), found before any training."""
        return [p for role, model in (("teacher", teacher_model), ("student", student_model))
                if model is not None and hasattr(model, "prediction") and (p := pure_noise_problem(model, role))]

    def baselines(self, skip: set[str]) -> dict[str, dict[str, Any]]:
        """For 2-D data, ``data``: fresh exact samples of the true distribution, as many points as a
        model draws, scored the same way: the floor of every sample-based metric at this size (the
        mean over ``reference_draws`` draws; ``<metric>_std@0`` its spread between draws)."""
        if not self.is_points or not hasattr(self.data, "sample") or "data" in skip:
            return {}
        draws = [self.scores(self.data.sample(self.num_samples, self.sample_seed + i)[0], None) for i in range(self.reference_draws)]
        row = {}
        for key in draws[0]:
            values = torch.tensor([float(d[key]) for d in draws], dtype=torch.float64)
            row[f"{key}@0"] = float(values.mean())
            row[f"{key}_std@0"] = float(values.std(unbiased=False))
        return {"data": row}

    # ------------------------------------------------------------------ sampling

    def noise(self, model: nn.Module) -> tuple[Tensor, Tensor | None]:
        """The fixed noise ``[num_samples, *shape]`` (the model schedule's std) and labels (or None)."""
        generator = torch.Generator().manual_seed(self.sample_seed)
        shape = (self.num_samples, *self.x_test.shape[1:])
        z = torch.randn(shape, generator=generator) * schedule_of(model).noise_std
        return z, labels_for(self.num_samples, model_classes(model))

    def plan(self, model: nn.Module) -> tuple[dict[str, Any], list[int]]:
        """The sampling spec and the step counts a model is measured at."""
        spec = getattr(model, "sampling", None)
        if spec is None:  # a plain denoiser: the teacher
            return {"sampler": self.teacher_sampler, "cfg": self.cfg}, sorted({self.teacher_steps, *self.student_steps})
        return spec, sorted(set(spec.get("steps", [1])))

    def draw(self, model: nn.Module) -> dict[int, dict[str, Any]]:
        """``{NFE: {"x": samples, "seconds": wall time}}`` for every step count of the model's plan."""
        model = model.cpu()
        spec, steps = self.plan(model)
        z, cond = self.noise(model)
        drawn = {}
        for n in steps:
            generator = torch.Generator().manual_seed(self.sample_seed + 1)
            start = time.perf_counter()
            result = generate(model, z, cond, n, sampling=spec, generator=generator)
            drawn[result.nfe] = {"x": result.x0, "seconds": time.perf_counter() - start, "steps": n}
        return drawn

    def reference(self, teacher: Teacher | None) -> Tensor | None:
        """The teacher's ODE solution at ``teacher_steps`` from the shared noise (cached per teacher)."""
        if teacher is None:
            return None
        key = id(teacher.model)
        if key not in self._references:
            z, cond = self.noise(teacher.model)
            spec = {"sampler": self.teacher_sampler, "cfg": self.cfg}
            self._references[key] = generate(teacher.model.cpu(), z, cond, self.teacher_steps, sampling=spec).x0
        return self._references[key]

    # ------------------------------------------------------------------ metrics

    def evaluate(self, model: nn.Module, teacher: Teacher | None, method: str) -> dict[str, Any]:
        check_denoiser(model, "the diffusion evaluator")
        if self._pending is not None and self._pending[0] == id(model):
            drawn = self._pending[1]
        else:
            drawn = self.draw(model)
        self._pending = None
        reference = self.reference(teacher) if teacher is not None else None
        _, cond = self.noise(model)
        row: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "nfe": min(drawn)}
        for nfe, item in drawn.items():
            x = item["x"].float()
            row[f"ms_per_sample@{nfe}"] = round(1000 * item["seconds"] / self.num_samples, 5)
            for key, value in self.scores(x, cond).items():
                row[f"{key}@{nfe}"] = value
            if reference is not None and reference.shape == x.shape:
                row[f"coupling@{nfe}"] = sm.coupling_error(x, reference)
                if self.reference_kind == "teacher" and bool(torch.isfinite(x).all()):
                    row.update({f"{key}_to_teacher@{nfe}": value for key, value in self.distances(x, reference.float()).items()})
        spec, _ = self.plan(model)
        if spec.get("sampler") in ODE_SAMPLERS:
            row["straightness"] = self.straightness(model, spec)
        return row

    def scores(self, x: Tensor, cond: Tensor | None) -> dict[str, float]:
        """Distances of samples ``x`` to the test split (see the module docstring)."""
        finite = torch.isfinite(x.flatten(1)).all(1)
        if not bool(finite.all()):
            return {"finite": float(finite.float().mean())}
        out = self.distances(x, self.x_test)
        # Total variance against the data's: guidance that over-sharpens (CFG augmentation alone) drives it above 1.
        out["variance_ratio"] = float(x.flatten(1).double().var(0).sum() / self.x_test.flatten(1).double().var(0).sum())
        if self.is_points:
            if self.modes is not None:
                out["coverage"], out["high_quality"] = sm.mode_coverage(x, self.modes, self.mode_std)
                if cond is not None and self.mode_classes is not None:
                    nearest = torch.cdist(x.double(), self.modes.double()).argmin(1)
                    out["class_acc"] = float((self.mode_classes[nearest] == cond).float().mean())
                    if self.mode_classes.shape[0] > self.data.num_classes:  # classes own several sub-modes
                        out["submodes_kept"], out["submode_evenness"] = sm.within_class_modes(
                            x, cond, self.modes, self.mode_classes, self.mode_std)
            return out
        net, _ = self.classifier()
        _, logits = features_and_logits(net, x)
        labels = cond if cond is not None else logits.argmax(-1)
        if cond is not None:
            out["class_acc"] = float((logits.argmax(-1) == cond).float().mean())
        out["diversity"] = per_class_diversity(x, labels)
        return out

    def distances(self, x: Tensor, reference: Tensor) -> dict[str, float]:
        """Distribution distances of samples ``x`` to ``reference`` (the test split, or the teacher's
        samples): sliced Wasserstein and MMD for points, the Fréchet distance in the digit
        classifier's features for images."""
        if self.is_points:
            generator = torch.Generator().manual_seed(0)
            # MMD's cost is quadratic: the first mmd_points of each set (the noise is i.i.d., the test split too)
            m = self.mmd_points
            return {"swd": sm.sliced_wasserstein(x, reference, 256, generator), "mmd": sm.mmd_rbf(x[:m], reference[:m])}
        net, _ = self.classifier()
        return {"fd": frechet_distance(features_and_logits(net, x)[0], features_and_logits(net, reference)[0])}

    def classifier(self) -> tuple[nn.Module, float]:
        x, y = self.data.split("train")
        net, accuracy = digit_classifier(x, y, self.x_test, self.y_test, self.data.fingerprint("train"), self.classifier_epochs)
        self._classifier_accuracy = accuracy
        return net, accuracy

    @torch.no_grad()
    def straightness(self, model: nn.Module, spec: dict[str, Any]) -> float:
        """Straightness (Liu et al. 2022) of the model's Euler ODE trajectory from the shared noise."""
        z, cond = self.noise(model)
        n = min(self.num_samples, 500)
        sampling = {"sampler": "euler", "cfg": spec.get("cfg")}
        result = generate(model, z[:n], cond[:n] if cond is not None else None, self.straightness_steps,
                          sampling=sampling, return_trajectory=True)
        times = time_grid(schedule_of(model), self.straightness_steps)
        return sm.straightness(torch.stack(result.trajectory), times)

    # ------------------------------------------------------------------ export and card

    def export(self, model: nn.Module, spec: dict[str, Any], directory: Path, method: str) -> Path:
        if type(getattr(model, "net", None)).__name__ == "RoutedNet":  # multi-student / phased experts: K copies of the recipe's student
            spec = {"name": "routed-denoiser", "students": len(model.net.nets), "student": dict(spec), "by": model.net.by,
                    **({"boundaries": model.net.boundaries.tolist()} if model.net.by == "time" else {})}
        # The model's own reading (consistency distillation turns an EDM student into a consistency-parametrised one).
        spec = {**spec, **({"preconditioning": model.preconditioning} if hasattr(model, "preconditioning") and "preconditioning" in spec else {})}
        if getattr(model, "lora", None):  # the adapters apart (lora/), the merged model as the recipe's architecture
            from anydistill.diffusion.lora import merged_copy, save_adapter

            save_adapter(model, directory / "lora")
            sampling, model = model.sampling, merged_copy(model)
            model.sampling = sampling
        path = export_model(model, {**spec, "sampling": getattr(model, "sampling", None)}, directory)
        unet = getattr(getattr(model, "net", None), "unet", None)
        if hasattr(unet, "save_pretrained"):  # a diffusers model is also exported in its own format
            unet.save_pretrained(str(directory / "diffusers"))
        if self.plots:
            drawn = self.draw(model)
            self._pending = (id(model), drawn)
            reference = self.x_test if self.is_points else None
            sample_panels({nfe: d["x"] for nfe, d in drawn.items()}, directory / "samples.png", method, reference)
        return path

    def summarise(self, metrics: dict[str, dict[str, Any]]) -> None:
        """Add each row's ratio of its best metric at its fewest NFE to the teacher's at many steps."""
        teacher = metrics.get("teacher")
        if not teacher:
            return
        key = "swd" if self.is_points else "fd"
        many = max((int(k.split("@")[1]) for k in teacher if k.startswith(f"{key}@")), default=None)
        if many is None or not teacher.get(f"{key}@{many}"):
            return
        for row in metrics.values():
            if f"{key}@{row.get('nfe')}" in row:
                row[f"{key}_vs_teacher@{many}"] = round(row[f"{key}@{row['nfe']}"] / teacher[f"{key}@{many}"], 4)

    def card(self) -> dict[str, Any]:
        card = {
            "num_samples": self.num_samples, "teacher_steps": self.teacher_steps, "teacher_sampler": self.teacher_sampler,
            "student_steps": self.student_steps, "cfg": self.cfg, "sample_seed": self.sample_seed, "mmd_points": self.mmd_points,
            "reference_draws": self.reference_draws, "reference": self.reference_kind,
            "test_points": int(self.x_test.shape[0]),
            "metrics": "swd: sliced W2 (256 projections); mmd: unbiased RBF MMD^2 on the first mmd_points of each set; coverage/high_quality: 3-std modes; "
                       "coupling: mean |G(z) - ODE_teacher(z)| at teacher_steps; fd: Frechet distance in a local "
                       "digit classifier's features; class_acc: classifier agrees with the conditioning label; "
                       "diversity: mean within-class pairwise L2; variance_ratio: the samples' total variance over the test split's; ms_per_sample: wall-clock on this machine",
        }
        if self._classifier_accuracy is not None:
            card["feature_classifier_test_accuracy"] = self._classifier_accuracy
            card["test_split_diversity"] = per_class_diversity(self.x_test, self.y_test)
        return card
