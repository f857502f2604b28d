"""Ingest speed and memory, as ratios measured in one run.

1. RMT ingest of one document vs the bare model's forward over the same segments (no memory, no LM head):
   what the memory costs; and `ingest()` against the memory cell's own loop over the same segments
   (`write_segment` on pre-tokenized segments): what reading, tokenizing and bookkeeping cost (the goal: the
   ingest at >= 0.95x the loop's speed).
2. Several documents ingested side by side (batched) vs one after another.
3. Peak resident memory of `rmt ingest` on a text and on a text 4 times longer (flat memory).

    python benchmarks/ingest_speed.py --model runs/memorize-tiny/final --text ../shared/data/books/austen-emma.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402
from rmt_cli.commands.ingest import IngestJob, ingest  # noqa: E402

RSS_PROBE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(args: list[str]) -> float:
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, *args], check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--documents", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.model, dtype=getattr(torch, args.dtype), engine="auto")  # what rmt ingest runs
    S = model.segment_size
    text = Path(args.text).read_text(encoding="utf-8", errors="replace")
    work = Path(tempfile.mkdtemp(prefix="rmt-bench-"))
    (work / "doc.txt").write_text(text)

    t = time.perf_counter()
    [single] = ingest([IngestJob([str(work / "doc.txt")], work / "doc.st")], model, batch_size=1)
    rmt_seconds = time.perf_counter() - t

    ids = model.tokenizer.encode(text, add_special_tokens=False)
    segments = [ids[i : i + S] for i in range(0, len(ids) // S * S, S)]
    with torch.inference_mode():
        t = time.perf_counter()
        embed = model.cell.model.get_input_embeddings()
        for seg in segments:  # the bare body over the same tokens (embeddings in, as both engines take them)
            model.cell.model.base_model(inputs_embeds=embed(torch.tensor([seg])))
        bare_seconds = time.perf_counter() - t
        memory = model.cell.initial_memory(1)
        t = time.perf_counter()
        for seg in segments:
            memory = model.cell.write_segment(memory, torch.tensor([seg]))
        loop_seconds = time.perf_counter() - t

    docs = []
    for i in range(args.documents):
        path = work / f"d{i}.txt"
        path.write_text(text[i * 997 :])  # slightly different documents of about the same length
        docs.append(IngestJob([str(path)], work / f"d{i}.st"))
    t = time.perf_counter()
    batched = ingest(docs, model, batch_size=args.documents)
    batched_seconds = time.perf_counter() - t
    batched_tokens = sum(r.tokens for r in batched)

    (work / "long.txt").write_text(text * 4)
    command = [sys.executable, "-m", "rmt_cli.cli", "ingest", "--model", args.model, "--dtype", args.dtype, "-q"]
    rss_1x = peak_rss_mb(command + [str(work / "doc.txt"), "-o", str(work / "a.st")])
    rss_4x = peak_rss_mb(command + [str(work / "long.txt"), "-o", str(work / "b.st")])

    report = {
        "tokens": single.tokens,
        "segment_size": S,
        "rmt_ingest_tokens_per_second": round(single.tokens / rmt_seconds),
        "bare_forward_tokens_per_second": round(len(segments) * S / bare_seconds),
        "rmt_ingest_time_over_bare_forward": round(rmt_seconds / bare_seconds, 2),
        "cell_loop_tokens_per_second": round(len(segments) * S / loop_seconds),
        "ingest_speed_over_cell_loop": round((single.tokens / rmt_seconds) / (len(segments) * S / loop_seconds), 3),
        "batched_documents": args.documents,
        "batched_tokens_per_second": round(batched_tokens / batched_seconds),
        "batched_speedup_over_single": round((batched_tokens / batched_seconds) / (single.tokens / rmt_seconds), 2),
        "peak_rss_mb_1x_text": round(rss_1x),
        "peak_rss_mb_4x_text": round(rss_4x),
        "rss_ratio_4x_over_1x": round(rss_4x / rss_1x, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
