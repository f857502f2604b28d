"""Where does the memory change? A story hidden in a book, ingested with a per-segment trace.

The seed asks whether RMT identifies the important facts and stores them. This plants one qa1 story (the
facts at random sentence boundaries of a book, exactly as `rmt eval` does), writes the document to a text
file, runs `rmt ingest`'s code with its trace (how much each segment changed the memory, and for the gated
rule the most open gate), and compares segments that hold a fact with segments of pure noise.

    python benchmarks/trace_facts.py --model runs/qa1-gated/final \
        --book ../shared/data/books/blake-poems.txt --tokens 20000 --plot docs/trace.png

Prints one JSON line: mean and max change on fact segments and on noise segments, and the share of noise
segments that left the memory bit for bit unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402
from rmt_cli.data.sources import read_texts  # noqa: E402
from rmt_cli.commands.ingest import IngestJob, ingest  # noqa: E402
from rmt_cli.commands.longeval import NoiseCorpus, StorySource  # noqa: E402
from probe_memory import fact_segments as fact_segments_of  # noqa: E402  (benchmarks/, beside this script)
from rmt_cli.data.tasks import split_sentences  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--book", required=True, nargs="+", help="noise text files or folders")
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--facts", default="4,8", help="MIN,MAX facts of the story")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", help="PNG: change per segment, fact segments marked")
    args = p.parse_args(argv)

    model = load_checkpoint(args.model)
    S = model.segment_size
    sentences = [s for _, t in read_texts(args.book) for s in split_sentences(t)]
    corpus = NoiseCorpus(model.tokenizer, sentences)
    low, high = (int(x) for x in args.facts.split(","))
    source = StorySource("qa1", low, high, seed=args.seed)
    story, _ = source.story(args.tokens, 0)
    ids, where = fact_segments_of(model, corpus, source, args.tokens, 0)
    fact_segments = set(where)
    records = []
    with tempfile.TemporaryDirectory() as work:
        doc = Path(work) / "doc.txt"
        doc.write_text(model.tokenizer.decode(ids))
        ingest([IngestJob([str(doc)], Path(work) / "m.st")], model, on_trace=records.append)
    fact = [r.change for r in records if r.segment in fact_segments]
    noise = [r.change for r in records if r.segment not in fact_segments]
    summary = {
        "model": args.model, "tokens": len(ids), "segments": len(records), "facts": len(story.facts),
        "fact_segments": sorted(fact_segments),
        "fact_change_mean": sum(fact) / max(len(fact), 1), "fact_change_min": min(fact, default=None),
        "noise_change_mean": sum(noise) / max(len(noise), 1), "noise_change_max": max(noise, default=None),
        "noise_segments_unchanged": sum(c == 0 for c in noise) / max(len(noise), 1),
    }
    print(json.dumps(summary))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 3.2))
        ax.plot([r.segment for r in records], [r.change for r in records], lw=0.8, label="memory change")
        for k, s in enumerate(sorted(fact_segments)):
            ax.axvline(s, color="red", alpha=0.4, lw=1, label="segment with a fact" if k == 0 else None)
        ax.set_xlabel(f"segment ({S} tokens)")
        ax.set_ylabel("|new - old| / |old|")
        ax.set_title(f"{Path(args.model).name}: {len(story.facts)} facts in {len(ids):,} tokens of {Path(args.book[0]).name}")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
