"""How a document becomes segments, and the one function that builds the final segment.

Training, evaluation and `rmt ask` all go through `build_final_segment`, so what `ask` feeds the model is
exactly what training fed it: the document's unfinished tail, then the question prompt, then (in training) the
answer and an end token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..errors import UsageError, shown
from .memory import IGNORE_INDEX, SegmentBatch, WriteStep

QUESTION_TEMPLATE = "\nQuestion: {question}\nAnswer:"
# Room kept for the answer when deciding whether the tail must be flushed first. Training and asking reserve
# the same room, so both take the same decision for the same tail and question.
ANSWER_ROOM = 8


_SPACES = re.compile(r"\s+")  # the characters str.split() splits at, for str patterns


def question_text(question: str) -> str:
    """The question as the model reads it: each run of white space one space, none at either end. One new string,
    not a list of its words, so a pathological question costs no more than its size."""
    return _SPACES.sub(" ", question).strip()


def question_ids(tokenizer, question: str) -> list[int]:
    return tokenizer.encode(QUESTION_TEMPLATE.format(question=question_text(question)), add_special_tokens=False)


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The answer's tokens followed by the end token, so greedy decoding knows where to stop."""
    return tokenizer.encode(" " + answer.strip(), add_special_tokens=False) + [tokenizer.eos_token_id]


class SegmentStream:
    """Token chunks in, whole segments of `segment_size` out; the unfinished tail waits for more tokens.

    `chunks` are read only as far as the next segment needs, so a document of any length is never held whole.
    `tail`: tokens left over from an earlier pass (a memory file's), read before the chunks.
    """

    def __init__(self, segment_size: int, chunks: Iterable[list] = (), tail: Iterable = ()):
        self.segment_size = segment_size
        self._chunks = iter(chunks)
        self._buffer = list(tail)
        self._start = 0  # buffer offset of the next segment

    def fill(self) -> bool:
        """Read chunks until a whole segment waits; False when the chunks ran out first."""
        while len(self._buffer) - self._start < self.segment_size:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._buffer.extend(chunk)
        return True

    def take(self, size: int | None = None) -> list:
        """The next `size` tokens (a segment's by default), fewer if fewer wait; call `fill` first."""
        segment = self._buffer[self._start : self._start + (self.segment_size if size is None else size)]
        self._start += len(segment)
        if self._start > 1 << 16:  # drop taken tokens now and then, not every segment
            del self._buffer[: self._start]
            self._start = 0
        return segment

    def __iter__(self) -> Iterator[list]:
        """The whole segments, as the chunks allow; `tail` holds what is left."""
        while self.fill():
            yield self.take()

    @property
    def tail(self) -> list:
        """The tokens not taken yet: after the last whole segment, the unfinished tail."""
        return self._buffer[self._start :]


def split_document(ids: list, segment_size: int) -> tuple[list[list], list]:
    """Whole segments of `segment_size` tokens, and the unfinished tail (shorter than a segment)."""
    stream = SegmentStream(segment_size, [ids])
    return list(stream), stream.tail


@dataclass
class FinalSegment:
    flush: list[int] | None  # the tail, written to memory first when tail + question do not fit one segment
    input_ids: list[int]
    labels: list[int]


class SegmentError(UsageError, ValueError):
    """What does not fit a final segment: bad input (exit 2) to the commands and the API, and still the ValueError
    it was (the package exports build_final_segment)."""


def build_final_segment(tail: list[int], question: list[int], answer: list[int], segment_size: int) -> FinalSegment:
    """[memory] + unfinished tail + question + answer. The answer may be empty (asking).

    Whether the tail is flushed first depends on the tail and the question only (plus the fixed answer room),
    never on the answer, so training and asking take the same decision.
    """
    if type(segment_size) is not int or segment_size < 1:
        raise SegmentError(f"segment_size {shown(repr(segment_size))}: a whole number of tokens, at least 1")
    for name, ids in (("tail", tail), ("question", question), ("answer", answer)):
        if not isinstance(ids, (list, tuple)) or not all(type(i) is int and i >= 0 for i in ids):
            raise SegmentError(f"{name}: a list of token ids (whole numbers from 0), not {shown(repr(ids), 60)}")
    if len(answer) > ANSWER_ROOM:
        raise SegmentError(f"the answer takes {len(answer)} tokens; at most {ANSWER_ROOM} fit the answer room")
    if len(question) + ANSWER_ROOM > segment_size:
        raise SegmentError(
            f"the question takes {len(question)} tokens; with the {ANSWER_ROOM} the final segment keeps free after "
            f"it (an answer's room) that is more than a segment ({segment_size} tokens)"
        )
    flush = None
    if len(tail) + len(question) + ANSWER_ROOM > segment_size:
        flush, tail = list(tail), []
    input_ids = list(tail) + list(question) + list(answer)
    labels = [IGNORE_INDEX] * (len(tail) + len(question)) + list(answer)
    return FinalSegment(flush, input_ids, labels)


@dataclass
class DocumentSample:
    """A document cut into write segments, and its final segment."""

    writes: list[list[int]]
    final_ids: list[int]
    final_labels: list[int]
    write_labels: list[list[int]] | None = None  # language modelling: targets inside write segments too
    write_has_fact: list[bool] | None = None  # per write segment: holds a fact token (gate supervision)
    answer: int | None = None  # a classifier's label (the encoder cell): the answer's index in its answer set
    bindings: list[int] | None = None  # answers a head on the written memory must name (binding supervision)


def qa_sample(doc_ids: list[int], question: list[int], answer: list[int], segment_size: int,
              fact_marks: list[bool] | None = None,
              more: list[tuple[list[int], list[int]]] = (), answer_index: int | None = None,
              bindings: list[int] | None = None) -> DocumentSample:
    """`fact_marks`, one per document token, says which tokens belong to facts (known when the task made the
    document); the sample then records which write segments hold a fact. `more`: further (question, answer)
    token pairs asked after the first answer, as many as fit the segment (training only: `ask` asks one).
    `answer_index`: for a classifier (the encoder cell), the answer's label; `answer` is then empty, and the
    final segment is the tail and the question, exactly as `ask` builds it. `bindings` (answer indices the
    memory must determine) are kept only when `fact_marks` show every fact token among the written segments: a
    fact in the question's segment is not in the memory to be named."""
    segments, tail = split_document(doc_ids, segment_size)
    final = build_final_segment(tail, question, answer, segment_size)
    for q, a in more:
        if len(final.input_ids) + len(q) + len(a) > segment_size:
            break
        final.input_ids += list(q) + list(a)
        final.labels += [IGNORE_INDEX] * len(q) + list(a)
    writes = segments + ([final.flush] if final.flush else [])
    has_fact, all_written = None, False
    if fact_marks is not None:
        mark_segments, mark_tail = split_document(fact_marks, segment_size)
        has_fact = [any(m) for m in mark_segments] + ([any(mark_tail)] if final.flush else [])
        all_written = bool(final.flush) or not any(mark_tail)
    return DocumentSample(writes, final.input_ids, final.labels, write_has_fact=has_fact, answer=answer_index,
                          bindings=(bindings or None) if all_written else None)


def pad_rows(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of different lengths as one batch (ids, attention mask): right-padded (final segments), or
    left-padded (write segments, whose memory is written at their end)."""
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, where] = torch.tensor(row, dtype=torch.long)
        mask[i, where] = 1
    return ids, mask


def collate(samples: list[DocumentSample], pad_id: int) -> SegmentBatch:
    """Stack samples: write segments left-padded (memory positions stay put), final segments right-padded.

    Write steps are right-aligned: a document with fewer write segments starts later, so every document's last
    write is the batch's last step. Truncated BPTT then cuts all rows at one step and frees the graph before it.
    """
    batch = len(samples)
    num_steps = max(len(s.writes) for s in samples)
    with_labels = any(s.write_labels is not None for s in samples)
    with_facts = all(s.write_has_fact is not None for s in samples)
    steps = []
    for t in range(num_steps):
        width = max((len(s.writes[t - num_steps + len(s.writes)]) for s in samples
                     if t >= num_steps - len(s.writes)), default=0)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        active = torch.zeros(batch, dtype=torch.bool)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long) if with_labels else None
        has_fact = torch.zeros(batch, dtype=torch.bool) if with_facts else None
        for row, s in enumerate(samples):
            k = t - (num_steps - len(s.writes))  # this row's write segment at step t
            if k < 0:
                continue
            seg = s.writes[k]
            start = width - len(seg)
            ids[row, start:] = torch.tensor(seg, dtype=torch.long)
            mask[row, start:] = 1
            active[row] = True
            if with_labels and s.write_labels is not None:
                labels[row, start:] = torch.tensor(s.write_labels[k], dtype=torch.long)
            if with_facts:
                has_fact[row] = s.write_has_fact[k]
        steps.append(WriteStep(ids, mask, active, labels, has_fact))
    width = max(max(len(s.final_ids) for s in samples), 1)
    final_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    final_mask = torch.zeros((batch, width), dtype=torch.long)
    final_labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.final_ids)
        final_ids[row, :n] = torch.tensor(s.final_ids, dtype=torch.long)
        final_mask[row, :n] = 1
        final_labels[row, :n] = torch.tensor(s.final_labels, dtype=torch.long)
    writes = torch.tensor([len(s.writes) for s in samples], dtype=torch.long)
    answers = None
    if all(s.answer is not None for s in samples):
        answers = torch.tensor([s.answer for s in samples], dtype=torch.long)
    bindings = None
    width = max((len(s.bindings) for s in samples if s.bindings), default=0)
    if width:
        bindings = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        for row, s in enumerate(samples):
            if s.bindings:
                bindings[row, :len(s.bindings)] = torch.tensor(s.bindings, dtype=torch.long)
    return SegmentBatch(steps, final_ids, final_mask, final_labels, writes, answers, bindings)
