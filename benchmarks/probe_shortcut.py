"""Has the model learned to bind the asked name to its fact, or the "last place mentioned" shortcut?

Two-fact stories, "A <moved> to X. B <moved> to Y." with A != B and X != Y, asked about A (the shortcut says Y:
wrong) and about B (the shortcut says Y: right). Two routes, each through the ingest/ask code of `rmt eval`:
- in context: the story alone, short enough to be read in the question's segment;
- through memory: the story, then enough noise that the question's segment holds none of it.

    python benchmarks/probe_shortcut.py --model runs/qa1-gated-extend/final --noise ../shared/data/books/blake-poems.txt

Prints one JSON line per route: accuracy asked about A, asked about B, and how often the answer was Y.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402
from rmt_cli.data.sources import read_texts  # noqa: E402
from rmt_cli.commands.longeval import NoiseCorpus, evaluate_length  # noqa: E402
from rmt_cli.data.tasks import MOVES, PEOPLE, PLACES, Story, rng_for, split_sentences  # noqa: E402


class PairStories:
    """StorySource look-alike: sample i asks about A when i is even, about B when odd."""

    def __init__(self, seed: int):
        self.seed = seed

    def story(self, length: int, index: int):
        rng = rng_for(self.seed, index // 2, "pair")
        a, b = rng.sample(PEOPLE, 2)
        x, y = rng.sample(PLACES, 2)
        facts = [f"{a} {rng.choice(MOVES)} the {x}.", f"{b} {rng.choice(MOVES)} the {y}."]
        asked, answer = (a, x) if index % 2 == 0 else (b, y)
        return Story(facts, f"Where is {asked}?", answer, [("", y)]), rng_for(self.seed, index, "noise")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--noise", required=True, nargs="+")
    p.add_argument("--samples", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    model = load_checkpoint(args.model)
    corpus = NoiseCorpus(model.tokenizer, [s for _, t in read_texts(args.noise) for s in split_sentences(t)])
    source = PairStories(args.seed)
    S = model.segment_size
    for route, length in (("in context", 14), ("through memory", 8 * S)):
        result = evaluate_length(model, corpus, source, length, args.samples, batch_size=40, keep_answers=True)
        last = [source.story(length, i)[0].more[0][1] for i in range(args.samples)]
        asked_a = [a for i, a in enumerate(result.answers) if i % 2 == 0]
        asked_b = [a for i, a in enumerate(result.answers) if i % 2 == 1]
        print(json.dumps({
            "route": route, "length": length,
            "asked_first_person_right": sum(a["said"] == a["answer"] for a in asked_a) / len(asked_a),
            "asked_last_person_right": sum(a["said"] == a["answer"] for a in asked_b) / len(asked_b),
            "answered_last_place": sum(a["said"] == y for a, y in zip(result.answers, last)) / len(last),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
