"""Does the embedded model answer the same in bfloat16 as in float32? `rmt eval`'s samples, read in both dtypes.

rmt ingest and rmt eval run a checkpoint in the dtype its weights are saved in: bfloat16 for the embedded model
(its shipped dtype, and the fast path on a CPU with AVX512-BF16), float32 for a training run. This script puts
the same seeded samples through `rmt eval`'s code in both dtypes and reports, per length, each dtype's accuracy
and how many samples got the same answer in both (a paired comparison: far tighter than comparing two
accuracies, whose 95% intervals are ±5-20 points at these sample counts).

    python benchmarks/dtype_agreement.py --lengths 1k,16k --samples 50            # the embedded model and text
    python benchmarks/dtype_agreement.py --noise ../shared/data/books/tinyshakespeare.txt \\
        --noise ../shared/data/books/austen-sense.txt --noise ../shared/data/books/shakespeare-caesar.txt \\
        --babi ../shared/data/babi/qa1_single-supporting-fact_train.txt --babi-split valid \\
        --lengths 1k,4k,16k,128k,1M --samples 100,100,100,100,20 --batch-size 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from rmt_cli.commands.longeval import NoiseCorpus, StorySource, evaluate_length, parse_lengths  # noqa: E402
from rmt_cli.data.sources import read_texts  # noqa: E402
from rmt_cli.data.tasks import read_babi, split_sentences  # noqa: E402
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR, DEFAULT_NOISE_TEXT  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--noise", action="append", help="noise text files (default: the shipped text)")
    p.add_argument("--babi", help="a bAbI-format file of stories (default: the qa1 generator)")
    p.add_argument("--babi-split", default="all")
    p.add_argument("--lengths", default="1k,16k")
    p.add_argument("--samples", default="50", help="one number, or one per length")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lengths = parse_lengths(args.lengths)
    counts = [int(x) for x in args.samples.split(",")]
    counts = counts * len(lengths) if len(counts) == 1 else counts
    stories = read_babi(args.babi, args.babi_split, "--babi") if args.babi else None
    sentences = [s for _, text in read_texts(args.noise or [str(DEFAULT_NOISE_TEXT)]) for s in split_sentences(text)]
    said = {}
    for name, dtype in DTYPES.items():
        model = load_checkpoint(args.model, dtype=dtype, engine="auto")
        corpus = NoiseCorpus(model.tokenizer, sentences)
        source = StorySource("qa1", 2, 10, stories, args.seed)
        said[name] = []
        for n, c in zip(lengths, counts):
            said[name].append(evaluate_length(model, corpus, source, n, c, args.batch_size, keep_answers=True))
            print(f"{name} {n:,} tokens: {said[name][-1].correct} of {c} right", file=sys.stderr, flush=True)
    rows = []
    for k, (n, c) in enumerate(zip(lengths, counts)):
        full, half = said["float32"][k], said["bfloat16"][k]
        same = sum(a["said"] == b["said"] for a, b in zip(full.answers, half.answers))
        only_full = sum(a["said"] == a["answer"] != b["said"] for a, b in zip(full.answers, half.answers))
        only_half = sum(b["said"] == b["answer"] != a["said"] for a, b in zip(full.answers, half.answers))
        rows.append({"length": n, "samples": c, "accuracy_float32": full.correct / c,
                     "accuracy_bfloat16": half.correct / c, "same_answer": same / c,
                     "right_in_float32_only": only_full, "right_in_bfloat16_only": only_half})
    print(json.dumps({"model": args.model, "rows": rows}, indent=1))
    print("| length | samples | float32 | bfloat16 | same answer | right only in float32 | right only in bfloat16 |",
          file=sys.stderr)
    print("|---:|---:|---:|---:|---:|---:|---:|", file=sys.stderr)
    for r in rows:
        print(f"| {r['length']:,} | {r['samples']} | {r['accuracy_float32']:.0%} | {r['accuracy_bfloat16']:.0%} | "
              f"{r['same_answer']:.0%} | {r['right_in_float32_only']} | {r['right_in_bfloat16_only']} |",
              file=sys.stderr)


if __name__ == "__main__":
    main()
