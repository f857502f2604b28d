"""What limits a gated qa model at long lengths? Four probes on bAbI-format stories hidden in books.

Each probe reads documents exactly as `rmt eval` does (`longeval.evaluate_length` and `haystack_pieces`); only
what is recorded, or where the stories and facts go, changes.

- `gates`:  the most open gate of each segment, on segments holding a fact and on pure noise: quantiles, and the
            share of noise segments that open a gate past 0.001 ... 0.5 (with --show, their text).
- `floors`: accuracy at one length with the gate floor raised at inference (a gate under the floor writes nothing);
            if stray openings on noise cost answers, a higher floor wins them back.
- `swap`:   accuracy at one length with the stories another length draws (same seed): is a drop between lengths
            the length, or the stories drawn for it?
- `spread`: accuracy with the facts at random points (as `rmt eval`) or spread evenly, one per segment: does a
            fact written alone cost more than facts that share a segment?
- `slots`:  the gates of every slot on the segments of a few stories: how many of the memory slots carry facts.

    python benchmarks/probe_memory.py gates --model rmt_cli/assets/default-model --length 16000 --samples 20 \
        --noise ../shared/data/books/austen-sense.txt --babi ../shared/data/babi/qa1_single-supporting-fact_train.txt

Prints JSON lines (slots: a table). bfloat16, as the model ships; one thread unless --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import rmt_cli.commands.longeval as longeval  # noqa: E402
from rmt_cli.data.sources import read_texts  # noqa: E402
from rmt_cli.data.tasks import read_babi, split_sentences  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402


def fact_segments(model, corpus, source, length: int, index: int) -> tuple[list[int], dict[int, list[str]]]:
    """The document's token ids and, per segment, the facts that fall (partly) in it."""
    story, rng = source.story(length, index)
    facts = {f.strip() for f in story.facts}
    S, ids, where = model.segment_size, [], {}
    for piece in longeval.haystack_pieces(story, corpus, length, rng, source.placement):
        text = model.tokenizer.decode(piece).strip()
        if text in facts:
            for segment in range(len(ids) // S, (len(ids) + len(piece) - 1) // S + 1):
                where.setdefault(segment, []).append(text)
        ids.extend(piece)
    return ids, where


class GateRecorder:
    """Wraps the cell's memory update to keep each segment's gates [batch, slots] (gated rule only)."""

    def __init__(self, cell):
        if cell.gate is None:
            raise SystemExit("error: these probes need a model with the gated update rule")
        self.gates: list[torch.Tensor] = []
        update = cell.update_memory

        def recorded(old, written):
            new, gate = update(old, written)
            self.gates.append(gate.float().cpu())
            return new, gate

        cell.update_memory = recorded


def probe_gates(model, corpus, source, args) -> None:
    recorder = GateRecorder(model.cell)
    on_facts, on_noise = [], []
    S = model.segment_size
    with torch.inference_mode():
        for i in range(args.samples):
            ids, where = fact_segments(model, corpus, source, args.length, i)
            memory = model.cell.initial_memory(1).clone()
            recorder.gates.clear()
            for k in range(len(ids) // S):
                memory = model.cell.write_segment(memory, torch.tensor([ids[k * S : (k + 1) * S]]))
            for k, gate in enumerate(recorder.gates):
                most = float(gate[0].max())
                (on_facts if k in where else on_noise).append(most)
                if args.show and k not in where and most > 0.05:
                    print(f"{most:.3f} {model.tokenizer.decode(ids[k * S : (k + 1) * S])!r}", file=sys.stderr)
    noise, facts = torch.tensor(on_noise), torch.tensor(on_facts)
    print(json.dumps({
        "probe": "gates", "length": args.length, "samples": args.samples,
        "noise_segments": len(on_noise), "fact_segments": len(on_facts),
        "noise_quantiles": {str(q): float(noise.quantile(q)) for q in (0.5, 0.9, 0.99, 0.999)},
        "noise_share_open_past": {str(t): float((noise > t).float().mean()) for t in (0.001, 0.01, 0.05, 0.2, 0.5)},
        "fact_quantiles": {str(q): float(facts.quantile(q)) for q in (0.0, 0.01, 0.1, 0.5)},
    }))


def accuracy(model, corpus, source, length: int, samples: int, **fields) -> None:
    r = longeval.evaluate_length(model, corpus, source, length, samples, min(samples, 50))
    print(json.dumps({**fields, "length": length, "samples": samples, "accuracy": r.correct / samples,
                      "accuracy_reset": r.correct_reset / samples}), flush=True)


def probe_floors(model, corpus, source, args) -> None:
    for floor in args.floors:
        model.cell.gate_floor = floor
        accuracy(model, corpus, source, args.length, args.samples, probe="floors", floor=floor)


def probe_swap(model, corpus, source, args) -> None:
    for story_length in args.stories_of:
        swapped = longeval.StorySource(source.task, source.min_facts, source.max_facts, source.babi, source.seed)
        swapped.story = lambda length, index, drawn=story_length: source.story(drawn, index)
        accuracy(model, corpus, swapped, args.length, args.samples, probe="swap", stories_of=story_length)


class EvenPoints:
    """Stands in for a story's random source inside haystack_pieces, which draws only with randrange: the first
    `count` draws (the facts' points) are evenly spaced, the rest (where the noise starts) are the source's own."""

    def __init__(self, inner: random.Random, count: int):
        self.inner, self.count, self.drawn = inner, count, 0

    def randrange(self, stop: int) -> int:
        self.drawn += 1
        return int((self.drawn - 0.5) * stop / self.count) if self.drawn <= self.count else self.inner.randrange(stop)


def probe_spread(model, corpus, source, args) -> None:
    at_random = longeval.haystack_pieces

    def spread(story, noise, length, rng, placement="random"):
        return at_random(story, noise, length, EvenPoints(rng, len(story.facts)), placement)

    for mode in ("random", "even"):
        longeval.haystack_pieces = spread if mode == "even" else at_random
        accuracy(model, corpus, source, args.length, args.samples, probe="spread", facts=mode)
    longeval.haystack_pieces = at_random


def probe_slots(model, corpus, source, args) -> None:
    recorder = GateRecorder(model.cell)
    S = model.segment_size
    with torch.inference_mode():
        for i in range(args.samples):
            ids, where = fact_segments(model, corpus, source, args.length, i)
            story, _ = source.story(args.length, i)
            memory = model.cell.initial_memory(1).clone()
            recorder.gates.clear()
            for k in range(len(ids) // S):
                memory = model.cell.write_segment(memory, torch.tensor([ids[k * S : (k + 1) * S]]))
            print(f"story {i}: {story.question} {story.answer}")
            for k, gate in enumerate(recorder.gates):
                if k in where or float(gate.max()) > 0.05:
                    print(f"{k:5d} " + " ".join(f"{g:.2f}" for g in gate[0].tolist()) + "  "
                          + (" ".join(where[k]) if k in where else "(noise)"))


PROBES = {"gates": probe_gates, "floors": probe_floors, "swap": probe_swap, "spread": probe_spread,
          "slots": probe_slots}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=sorted(PROBES))
    p.add_argument("--model", default="rmt_cli/assets/default-model")
    p.add_argument("--noise", nargs="+", required=True, help="text files or folders the stories are hidden in")
    p.add_argument("--babi", help="bAbI-format file of stories (its valid split); default: the qa1 generator")
    p.add_argument("--length", type=int, default=16000, help="document length in tokens")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--floors", type=float, nargs="+", default=[0.001, 0.5, 0.9], help="floors: gate floors to try")
    p.add_argument("--stories-of", type=int, nargs="+", default=[128000], help="swap: the lengths whose stories")
    p.add_argument("--show", action="store_true", help="gates: print noise segments that open a gate past 0.05")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.model, dtype=torch.bfloat16)
    corpus = longeval.NoiseCorpus(model.tokenizer, [s for _, t in read_texts(args.noise) for s in split_sentences(t)])
    stories = read_babi(args.babi, "valid", "--babi") if args.babi else None
    source = longeval.StorySource("qa1", 2, 10, stories, args.seed)
    PROBES[args.probe](model, corpus, source, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
