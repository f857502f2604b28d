"""Reading ahead against one segment at a time, as ratios measured in one run (issue 10: a million tokens in 30 s).

A document read alone under a gated rule runs its next segments side by side from the same memory
(`rmt_cli.commands.ingest`, `lookahead`); on a book almost no segment writes, so most of it runs in batches of
LOOKAHEAD segments. For float32 and bfloat16: ingest tokens/s of one document with `lookahead=1` and with the
default (median of --repeats runs, taking turns), the ratio, and whether the two memories are bit-identical.

    python benchmarks/read_ahead.py                                          # the embedded model and text
    python benchmarks/read_ahead.py --text ../shared/data/books/austen-emma.txt --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from rmt_cli.commands.ingest import LOOKAHEAD, IngestJob, ingest  # noqa: E402
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR, DEFAULT_NOISE_TEXT  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402
from rmt_cli.storage.memfile import load_memory  # noqa: E402


def compare(model: str, text: Path, work: Path, dtype: str, repeats: int) -> dict:
    loaded = load_checkpoint(model, dtype=getattr(torch, dtype), engine="auto")
    speeds = {1: [], LOOKAHEAD: []}
    for _ in range(repeats):
        for width in speeds:
            [result] = ingest([IngestJob([str(text)], work / f"{dtype}-{width}.st")], loaded, lookahead=width)
            speeds[width].append(result.tokens / result.seconds)
    memories = {width: load_memory(work / f"{dtype}-{width}.st").memory for width in speeds}
    medians = {width: statistics.median(runs) for width, runs in speeds.items()}
    return {"engine": loaded.engine, "tokens": result.tokens, "tokens_per_second": medians,
            "ahead_over_one_at_a_time": medians[LOOKAHEAD] / medians[1],
            "bit_identical": bool(torch.equal(memories[1], memories[LOOKAHEAD]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--text", default=str(DEFAULT_NOISE_TEXT))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rmt-read-ahead-"))
    report = {"model": args.model, "text": args.text, "repeats": args.repeats, "threads": args.threads,
              "lookahead": LOOKAHEAD,
              "dtypes": {dtype: compare(args.model, Path(args.text), work, dtype, args.repeats)
                         for dtype in ("float32", "bfloat16")}}
    print(json.dumps(report, indent=2))
    for dtype, row in report["dtypes"].items():
        speed = row["tokens_per_second"]
        print(f"{dtype} ({row['engine']}): reading ahead {row['ahead_over_one_at_a_time']:.2f}x one segment at a time "
              f"({speed[LOOKAHEAD]:,.0f} against {speed[1]:,.0f} tokens/s); memories bit-identical: "
              f"{row['bit_identical']}", file=sys.stderr)


if __name__ == "__main__":
    main()
