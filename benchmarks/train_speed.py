"""Training steps per second with and without truncated BPTT and gradient checkpointing, as ratios in one run.

Four settings of `RecurrentMemoryModel` on the same model and the same batch:

- full BPTT (the baseline of every ratio)
- truncated BPTT, `memory.bptt_depth: D` (gradients through the last D write segments only)
- full BPTT with `memory.gradient_checkpointing: true` (each segment's activations recomputed in backward)
- both

A step is forward + backward + AdamW step. The batch is B documents of N write segments and a final segment;
by default as the qa tasks train (loss on the final segment's answer only; --lm: a language-model loss on every
token of every segment). Step times are the best of --repeats, the settings taking turns, so the ratios are
measured in one run. --rss also runs each setting alone in a child process and reports its peak resident
memory and how much of it the training steps added above the loaded model (what gradient checkpointing and
truncation are for; on Linux the peak is restarted after loading; small differences are allocator noise).

    python benchmarks/train_speed.py --segments 16 --depth 2 --batch 8 --rss
    python benchmarks/train_speed.py --model runs/qa1/final --segments 32 --lm
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from rmt_cli.core.memory import IGNORE_INDEX, RecurrentMemoryModel  # noqa: E402
from rmt_cli.core.segments import DocumentSample, collate  # noqa: E402
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def settings(depth: int) -> dict[str, tuple[int | None, bool]]:
    """name -> (bptt_depth, gradient_checkpointing)"""
    return {"full BPTT": (None, False), f"bptt_depth {depth}": (depth, False),
            "full BPTT + checkpointing": (None, True), f"bptt_depth {depth} + checkpointing": (depth, True)}


def make_batch(args, vocab: int, S: int, pad: int):
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(args.batch):
        writes = [torch.randint(2, vocab, (S,), generator=g).tolist() for _ in range(args.segments)]
        final = torch.randint(2, vocab, (S,), generator=g).tolist()
        if args.lm:
            samples.append(DocumentSample(writes, final, final, write_labels=writes))
        else:  # a question and a 3-token answer at the end of the final segment
            labels = [IGNORE_INDEX] * (S - 3) + final[-3:]
            samples.append(DocumentSample(writes, final, labels))
    return collate(samples, pad)


def build(args):
    model = load_checkpoint(args.model, dtype=DTYPES[args.dtype])
    cell = model.cell
    for p in cell.parameters():
        p.requires_grad_(True)
    S = model.segment_size
    vocab = cell.model.get_input_embeddings().num_embeddings
    batch = make_batch(args, vocab, S, model.tokenizer.pad_token_id or 0)
    return cell, S, batch


def stepper(cell, S, batch, depth, checkpointing):
    rmt = RecurrentMemoryModel(cell, S, bptt_depth=depth, gradient_checkpointing=checkpointing).train()
    optimizer = torch.optim.AdamW(rmt.parameters(), lr=1e-6)  # tiny steps: the weights barely move

    def step():
        loss = rmt(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _status_mb(field: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """Hand freed memory back to the system and restart the peak RSS count here (Linux: clear_refs 5); return
    the RSS now. Elsewhere the peak stays that of the whole process and the training figure reads low."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_rss(args, name: str) -> dict:
    """Peak RSS (MB) of a process that loads the model and runs 2 steps of one setting, and how far above the
    RSS of the loaded model (imports, weights, batch) the steps took it."""
    argv = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--dtype", args.dtype,
            "--segments", str(args.segments), "--depth", str(args.depth), "--batch", str(args.batch),
            "--threads", str(args.threads), "--only", name] + (["--lm"] if args.lm else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint (default: the embedded model)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="training dtype (rmt trains in float32)")
    p.add_argument("--segments", type=int, default=16, help="write segments per document")
    p.add_argument("--depth", type=int, default=2, help="bptt_depth of the truncated settings")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lm", action="store_true", help="loss on every token, not only the final answer")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rss", action="store_true", help="also the peak RSS of each setting (child processes)")
    p.add_argument("--only", help=argparse.SUPPRESS)  # child: one setting, 2 steps, print its peak RSS
    args = p.parse_args(argv)
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table = settings(args.depth)
    cell, S, batch = build(args)

    if args.only:
        step = stepper(cell, S, batch, *table[args.only])
        loaded = reset_peak_rss()
        step()
        step()
        peak = peak_rss_mb()
        print(json.dumps({"peak_rss_mb": peak, "training_mb": peak - loaded}))
        return 0

    steps = {name: stepper(cell, S, batch, *setting) for name, setting in table.items()}
    for step in steps.values():  # warm-up
        step()
    best = {name: math.inf for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
    rss = {name: child_rss(args, name) for name in table} if args.rss else {}

    base = best["full BPTT"]
    print(f"Training step (forward + backward + AdamW), {args.batch} documents x ({args.segments} write segments + "
          f"1 final) of {S} tokens, {'LM loss on every token' if args.lm else 'loss on the final answer'}, "
          f"{args.dtype}, {torch.get_num_threads()} threads, {args.model}\n")
    head = "| setting | step s | steps/s | speed vs full BPTT |"
    rule = "|---|---:|---:|---:|"
    if rss:
        head += " peak RSS MB | of which training MB | training memory vs full BPTT |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    for name, seconds in best.items():
        row = f"| {name} | {seconds:.4f} | {1 / seconds:.2f} | **{base / seconds:.2f}x** |"
        if rss:
            r, r0 = rss[name], rss["full BPTT"]
            share = r["training_mb"] / max(r0["training_mb"], 1)
            row += f" {r['peak_rss_mb']:,.0f} | {r['training_mb']:,.0f} | {share:.2f} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
