"""The native engine against transformers, as ratios measured in one run (issue 10's goals).

1. `rmt ask` of one question in a fresh process (median wall time of --repeats runs), over `python -c "import torch,
   transformers"` (its median), for each engine (RMT_ENGINE=native, RMT_ENGINE=transformers): the goal is at most
   1.5x. The runs of the three commands take turns, so a change in the machine's load touches them alike.
2. Ingest of one document in this process (`ingest()`, model loaded; median tokens/s of --repeats runs), native
   over transformers, in float32 and bfloat16, on the same text; and how far apart the two memories are.

    python benchmarks/engine_speed.py                                  # the embedded model and text
    python benchmarks/engine_speed.py --model runs/qa1/final --text ../shared/data/books/austen-emma.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from rmt_cli.commands.ingest import IngestJob, ingest  # noqa: E402
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR, DEFAULT_NOISE_TEXT  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402
from rmt_cli.storage.memfile import load_memory  # noqa: E402

ENGINES = ("native", "transformers")
IMPORTS = [sys.executable, "-c", "import torch, transformers"]


def wall_seconds(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def ask_ratios(model: str, memory: Path, question: str, repeats: int) -> dict:
    """Median wall seconds of the imports and of `rmt ask` under each engine, and each engine's ratio."""
    commands = {"imports": (IMPORTS, os.environ)}
    for engine in ENGINES:
        commands[engine] = ([sys.executable, "-m", "rmt_cli.cli", "ask", str(memory), question, "--model", model],
                            {**os.environ, "RMT_ENGINE": engine})
    times = {name: [] for name in commands}
    for _ in range(repeats):
        for name, (command, env) in commands.items():
            times[name].append(wall_seconds(command, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"seconds": medians,
            "ask_over_imports": {engine: medians[engine] / medians["imports"] for engine in ENGINES}}


def ingest_ratio(model: str, text: Path, work: Path, dtype: str, repeats: int) -> dict:
    """Median tokens/s of ingesting `text` under each engine (into WORK/ENGINE-DTYPE.st), native over
    transformers, and the largest difference between the two memories."""
    speeds, memories = {}, {}
    for engine in ENGINES:
        loaded = load_checkpoint(model, dtype=getattr(torch, dtype), engine=engine)  # "native": or why not
        output = work / f"{engine}-{dtype}.st"
        runs = []
        for _ in range(repeats):
            [result] = ingest([IngestJob([str(text)], output)], loaded, batch_size=1)
            runs.append(result.tokens / result.seconds)
        speeds[engine] = statistics.median(runs)
        memories[engine] = load_memory(output).memory.float()
    difference = float((memories["native"] - memories["transformers"]).abs().max())
    return {"tokens_per_second": speeds, "native_over_transformers": speeds["native"] / speeds["transformers"],
            "memory_max_abs_difference": difference}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--text", default=str(DEFAULT_NOISE_TEXT))
    p.add_argument("--question", default="Where is Mary?")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = Path(tempfile.mkdtemp(prefix="rmt-engines-"))
    report = {"model": args.model, "text": args.text, "repeats": args.repeats, "threads": args.threads,
              "ingest": {}}
    for dtype in ("float32", "bfloat16"):
        report["ingest"][dtype] = ingest_ratio(args.model, Path(args.text), work, dtype, args.repeats)
    report["ask"] = ask_ratios(args.model, work / "native-float32.st", args.question, args.repeats)
    print(json.dumps(report, indent=2))
    ask = report["ask"]["ask_over_imports"]
    print(f"rmt ask / import torch, transformers: native {ask['native']:.2f}x, transformers "
          f"{ask['transformers']:.2f}x (goal <= 1.5x)", file=sys.stderr)
    for name, row in report["ingest"].items():
        print(f"ingest {name}: native / transformers {row['native_over_transformers']:.2f}x "
              f"({row['tokens_per_second']['native']:,.0f} against {row['tokens_per_second']['transformers']:,.0f} "
              f"tokens/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
