"""`rmt ingest` at 10k, 100k and 1M tokens: time per token and peak memory against length, in one run.

A text (by default the public-domain text shipped in the package) is repeated to each length and written to a
temporary file; each length is ingested by `python -m rmt_cli.cli ingest FILE -o MEM.st --json -q` in a fresh
process, run from a probe process that reports the child's peak RSS (getrusage(RUSAGE_CHILDREN)) and the wall
time. The ingest's own `seconds` (from --json: reading, tokenizing and the model, without start-up and model
loading) gives the time per token. Linear means the same time per token at every length; flat memory means
RSS(1M) / RSS(10k) <= 1.1 (the target).

    python benchmarks/scaling.py
    python benchmarks/scaling.py --model runs/qa1/final --text ../shared/data/books/austen-emma.txt \\
        --lengths 10k,100k,1M --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from rmt_cli.commands.longeval import format_length, parse_lengths  # noqa: E402
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR, DEFAULT_NOISE_TEXT  # noqa: E402

PROBE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
out = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "ingest": json.loads(out.stdout)}))
"""


def tokens_per_char(tokenizer_dir: str, text: str) -> float:
    from rmt_cli.storage.modeling import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=False)
    sample = text[:200_000]
    return len(tokenizer.encode(sample, add_special_tokens=False)) / max(len(sample), 1)


def write_text(path: Path, text: str, chars: int) -> None:
    """`chars` characters of the text repeated, written piece by piece."""
    with open(path, "w", encoding="utf-8") as f:
        left = chars
        while left > 0:
            piece = text[:left]
            f.write(piece)
            left -= len(piece)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint (default: the embedded model)")
    p.add_argument("--text", default=str(DEFAULT_NOISE_TEXT), help="text to repeat to each length")
    p.add_argument("--lengths", default="10k,100k,1M", help="token counts (k = 1,000, M = 1,000,000)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the ingest processes")
    p.add_argument("--keep", help="folder to keep the texts and memory files in (default: a temporary one)")
    args = p.parse_args(argv)
    lengths = parse_lengths(args.lengths)
    text = Path(args.text).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        p.error(f"--text {args.text}: empty")
    per_char = tokens_per_char(args.model, text)
    work = Path(args.keep or tempfile.mkdtemp(prefix="rmt-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))

    rows = []
    for n in lengths:
        doc, mem = work / f"text-{n}.txt", work / f"mem-{n}.st"
        write_text(doc, text, math.ceil(n / per_char))
        command = [sys.executable, "-m", "rmt_cli.cli", "ingest", str(doc), "-o", str(mem), "--model", args.model,
                   "--dtype", args.dtype, "--json", "-q"]
        out = subprocess.run([sys.executable, "-c", PROBE, *command], check=True, capture_output=True, text=True,
                             env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"target": n, "tokens": r["ingest"]["tokens"], "seconds": r["ingest"]["seconds"],
                     "wall": r["wall"], "rss_mb": r["rss_kb"] / 1024})
        print(f"# {format_length(n)}: {r['ingest']['tokens']:,} tokens, {r['ingest']['seconds']:.1f} s",
              file=sys.stderr, flush=True)

    first = rows[0]
    first_per_token = first["seconds"] / first["tokens"]
    print(f"`rmt ingest`, {args.model}, {args.dtype}, {args.threads} threads, text {args.text} repeated\n")
    print("| length | tokens | ingest s | wall s (with start-up) | us per token | per token vs "
          f"{format_length(first['target'])} | peak RSS MB | RSS vs {format_length(first['target'])} |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per_token = r["seconds"] / r["tokens"]
        print(f"| {format_length(r['target'])} | {r['tokens']:,} | {r['seconds']:.2f} | {r['wall']:.2f} | "
              f"{per_token * 1e6:.1f} | **{per_token / first_per_token:.2f}** | {r['rss_mb']:,.0f} | "
              f"**{r['rss_mb'] / first['rss_mb']:.3f}** |")
    last = rows[-1]
    ratio = last["rss_mb"] / first["rss_mb"]
    print(f"\nRSS({format_length(last['target'])}) / RSS({format_length(first['target'])}) = {ratio:.3f} "
          f"(target <= 1.1: {'yes' if ratio <= 1.1 else 'NO'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
