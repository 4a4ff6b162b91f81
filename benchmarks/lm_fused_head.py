"""Benchmark: the fused LM-head distillation loss next to the unfused one and Liger-Kernel's.

Three ways to get JSD(beta = 0.5, T = 1) and its gradients w.r.t. the student's last hidden states
and head weight, from the hidden states of a student and a teacher and their LM heads (no bias):

  fused    anydistill.lm.fused_head.fused_token_distill_loss: logits chunk by chunk, gradients in forward
  unfused  F.linear to full [N, V] student logits (and teacher logits under no_grad), then
           anydistill.lm.token_losses.token_distill_loss (chunked, checkpointed), backward
  liger    liger_kernel.chunked_loss.LigerFusedLinearJSDLoss (weight_hard_loss = 0, so no CE;
           compiled = False: its default torch.compile is a GPU path; see the card)

All three use the same chunk of tokens. Each (V, repeat, method) runs in a fresh child process (this
script with --child), so its memory figure is its own: the child reads its peak resident set
VmHWM from /proc/self/status just before the loss (after building the inputs) and after one
forward + backward (not ru_maxrss, which a child inherits from its parent). The loss-only peak is
the difference. The child then runs forward + backward once more; its time is the mean of the two
runs. Repeats are interleaved (repeat 1: every method, repeat 2: every method in another order...)
and ratios are taken within a repeat, then averaged (mean ± std).

Needs Liger (benchmark only, not a test dependency): .venv/bin/pip install --no-deps liger-kernel==0.8.5
(its chunked losses are plain PyTorch and run on CPU without triton).

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_fused_head.py   (37 minutes on 2 shared cores; the unfused
children at V = 128k peak near 9.2 GB; a run cut short resumes from its partial file in the temp dir)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anydistill.core.memory import status_kib

METHODS = ("fused", "unfused", "liger")


def inputs(tokens: int, vocab: int, hidden: int, seed: int = 0):
    """Student and teacher hidden states [N, H] and heads [V, H] (logits of std ~2), an all-True mask."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * (2 / hidden**0.5)).requires_grad_(True)
    h_t = torch.randn(tokens, hidden, generator=g)
    w_t = torch.randn(vocab, hidden, generator=g) * (2 / hidden**0.5)
    return h, w, h_t, w_t, torch.ones(tokens, dtype=torch.bool)


def step(method: str, h, w, h_t, w_t, mask, chunk: int) -> float:
    """One forward + backward; returns the loss per token."""
    import torch
    import torch.nn.functional as F

    if method == "fused":
        from anydistill.lm.fused_head import fused_token_distill_loss

        loss, n = fused_token_distill_loss(h, w, None, h_t, w_t, None, mask, divergence="jsd", beta=0.5, chunk_tokens=chunk)
        loss.backward()
        return loss.item() / n
    if method == "unfused":
        from anydistill.lm.token_losses import token_distill_loss

        logits = F.linear(h, w)
        with torch.no_grad():
            teacher_logits = F.linear(h_t, w_t)
        loss, n = token_distill_loss(logits, teacher_logits, mask, divergence="jsd", beta=0.5, chunk_tokens=chunk)
        loss.backward()
        return loss.item() / n
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, temperature=1.0,
                                    compiled=False, chunk_size=chunk)
    labels = torch.zeros(h.shape[0], dtype=torch.long)  # every token counts; the CE term is off
    loss = liger(h, w, h_t, w_t, labels)
    loss.backward()
    return loss.item()  # Liger returns the mean over the tokens


def child(method: str, vocab: int, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    step(method, *inputs(64, 1024, args.hidden), chunk=32)  # initialise kernels and thread pools
    gc.collect()
    tensors = inputs(args.tokens, vocab, args.hidden)
    before, rss_before = status_kib("VmHWM"), status_kib("VmRSS")
    seconds, losses = [], []
    for run in range(args.runs):
        tensors[0].grad = tensors[1].grad = None
        began = time.perf_counter()
        losses.append(step(method, *tensors, chunk=args.chunk))
        seconds.append(time.perf_counter() - began)
        if run == 0:
            peak = status_kib("VmHWM")
    return {"method": method, "vocab": vocab, "hwm_before_kib": before, "rss_before_kib": rss_before,
            "hwm_peak_kib": peak, "loss_peak_kib": peak - before, "seconds": seconds, "loss_per_token": losses[0]}


def liger_available() -> str | None:
    """Liger's version if its chunked_loss imports here (pure PyTorch; no triton needed), else None."""
    try:
        from importlib.metadata import version

        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss  # noqa: F401

        return version("liger-kernel")
    except Exception:  # noqa: BLE001 - any import failure means: compare without it
        return None


def main(args: argparse.Namespace) -> None:
    import torch
    from common import mean_std, write_results

    liger = liger_available()
    methods = [m for m in METHODS if m != "liger" or liger]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    load_before = os.getloadavg()
    runs: dict[int, dict[str, list[dict]]] = {v: {m: [] for m in methods} for v in args.vocabs}
    # Each child's result is appended to a partial file as soon as it arrives, so that a run cut
    # short (the V = 128k children take minutes each) resumes where it stopped.
    partial = Path(tempfile.gettempdir()) / f"{args.name}.partial.jsonl"
    settings = {k: v for k, v in vars(args).items() if k != "vocabs"}
    done_before = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            entry = json.loads(line)
            if entry["settings"] == settings:
                done_before[(entry["vocab"], entry["repeat"], entry["method"])] = entry
    for vocab in args.vocabs:
        for repeat in range(args.repeats):
            order = methods[repeat % len(methods):] + methods[: repeat % len(methods)]  # rotate: no method always first
            for method in order:
                result = done_before.get((vocab, repeat, method))
                if result is None:
                    cmd = [sys.executable, __file__, "--child", method, str(vocab), *sys.argv[1:]]
                    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
                    if done.returncode != 0:
                        raise SystemExit(f"{method} V={vocab} failed:\n{done.stderr[-3000:]}")
                    result = {**json.loads(done.stdout.strip().splitlines()[-1]), "repeat": repeat, "settings": settings,
                              "load_average": os.getloadavg()}
                    with partial.open("a") as out:
                        out.write(json.dumps(result) + "\n")
                runs[vocab][method].append(result)
                print(f"V={vocab} repeat {repeat} {method}: loss peak {result['loss_peak_kib'] / 1024:,.0f} MiB "
                      f"(HWM {result['hwm_peak_kib'] / 1024:,.0f} MiB), {sum(result['seconds']) / len(result['seconds']):.2f} s",
                      flush=True)
    load_after = os.getloadavg()

    mib = lambda r, key: r[key] / 1024
    secs = lambda r: sum(r["seconds"]) / len(r["seconds"])
    fmt = lambda values, digits=0: "{:,.{d}f} ± {:,.{d}f}".format(*mean_std(values), d=digits)
    summary, ratios = {}, {}
    for vocab, by_method in runs.items():
        summary[vocab] = {m: {"loss_peak_mib": [mib(r, "loss_peak_kib") for r in rs],
                              "hwm_peak_mib": [mib(r, "hwm_peak_kib") for r in rs],
                              "hwm_before_mib": [mib(r, "hwm_before_kib") for r in rs],
                              "seconds": [secs(r) for r in rs],
                              "loss_per_token": [r["loss_per_token"] for r in rs]} for m, rs in by_method.items()}
        s = summary[vocab]

        def per_repeat(a: str, b: str, key: str, s: dict = s) -> list[float]:
            return [x / y for x, y in zip(s[a][key], s[b][key])]

        ratios[vocab] = {"memory fused / unfused (loss peak)": per_repeat("fused", "unfused", "loss_peak_mib"),
                         "memory fused / unfused (process peak)": per_repeat("fused", "unfused", "hwm_peak_mib"),
                         "time fused / unfused": per_repeat("fused", "unfused", "seconds")}
        if liger:
            ratios[vocab].update({"memory fused / Liger (loss peak)": per_repeat("fused", "liger", "loss_peak_mib"),
                                  "memory fused / Liger (process peak)": per_repeat("fused", "liger", "hwm_peak_mib"),
                                  "time fused / Liger": per_repeat("fused", "liger", "seconds")})

    command = " ".join([f"OMP_NUM_THREADS={args.threads} python benchmarks/lm_fused_head.py", *sys.argv[1:]])
    top = max(args.vocabs)
    goals = {
        f"memory fused <= 0.25 x unfused at V = {top} (loss peak)": mean_std(ratios[top]["memory fused / unfused (loss peak)"])[0] <= 0.25,
    }
    if liger:
        goals[f"memory fused <= Liger at V = {top} (loss peak)"] = mean_std(ratios[top]["memory fused / Liger (loss peak)"])[0] <= 1.0
        goals[f"time fused <= 1.1 x Liger at V = {top}"] = mean_std(ratios[top]["time fused / Liger"])[0] <= 1.1
    versions = {"torch": torch.__version__, "liger-kernel": liger or "not importable", "python": platform.python_version()}
    lines = [
        "# Fused LM-head distillation loss: memory and time next to the unfused loss and Liger-Kernel",
        "",
        f"Command: `{command}`",
        "",
        f"JSD(beta = 0.5, T = 1) and its gradients w.r.t. the student's hidden states and head weight: {args.tokens} tokens "
        f"(all counted), hidden size {args.hidden} (student and teacher), no head bias, fp32, {args.threads} threads, "
        f"chunks of {args.chunk} tokens for all three. One fresh child process per (V, repeat, method), "
        f"{args.repeats} interleaved repeats, mean ± std over repeats; ratios are taken within a repeat. Memory: the "
        "child's own VmHWM (/proc/self/status) after one forward + backward, minus its VmHWM just before it "
        "('loss peak'); 'process peak' is the VmHWM itself (inputs, Python and libraries included). Time: mean of "
        f"{args.runs} forward + backward runs in the child. Versions: {versions}. Load average (1, 5, 15 min) "
        f"before: {tuple(round(x, 2) for x in load_before)}, after: {tuple(round(x, 2) for x in load_after)} "
        f"on {os.cpu_count()} CPUs.",
        "",
    ]
    for vocab in args.vocabs:
        s = summary[vocab]
        lines += [
            f"## V = {vocab:,}",
            "",
            "| method | loss peak (MiB) | process peak (MiB) | VmHWM before (MiB) | seconds | loss per token |",
            "|---|---:|---:|---:|---:|---:|",
            *[f"| {m} | {fmt(v['loss_peak_mib'])} | {fmt(v['hwm_peak_mib'])} | {fmt(v['hwm_before_mib'])} | "
              f"{fmt(v['seconds'], 2)} | {v['loss_per_token'][0]:.6f} |" for m, v in s.items()],
            "",
            "| ratio | mean ± std over repeats |",
            "|---|---:|",
            *[f"| {name} | {fmt(values, 3)} |" for name, values in ratios[vocab].items()],
            "",
        ]
    lines += ["## Goals (issue 25)", "", "| goal | holds |", "|---|---|",
              *[f"| {goal} | {'yes' if ok else 'no'} |" for goal, ok in goals.items()], ""]
    if not liger:
        lines += ["Liger-Kernel's chunked_loss did not import here, so it is not compared.", ""]
    write_results(args.name, {"versions": versions, "command": command, "settings": vars(args),
                              "load_average_before": load_before, "load_average_after": load_after,
                              "runs": {str(v): r for v, r in runs.items()}, "summary": {str(v): s for v, s in summary.items()},
                              "ratios": {str(v): r for v, r in ratios.items()}, "goals": goals}, "\n".join(lines))
    print("\n".join(lines))
    partial.unlink(missing_ok=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="forward + backward runs per child (the first gives the memory)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="lm_fused_head", help="results/<name>.{json,md}")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, vocab, rest = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
        print(json.dumps(child(method, vocab, parse(rest))))
    else:
        began = time.perf_counter()
        main(parse(sys.argv[1:]))
        print(f"total {time.perf_counter() - began:.0f} s")
