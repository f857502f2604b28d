"""The generalisation figure: accuracy against document length for models trained on different lengths.

Each `--model LABEL=CHECKPOINT` is evaluated with `rmt eval`'s code on the same seeded samples; one curve per
model, with the memory reset of the first model and the constant guess for reference.

    python benchmarks/generalisation.py --noise ../shared/data/books/tinyshakespeare.txt \
        --model "1 segment=runs/v2" --model "8 segments=runs/e4/final" \
        --lengths 256,1k,4k,16k --samples 50 --plot docs/generalisation.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402
from rmt_cli.data.sources import read_texts  # noqa: E402
from rmt_cli.commands.longeval import NoiseCorpus, StorySource, evaluate_lengths, parse_lengths  # noqa: E402
from rmt_cli.data.tasks import split_sentences  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=CHECKPOINT (repeat)")
    p.add_argument("--noise", required=True, nargs="+")
    p.add_argument("--lengths", default="256,1k,4k,16k")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--facts", default="2,10")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--plot")
    args = p.parse_args(argv)
    lengths = parse_lengths(args.lengths)
    low, high = (int(x) for x in args.facts.split(","))
    sentences = [s for _, t in read_texts(args.noise) for s in split_sentences(t)]
    curves = {}
    for spec in args.model:
        label, _, path = spec.partition("=")
        model = load_checkpoint(path)
        corpus = NoiseCorpus(model.tokenizer, sentences)
        rows = [r.row() for r in evaluate_lengths(model, corpus, StorySource("qa1", low, high), lengths,
                                                  [args.samples] * len(lengths), args.batch_size)]
        curves[label] = rows
        print(json.dumps({"label": label, "model": path, "rows": rows}), flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for label, rows in curves.items():
            ax.plot(lengths, [100 * r["accuracy"] for r in rows], "o-", label=f"trained on {label}")
        first = next(iter(curves.values()))
        ax.plot(lengths, [100 * r["accuracy_reset"] for r in first], "s--", color="grey", label="memory reset")
        ax.plot(lengths, [100 * r["constant_guess"] for r in first], "x:", color="black", label="constant guess")
        ax.set_xscale("log")
        ax.set_xlabel("document length (tokens)")
        ax.set_ylabel(f"accuracy (%), {args.samples} samples each")
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
