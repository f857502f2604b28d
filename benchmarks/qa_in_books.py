"""Questions about facts hidden in a whole book: `rmt ingest` then `rmt ask`, as a user runs them.

For each sample a bAbI-style story (qa1 by default: 2-4 moves of four people) is hidden, fact by fact and in
order, at random sentence boundaries of a book (>= 1 MB); the question goes to `rmt ask`. The same memory
files are then asked again with their memory tensor replaced by the model's initial memory (tail, metadata
and everything else unchanged): that accuracy must fall to the no-memory level, which shows the answers come
from the memory tensor and not from the text kept in the file.

    python benchmarks/qa_in_books.py --model runs/qa1-books/final \
        --book ../shared/data/books/tinyshakespeare.txt --samples 50 --work /tmp/qa-eval
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rmt_cli.commands.ask import ask  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402
from rmt_cli.storage.memfile import load_memory, save_memory  # noqa: E402
from rmt_cli.data.tasks import make_story, rng_for  # noqa: E402

BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def hide(book: str, facts: list[str], rng, within: int | None = None) -> tuple[str, list[int]]:
    """Insert the facts, in order, at random sentence boundaries of the book (of its last `within` characters).

    Returns the document and, for each fact, how many characters follow it to the end of the document.
    """
    bounds = [m.start() for m in BOUNDARY.finditer(book)]
    if within is not None:
        bounds = [b for b in bounds if b >= len(book) - within]
    spots = sorted(rng.sample(bounds, len(facts)))
    out, last = [], 0
    for spot, fact in zip(spots, facts):
        out += [book[last:spot], " ", fact]
        last = spot
    out.append(book[last:])
    doc = "".join(out)
    after, added = [], sum(len(f) + 1 for f in facts)
    for i, spot in enumerate(spots):
        added -= len(facts[i]) + 1
        after.append(len(book) - spot + added)
    return doc, after


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--book", required=True, nargs="+", help="text file(s), joined; at least --min-bytes")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--task", default="qa1")
    p.add_argument("--min-facts", type=int, default=2)
    p.add_argument("--max-facts", type=int, default=4)
    p.add_argument("--min-bytes", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--work", default="/tmp/rmt-qa-eval")
    p.add_argument("--facts-within", type=int, default=None,
                   help="hide the facts in the last N characters of the book (default: anywhere)")
    args = p.parse_args()

    work = Path(args.work)
    (work / "docs").mkdir(parents=True, exist_ok=True)
    (work / "mems").mkdir(exist_ok=True)
    book = "".join(Path(b).read_text(encoding="utf-8", errors="replace") for b in args.book)
    if len(book.encode()) < args.min_bytes:
        sys.exit(f"the book has {len(book.encode()):,} bytes; --min-bytes is {args.min_bytes:,}")
    stories, distance = [], {}
    for i in range(args.samples):
        rng = rng_for(args.seed, i, "book-eval")
        story = make_story(args.task, rng, args.min_facts, args.max_facts, None)
        doc, after = hide(book, story.facts, rng, args.facts_within)
        (work / "docs" / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
        person = story.question.split()[-1].rstrip("?")
        distance[i] = min(a for a, f in zip(after, story.facts) if f.startswith(person + " "))
        stories.append(story)
    docs = [str(work / "docs" / f"doc{i:03d}.txt") for i in range(args.samples)]

    # rmt ingest, exactly as a user runs it (progress on stderr, JSON summary on stdout).
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rmt_cli.cli", "ingest", *docs, "-o", str(work / "mems"),
                           "--model", args.model, "--batch-size", str(args.batch_size), "--dtype", args.dtype,
                           "--json"], stdout=subprocess.PIPE, text=True)
    ingest_seconds = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        sys.exit(f"rmt ingest failed with exit {proc.returncode}")
    summaries = json.loads(proc.stdout)

    dtype = load_memory(work / "mems" / "doc000.st").dtype
    import torch

    model = load_checkpoint(args.model, dtype=getattr(torch, dtype))
    initial = model.cell.initial_memory(1)[0].detach()
    right = {"memory": 0, "initial memory": 0}
    buckets: dict[str, list[int]] = {}
    for i, story in enumerate(stories):
        state = load_memory(work / "mems" / f"doc{i:03d}.st")
        correct = ask(model, state, story.question).answer == story.answer
        right["memory"] += correct
        bucket = next(f"<= {b:,} chars" for b in (1_000, 10_000, 100_000, 10**9) if distance[i] <= b)
        buckets.setdefault(bucket, []).append(int(correct))
        state.memory = initial.clone()
        save_memory(work / "mems" / f"doc{i:03d}.initial.st", state)
        replaced = load_memory(work / "mems" / f"doc{i:03d}.initial.st")
        if ask(model, replaced, story.question).answer == story.answer:
            right["initial memory"] += 1
    majority = Counter(s.answer for s in stories).most_common(1)[0][1]
    tokens = sum(s["tokens"] for s in summaries)
    report = {
        "samples": args.samples,
        "task": f"{args.task} ({args.min_facts}-{args.max_facts} facts)",
        "facts_within_chars_of_the_end": args.facts_within,
        "book_bytes": len(book.encode()),
        "tokens_per_document": summaries[0]["tokens"],
        "segments_per_document": summaries[0]["segments"],
        "accuracy_with_memory": right["memory"] / args.samples,
        "accuracy_memory_replaced_by_initial": right["initial memory"] / args.samples,
        "majority_answer_rate": majority / args.samples,
        "accuracy_by_text_after_the_supporting_fact": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(buckets.items())},
        "ingest_seconds": round(ingest_seconds, 1),
        "ingest_tokens_per_second": round(tokens / ingest_seconds),
        "ingest_peak_rss_mb": round(peak_rss_mb),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
