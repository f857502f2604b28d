"""`rmt eval`: accuracy against document length, BABILong-style, on the ingest/ask path.

For each length (in tokens) N seeded samples are made: a story (the task generators qa1-qa4, or the stories of
any bAbI-format file) whose facts are hidden in order at random sentence boundaries of noise text. Each
document is streamed: its noise is drawn sentence by sentence from the tokenized noise corpus and never built
whole, so a 1M-token sample costs no more memory than a 1k one. Documents of one length run side by side, a
segment at a time, through `MemoryCell.write_segment` (what `rmt ingest` runs); the question is put with
`segments.build_final_segment` and answered by `ask.respond` (what `rmt ask` runs, greedy: a causal LM generates,
an encoder's classifier picks), and an answer counts as right when it is exactly the story's answer. The memorize
task puts its fact at the start of the document, as training does; the others at random points.

Beside each accuracy: the same weights with the memory reset (the final segment read from the initial memory),
and the constant guess (the most frequent answer among the samples), each with a 95% Wilson interval.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..atomic import plain_pyplot, save_figure
from ..storage.checkpoint import LoadedModel
from ..errors import UsageError
from .ask import respond
from ..core.segments import ANSWER_ROOM, SegmentStream, answer_ids, build_final_segment, pad_rows, question_ids
from ..data.tasks import STORY_TASKS, Story, default_placement, make_story, rng_for

_LENGTH = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)\s*$", re.ASCII)  # ASCII digits only: "٣k" is no length


def parse_lengths(text: str) -> list[int]:
    """'1k,16k,128k,1M' -> [1000, 16000, 128000, 1000000] (k = 1,000, M = 1,000,000 and G = 10**9 tokens)."""
    lengths = []
    for part in text.split(","):
        m = _LENGTH.match(part)
        if not m:
            raise UsageError(f"--lengths: {part.strip()!r} is not a length such as 4000, 16k or 1M")
        value = float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000, "g": 10**9}[m.group(2).lower()]
        if value < 1 or value > 1e10:
            raise UsageError(f"--lengths: {part.strip()!r} is out of range (1 token to 10G tokens)")
        lengths.append(int(value))
    return lengths


def format_length(tokens: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if tokens >= size and tokens % (size // 10 if size > 1000 else size) == 0:
            value = tokens / size
            return f"{value:g}{unit}"
    return str(tokens)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion; sound at 0% and 100% too, where the normal approximation is not."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class NoiseCorpus:
    """Sentences of noise text, tokenized once (as training tokenizes them: each with a leading space)."""

    def __init__(self, tokenizer, sentences: list[str]):
        if not sentences:
            raise UsageError("--noise: the noise text has no sentences")
        encoded = tokenizer([" " + s for s in sentences], add_special_tokens=False)["input_ids"]
        self.sentences = [ids for ids in encoded if ids]
        self.tokenizer = tokenizer

    def stream(self, rng: random.Random) -> Iterator[list[int]]:
        """Consecutive sentences from a random start, wrapping around the corpus for as long as asked."""
        i = rng.randrange(len(self.sentences))
        while True:
            yield self.sentences[i % len(self.sentences)]
            i += 1


def haystack_pieces(story: Story, noise: NoiseCorpus, length: int, rng: random.Random,
                    placement: str = "random") -> Iterator[list[int]]:
    """The document as token pieces: noise sentences with the story's facts inserted, in order, at random
    sentence boundaries (`placement` "start": first); exactly `length` tokens (more only when the facts alone need
    more), ending in noise.

    Streamed: the document is never held whole.
    """
    tok = noise.tokenizer
    facts = [tok.encode(" " + f, add_special_tokens=False) for f in story.facts]
    pending = sum(len(f) for f in facts)  # fact tokens still to come
    # Each fact goes in at the first sentence boundary at or after a random point of the noise.
    points = sorted(rng.randrange(max(length - pending, 1)) for _ in facts)
    if placement == "start":
        points = [0] * len(facts)
    emitted, noise_used, f = 0, 0, 0
    first = True

    def starting(piece: list[int]) -> list[int]:
        nonlocal first
        if first:  # a document starts without the joining space, as a text file read by ingest
            first = False
            return tok.encode(tok.decode(piece).lstrip(), add_special_tokens=False)
        return piece

    sentences = noise.stream(rng)
    while True:
        room = length - emitted - pending  # noise that still fits
        while f < len(facts) and (points[f] <= noise_used or room <= 0):
            piece = starting(facts[f])
            pending -= len(facts[f])
            f += 1
            yield piece
            emitted += len(piece)
        room = length - emitted - pending
        if room <= 0:
            return
        piece = starting(next(sentences))[:room]  # the last noise is trimmed to the exact length
        yield piece
        emitted += len(piece)
        noise_used += len(piece)


@dataclass
class _Document:
    story: Story
    tokens: SegmentStream  # the haystack's pieces, cut into segments as ingest cuts a file


@dataclass
class LengthResult:
    length: int
    samples: int
    correct: int
    correct_reset: int
    constant_guess: int
    guess: str
    tokens: int
    answers: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        out = {"length": self.length, "samples": self.samples, "tokens": self.tokens, "constant_guess_answer": self.guess}
        for key, hits in (("accuracy", self.correct), ("accuracy_reset", self.correct_reset),
                          ("constant_guess", self.constant_guess)):
            low, high = wilson_interval(hits, self.samples)
            out[key] = hits / self.samples
            out[key + "_ci95"] = [round(low, 4), round(high, 4)]
        return out


@dataclass
class StorySource:
    """Where stories come from: a task generator, or a list of stories read from a bAbI file."""

    task: str = "qa1"
    min_facts: int = 2
    max_facts: int = 10
    babi: list[Story] | None = None
    seed: int = 0

    def story(self, length: int, index: int) -> tuple[Story, random.Random]:
        rng = rng_for(self.seed, index, f"eval{length}")
        return make_story(self.name, rng, self.min_facts, self.max_facts, self.babi), rng

    @property
    def name(self) -> str:
        task = "babi" if self.babi is not None else self.task
        if task not in STORY_TASKS:
            raise UsageError(f"--task {task!r}: choose one of {', '.join(STORY_TASKS)}")
        return task

    @property
    def placement(self) -> str:
        """Where the facts go, as training puts them: first for memorize, at random points otherwise."""
        return default_placement(self.name)


@torch.inference_mode()
def evaluate_length(model: LoadedModel, noise: NoiseCorpus, stories: StorySource, length: int, samples: int,
                    batch_size: int = 16, on_tokens: Callable[[int], None] | None = None,
                    keep_answers: bool = False) -> LengthResult:
    cell, tok, S = model.cell, model.tokenizer, model.segment_size
    device = cell.memory.device
    result = LengthResult(length, samples, 0, 0, 0, "", 0)
    gold: list[str] = []
    for start in range(0, samples, batch_size):
        docs = []
        for i in range(start, min(start + batch_size, samples)):
            story, rng = stories.story(length, i)
            pieces = haystack_pieces(story, noise, length, rng, stories.placement)
            docs.append(_Document(story, SegmentStream(S, pieces)))
        memory = cell.initial_memory(len(docs)).clone()
        while True:
            rows = [r for r, d in enumerate(docs) if d.tokens.fill()]  # as ingest: every whole segment
            if not rows:
                break
            ids = torch.tensor([docs[r].tokens.take() for r in rows], dtype=torch.long, device=device)
            index = torch.tensor(rows, device=device)
            memory[index] = cell.write_segment(memory[index], ids)
            result.tokens += S * len(rows)
            if on_tokens is not None:
                on_tokens(S * len(rows))
        finals = [_final(d, tok, S) for d in docs]
        for mode in ("memory", "reset"):
            start_memory = memory if mode == "memory" else cell.initial_memory(len(docs))
            said = _answers(model, start_memory, finals, device)
            right = [text == d.story.answer for text, d in zip(said, docs)]
            if mode == "memory":
                result.correct += sum(right)
                if keep_answers:
                    result.answers += [{"question": d.story.question, "answer": d.story.answer, "said": text}
                                       for d, text in zip(docs, said)]
            else:
                result.correct_reset += sum(right)
        result.tokens += sum(len(d.tokens.tail) for d in docs)
        gold += [d.story.answer for d in docs]
    result.guess, result.constant_guess = Counter(gold).most_common(1)[0]
    return result


def _final(doc: _Document, tok, S: int):
    try:
        return build_final_segment(doc.tokens.tail, question_ids(tok, doc.story.question), [], S)
    except ValueError as e:
        raise UsageError(f"{e} (question {doc.story.question!r})") from None


def too_long_answers(stories: list[Story], tokenizer) -> int:
    """How many of `stories` have an answer longer than the room a causal LM answers in (ANSWER_ROOM tokens):
    one that can never be said, so its story scores 0% whatever the memory holds."""
    return sum(len(answer_ids(tokenizer, story.answer)) - 1 > ANSWER_ROOM for story in stories)  # - 1: the end token


def _answers(model: LoadedModel, memory: torch.Tensor, finals, device) -> list[str]:
    """What `rmt ask` would print for each document: flush the tail if it must, then greedy decoding."""
    cell, pad_id = model.cell, model.tokenizer.pad_token_id
    flushed = [r for r, f in enumerate(finals) if f.flush]
    if flushed:
        memory = memory.clone()
        ids, mask = pad_rows([finals[r].flush for r in flushed], pad_id, left=True)  # as write segments are
        index = torch.tensor(flushed, device=device)
        memory[index] = cell.write_segment(memory[index], ids.to(device), mask.to(device))
    return [reply.answer for reply in respond(model, memory, [f.input_ids for f in finals], max_new_tokens=ANSWER_ROOM)]


def evaluate_lengths(model: LoadedModel, noise: NoiseCorpus, stories: StorySource, lengths: list[int],
                     samples: list[int], batch_size: int = 16, on_tokens: Callable[[int], None] | None = None,
                     keep_answers: bool = False) -> list[LengthResult]:
    return [evaluate_length(model, noise, stories, length, n, batch_size, on_tokens, keep_answers)
            for length, n in zip(lengths, samples)]


def plot_results(rows: list[dict], path: str, title: str = "") -> None:
    with plain_pyplot() as plt:
        _draw_results(plt, rows, path, title)


def _draw_results(plt, rows: list[dict], path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["length"] for r in rows]
    for key, label, style in (("accuracy", "RMT with memory", "o-"), ("accuracy_reset", "memory reset", "s--"),
                              ("constant_guess", "constant guess", "x:")):
        y = [100 * r[key] for r in rows]
        low = [100 * (r[key] - r[key + "_ci95"][0]) for r in rows]
        high = [100 * (r[key + "_ci95"][1] - r[key]) for r in rows]
        ax.errorbar(x, y, yerr=[low, high], fmt=style, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    try:
        save_figure(fig, path)  # never a half-written picture, never onto a FIFO or through a link's back
    finally:
        plt.close(fig)
