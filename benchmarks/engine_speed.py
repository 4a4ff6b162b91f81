"""Benchmarks (b) and (c): the engine's overhead over bare PyTorch, and the teacher signal cache.

(b) Our KD step (Lightning, through the runner's own Trainer) against a bare PyTorch loop doing the
    same work: teacher forward, student forward/backward, Adam step and cosine schedule step, on
    the same batches from the same data module. Per-step
    wall times of steps 10..N, interleaved over rounds; the ratio of medians is reported.
(c) KD epoch time with the signal cache against without (online teacher), after the first epoch.

Run: .venv/bin/python benchmarks/engine_speed.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from common import mean_std, write_results

from anydistill.catalog import build_models, load_recipe, shipped_recipes
from anydistill.core.cache import open_or_build_cache
from anydistill.core.rundir import RunDir
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl, mix_with_ce
from anydistill.runner import make_trainer

SIZES = {"mlp-32": {"name": "mlp", "hidden": [32]},
         "cnn-16-32": {"name": "small-cnn", "channels": [16, 32], "hidden": 128}}
STEPS = 160
WARMUP = 10


class StepTimer(L.Callback):
    """Wall time between consecutive batch starts (so data fetching and every hook count)."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.starts.append(time.perf_counter())


class EpochTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.times.append(time.perf_counter() - self.start)


def recipe_for(student: dict, overrides: list[str]):
    """The demo recipe on plain (unshifted) images with the given student."""
    raw = yaml.safe_load(Path(shipped_recipes()["mnist/demo"]).read_text())
    raw["student"] = student
    path = Path(tempfile.mkdtemp()) / "speed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(str(path), ["data.augment=false", "trainer.progress_bar=false", *overrides])


def build(recipe):
    L.seed_everything(0, verbose=False)
    student, teacher_model = build_models(recipe.data, recipe.student, recipe.teacher)
    kd = recipe.methods["kd"]
    return kd.target(student=student, teacher=Teacher(teacher_model), optimizer=recipe.optimizer, **kd.kwargs)


def ours(recipe, root: Path) -> list[float]:
    method = build(recipe)
    datamodule = recipe.data.target(**recipe.data.kwargs)
    trainer = make_trainer(recipe, RunDir.create(root, f"ours-{time.monotonic_ns()}"), "kd")  # recipe sets max_steps
    timer = StepTimer()
    trainer.callbacks.append(timer)
    trainer.fit(method, datamodule=datamodule)
    return [b - a for a, b in zip(timer.starts[WARMUP:], timer.starts[WARMUP + 1:])]


def bare(recipe) -> list[float]:
    method = build(recipe)
    student, teacher = method.student, method.teacher.model
    datamodule = recipe.data.target(**recipe.data.kwargs)
    datamodule.setup()
    optimizer = torch.optim.Adam(student.parameters(), lr=recipe.optimizer.lr)
    # The recipe's cosine schedule, stepped every batch as the engine does.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS + 1)
    starts = []
    for step, batch in enumerate(datamodule.train_dataloader()):
        starts.append(time.perf_counter())
        if step == STEPS + 1:
            break
        with torch.no_grad():
            teacher_logits = teacher(batch["x"])
        logits = student(batch["x"])
        loss = mix_with_ce(kd_kl(logits, teacher_logits, temperature=1.0), logits, batch["y"], alpha=0.9)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return [b - a for a, b in zip(starts[WARMUP:], starts[WARMUP + 1:])]


def overhead(root: Path, rounds: int = 3) -> dict:
    results = {}
    for size, overrides in SIZES.items():
        recipe = recipe_for(overrides, [f"trainer.max_steps={STEPS + 1}"])
        ratios, ours_ms, bare_ms = [], [], []
        for _ in range(rounds):  # interleaved: machine noise hits both sides alike
            a, b = statistics.median(ours(recipe, root)), statistics.median(bare(recipe))
            ratios.append(a / b)
            ours_ms.append(a * 1000)
            bare_ms.append(b * 1000)
        params = sum(p.numel() for p in build(recipe).student.parameters())
        results[size] = {"params": params, "ratio": mean_std(ratios), "ours_ms": mean_std(ours_ms), "bare_ms": mean_std(bare_ms), "rounds": rounds}
        print(size, results[size], flush=True)
    return results


def cache_speed(root: Path, epochs: int = 3) -> dict:
    results = {}
    recipe_cached = recipe_for(SIZES["mlp-32"], ["cache.enabled=true", f"cache.dir={root / 'cache'}", f"trainer.max_epochs={epochs}"])
    recipe_online = recipe_for(SIZES["mlp-32"], [f"trainer.max_epochs={epochs}"])
    for name, recipe in (("online", recipe_online), ("cached", recipe_cached)):
        method = build(recipe)
        datamodule = recipe.data.target(**recipe.data.kwargs)
        datamodule.setup()
        build_time = 0.0
        if recipe.cache.enabled:
            started = time.perf_counter()
            signals, _, _ = open_or_build_cache(Path(recipe.cache.dir), method.teacher, datamodule.split("train")[0],
                                                dataset_fingerprint=datamodule.fingerprint(), transform=datamodule.transform)
            build_time = time.perf_counter() - started
            datamodule.attach_signals(signals)
        trainer = make_trainer(recipe, RunDir.create(root, f"cache-{name}"), "kd")
        timer = EpochTimer()
        trainer.callbacks.append(timer)
        trainer.fit(method, datamodule=datamodule)
        results[name] = {"epoch_s": timer.times, "cache_build_s": build_time}
    # Cost of the teacher's forward against the student's forward + backward, per batch of 128.
    method = build(recipe_online)
    x = torch.randn(128, 1, 28, 28)
    def clock(fn, n=30):
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n
    with torch.no_grad():
        teacher_s = clock(lambda: method.teacher.model(x))
    student_s = clock(lambda: method.student(x).sum().backward())
    later_online = results["online"]["epoch_s"][1:]
    later_cached = results["cached"]["epoch_s"][1:]
    results["teacher_over_student_cost"] = teacher_s / student_s
    results["speedup_after_first_epoch"] = statistics.fmean(later_online) / statistics.fmean(later_cached)
    print(results, flush=True)
    return results


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        over = overhead(root)
        cache = cache_speed(root)
    lines = ["# Engine speed (MNIST, ccexam MNISTNet teacher, batch 128, 2 CPU threads)", "",
             "## (b) Overhead: our KD step / a bare PyTorch loop doing the same work", "",
             f"Median step time of steps {WARMUP}..{STEPS}, {next(iter(over.values()))['rounds']} interleaved rounds (mean ± std over rounds).", "",
             "| student | ours (ms/step) | bare PyTorch (ms/step) | ratio |", "|---|---:|---:|---:|"]
    for size, r in over.items():
        lines.append(f"| {size} ({r['params']:,} params) | {r['ours_ms'][0]:.2f} ± {r['ours_ms'][1]:.2f} | {r['bare_ms'][0]:.2f} ± {r['bare_ms'][1]:.2f} | "
                     f"{r['ratio'][0]:.3f} ± {r['ratio'][1]:.3f} |")
    lines += ["", "## (c) Teacher signal cache: KD epoch time (mlp-32 student, 50k images)", "",
              f"Teacher forward costs {cache['teacher_over_student_cost']:.1f}x the student's forward + backward.", "",
              "| mode | epoch times (s) | one-off cache build (s) |", "|---|---|---:|"]
    for name in ("online", "cached"):
        lines.append(f"| {name} | {', '.join(f'{t:.2f}' for t in cache[name]['epoch_s'])} | {cache[name]['cache_build_s']:.2f} |")
    lines += ["", f"Epochs after the first: cached is **{cache['speedup_after_first_epoch']:.2f}x** faster than online.", ""]
    write_results("engine_speed", {"overhead": over, "cache": cache}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
