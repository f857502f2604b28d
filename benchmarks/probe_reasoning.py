"""What a reasoning model really learnt: two probes of an encoder checkpoint trained on the reasoning task.

1. In context (the two facts and the question in one segment): accuracy by question form ("What is east of the
   bathroom?" asks the relation as stated, "What is the bathroom east of?" its inverse), and which place it names:
   the subject of the fact whose direction is the question's, or of the other fact. A model that has not learnt
   to read east against west names either about as often, whatever the form.
2. Through the memory: documents of three write segments of book sentences and a final one with the question,
   the two facts put at chosen segments; accuracy by whether the question is about the earlier or the later fact.
   A memory that keeps one fact answers the later one (the second write overwrote the first) or the earlier one.
3. Decodable (`--decode`): is the forgotten fact gone from the memory, or there and not read? Linear classifiers
   (logistic regression on the memory after the three write segments, trained on some stories and scored on
   others) name the subject place of the earlier and of the later fact. Above chance (1 in 6) for a fact the
   model answers badly means the write kept it and the final segment's reading loses it. A third classifier names
   the place east (or north) of the other: the direction bound to its place, which answering needs.

    python benchmarks/probe_reasoning.py --model runs/minilm-reasoning/final \\
        --noise ../shared/data/books/austen-sense.txt --stories 60

Counts are small: a share of 60 stories is ±13 points (95%).
"""

import argparse
import collections
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rmt_cli.core.segments import build_final_segment, question_ids  # noqa: E402
from rmt_cli.data.sources import read_texts  # noqa: E402
from rmt_cli.data.tasks import DIRECTIONS, reasoning_story, split_sentences  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402

LAYOUTS = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2)]  # the write segments of the first and second fact


def answer(cell, memory, tail, question, tokenizer, segment_size) -> str:
    final = build_final_segment(tail, question_ids(tokenizer, question), [], segment_size)
    _, logits, _ = cell.forward_segment(memory, torch.tensor([final.input_ids]), write=False, logits=True)
    return cell.answers[int(logits.argmax(-1))]


def in_context(model, stories: int, rng: random.Random) -> None:
    cell, tok = model.cell, model.tokenizer
    counts = collections.Counter()
    for _ in range(stories):
        story = reasoning_story(rng)
        inverse = story.question.startswith("What is the ")
        asked = next(d for d in DIRECTIONS if f" {d} " in f" {story.question} ")
        matching = next(f for f in story.facts if f" {asked} " in f).split()[1]
        facts = tok.encode(" ".join(story.facts), add_special_tokens=False)
        said = answer(cell, cell.initial_memory(1), facts, story.question, tok, model.segment_size)
        form = "inverse" if inverse else "as stated"
        counts[form, "right"] += said == story.answer
        counts[form, "same direction"] += said == matching
        counts[form, "all"] += 1
    print("in context:")
    for form in ("as stated", "inverse"):
        n = counts[form, "all"]
        print(f"  {form:9}: right {counts[form, 'right'] / n:.0%}, names the fact with the question's direction "
              f"{counts[form, 'same direction'] / n:.0%} ({n} stories)")


def through_memory(model, sentences: list[list[int]], stories: int, rng: random.Random) -> None:
    cell, tok, size = model.cell, model.tokenizer, model.segment_size
    print("through the memory (3 write segments, then the question):")
    for layout in LAYOUTS:
        counts = collections.Counter()
        for _ in range(stories):
            story = reasoning_story(rng)
            facts = [tok.encode(" " + f, add_special_tokens=False) for f in story.facts]
            memory = cell.initial_memory(1)
            for k in range(3):
                ids = [t for j, f in enumerate(facts) if layout[j] == k for t in f]
                while len(ids) < size:
                    ids += rng.choice(sentences)
                memory = cell.write_segment(memory, torch.tensor([ids[:size]]))
            said = answer(cell, memory, rng.choice(sentences)[:10], story.question, tok, size)
            about = "earlier" if story.facts[0].startswith(f"The {story.answer} ") else "later"
            counts[about, "right"] += said == story.answer
            counts[about, "all"] += 1
        shares = [f"about the {a} fact {counts[a, 'right'] / max(counts[a, 'all'], 1):.0%} of {counts[a, 'all']}"
                  for a in ("earlier", "later")]
        print(f"  facts in segments {layout}: " + ", ".join(shares))


def _memories(model, sentences, layout, stories: int, rng: random.Random, batch: int = 50):
    """The memory after three write segments for `stories` stories with their facts at `layout`, flattened, and
    the subject places of the earlier and the later fact (indices into the classifier's answers)."""
    cell, tok, size = model.cell, model.tokenizer, model.segment_size
    rows, targets = [], []
    for start in range(0, stories, batch):
        drawn = [reasoning_story(rng) for _ in range(min(batch, stories - start))]
        memory = cell.initial_memory(len(drawn))
        segments = [[] for _ in range(3)]
        for story in drawn:
            facts = [tok.encode(" " + f, add_special_tokens=False) for f in story.facts]
            for k in range(3):
                ids = [t for j, f in enumerate(facts) if layout[j] == k for t in f]
                while len(ids) < size:
                    ids += rng.choice(sentences)
                segments[k].append(ids[:size])
            # The subjects of the earlier and the later fact, and of the fact pointing east or north: the place
            # that answers "What is east (north) of the b?", which needs the direction bound to its place.
            pointing = next(f for f in story.facts if f.split()[3] in ("east", "north"))
            targets.append([cell.answers.index(f.split()[1]) for f in (*story.facts, pointing)])
        for k in range(3):
            memory = cell.write_segment(memory, torch.tensor(segments[k]))
        rows.append(memory.float().flatten(1))
    return torch.cat(rows), torch.tensor(targets)


def _linear_probe(train_x, train_y, test_x, test_y, classes: int, steps: int = 300) -> float:
    """Held-out accuracy of a logistic regression (standardised features, weight decay)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    with torch.enable_grad():
        probe = torch.nn.Linear(train_x.shape[1], classes)
        optim = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.1)
        for _ in range(steps):
            optim.zero_grad()
            torch.nn.functional.cross_entropy(probe(train_x), train_y).backward()
            optim.step()
    return float((probe(test_x).argmax(-1) == test_y).float().mean())


def decodable(model, sentences, stories: int, rng: random.Random) -> None:
    print(f"decodable from the memory (linear probes, {stories} stories to fit, {stories // 2} to score; chance 17%):")
    classes = len(model.cell.answers)
    for layout in ((0, 0), (0, 2)):
        x, y = _memories(model, sentences, layout, stories + stories // 2, rng)
        fit, score = slice(0, stories), slice(stories, None)
        shares = [f"{which} {_linear_probe(x[fit], y[fit, j], x[score], y[score, j], classes):.0%}"
                  for j, which in enumerate(("the earlier fact's place", "the later fact's place",
                                             "the place east (north) of the other"))]
        print(f"  facts in segments {layout}: " + ", ".join(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an encoder checkpoint trained on reasoning")
    parser.add_argument("--noise", required=True, nargs="+", help="text files whose sentences fill the documents")
    parser.add_argument("--stories", type=int, default=60, help="stories per probe and layout (0: only --decode)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--decode", type=int, default=0, metavar="N",
                        help="also fit linear probes on the memory of N stories (scored on N/2 more); e.g. 600")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = load_checkpoint(args.model)
    model.cell.eval()
    if model.cell.kind != "encoder":
        raise SystemExit(f"{args.model}: not an encoder checkpoint")
    sentences = [model.tokenizer.encode(" " + s, add_special_tokens=False)
                 for _, text in read_texts(args.noise) for s in split_sentences(text)]
    sentences = [s for s in sentences if 3 < len(s) < 40]  # whole sentences that fit a segment with room to spare
    rng = random.Random(args.seed)
    with torch.no_grad():
        if args.stories:
            in_context(model, args.stories * 2, rng)
            through_memory(model, sentences, args.stories, rng)
        if args.decode:
            decodable(model, sentences, args.decode, rng)


if __name__ == "__main__":
    main()
