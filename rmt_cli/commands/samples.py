"""Training and evaluation samples for a recipe's task: stories hidden in noise, or language-modelling text.

`TaskData.sample(index, num_segments)` is a pure function of (seed, index, num_segments).
"""

from __future__ import annotations

import contextlib
import os

from ..errors import UsageError, error_line, one_line, shown
from ..storage.recipe import MemorySpec, TaskSpec
from ..core.segments import QUESTION_TEMPLATE, DocumentSample, answer_ids, qa_sample, question_ids
from ..data.sources import read_texts
from ..data.tasks import (NoiseSource, answer_set, build_marked_haystack, check_answerable, default_placement,
                          make_story, read_babi, rng_for, split_sentences)


@contextlib.contextmanager
def _hub_retries_unsaid():
    """Offline, the hub library logs each of its retries ("... thrown while requesting HEAD ...", "Retrying in 1s",
    a dozen lines) before the one error line rmt writes: kept to its errors while a dataset loads."""
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def load_dataset_texts(name: str, split: str, field: str) -> list[str]:
    try:
        import datasets

        datasets.disable_progress_bars()  # "Generating train split" bars, even under -q: rmt's own bars say enough
        with _hub_retries_unsaid():
            ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many kinds; all mean "cannot load this"
        raise UsageError(f"cannot load dataset {shown(repr(name))} (split {shown(repr(split))}): "
                         f"{error_line(e)}") from None
    if field not in ds.column_names:  # the names come from the files: escaped, as everything read is
        raise UsageError(f"dataset {shown(repr(name))} has no field {shown(repr(field))}; it has "
                         f"{', '.join(shown(column, 80) for column in ds.column_names[:20])}")
    texts = ds[field]
    for row, text in enumerate(texts):  # a number, a list or null read as text would fail deep in training
        if text is not None and not isinstance(text, str):
            raise UsageError(f"dataset {shown(name)}: row {row}: field {shown(field)} holds "
                             f"{type(text).__name__} {shown(repr(text), 40)}, not text")
    return [t for t in texts if t]


def _texts_of_setting(paths: list[str], setting: str, warnings: list[str]) -> list[str]:
    """The texts of a recipe's data paths; an error names the setting (relative paths are from the current
    folder, not the recipe's: the usual surprise), and so does a warning added to `warnings`."""
    try:
        return [t for _, t in read_texts(paths, lambda message: warnings.append(f"{setting}: {message}"))]
    except UsageError as e:
        relative = any(not os.path.isabs(p) and not os.path.exists(p) for p in paths)
        raise UsageError(f"{setting}: {e}" + (" (relative paths are read from the current folder)" if relative
                                               else "")) from None


class TaskData:
    def __init__(self, task: TaskSpec, memory: MemorySpec, seed: int):
        self.task = task
        self.segment_size = memory.segment_size
        self.with_bindings = bool(memory.binding_supervision)  # samples carry their stories' bindings
        self.seed = seed
        self.warnings: list[str] = []  # about the data read (NUL bytes in a text file), for the run to say
        self.babi = self._babi() if task.name == "babi" else None
        self.noise_sentences = self._noise_sentences()
        self.lm_texts = self._lm_texts() if task.name == "lm" else None
        self.placement = task.placement or default_placement(task.name)
        self.tokenizer = None
        self.answers: list[str] | None = None  # a classifier's answer set (an encoder), bound with the tokenizer

    def _babi(self):
        try:
            return read_babi(self.task.babi_path, self.task.babi_split, "task.babi_path")
        except OSError as e:
            raise UsageError(f"task.babi_path: {self.task.babi_path}: {e.strerror or e}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"task.babi_path: {one_line(e)}") from None

    def _lm_texts(self) -> list[str]:
        texts = _texts_of_setting(self.task.lm_paths, "task.lm_paths", self.warnings)
        spec = self.task.lm_dataset
        if spec is not None:
            texts += load_dataset_texts(spec.name, spec.split, spec.text_field)
        if not any(t.strip() for t in texts):
            raise UsageError("task lm: the text (lm_paths / lm_dataset) is empty")
        return texts

    def _noise_sentences(self) -> list[str] | None:
        noise = self.task.noise
        if noise.kind == "files":
            texts = _texts_of_setting(noise.paths, "task.noise.paths", self.warnings)
        elif noise.kind == "dataset":
            texts = load_dataset_texts(noise.dataset, noise.split, noise.text_field)
        else:
            return None
        sentences = [s for t in texts for s in split_sentences(t)]
        if not sentences:
            raise UsageError("task.noise: the noise text has no sentences")
        return sentences

    def corpus(self, count: int):
        """Text to train a tokenizer on: the noise and the stories with their questions and answers."""
        if self.lm_texts is not None:
            yield from self.lm_texts
            return
        noise = NoiseSource(None, self.noise_sentences)
        for i in range(count):
            rng = rng_for(self.seed, i, "corpus")
            story = make_story(self.task.name, rng, self.task.min_facts, self.task.max_facts, self.babi)
            prompt = QUESTION_TEMPLATE.format(question=story.question)
            yield " ".join(story.facts) + " " + noise.text_sample(rng, 20) + f"{prompt} {story.answer}"

    def answer_set(self) -> list[str]:
        """Every answer this task's stories can have: a new encoder's classifier is built over them."""
        return answer_set(self.task.name, self.babi)

    def bind(self, tokenizer, answers: list[str] | None = None) -> "TaskData":
        """`answers`: an encoder's answer set; samples then carry the answer's index instead of its tokens."""
        if answers is not None:
            check_answerable(f"task {self.task.name}", self.answer_set(), answers)
        self.tokenizer = tokenizer
        self.answers = answers
        self.noise = NoiseSource(tokenizer, self.noise_sentences) if self.task.noise.kind != "none" else None
        if self.lm_texts is not None:
            self.lm_ids = [t for text in self.lm_texts for t in tokenizer.encode(text, add_special_tokens=False)]
        return self

    def sample(self, index: int, num_segments: int, facts: tuple[int, int] | None = None,
               training: bool = False, noise: bool = True, task: str | None = None,
               placement: str | None = None) -> DocumentSample:
        """One document. `training` adds the recipe's further questions (task.questions) after the first.
        `noise=False`: the story's facts alone, whatever `num_segments` says. `task`: a generated task's story
        in place of the recipe's (a curriculum stage's own task); `placement`: a stage's own placement."""
        rng = rng_for(self.seed, index, f"sample{num_segments}")
        S = self.segment_size
        if self.lm_texts is not None:
            return self._lm_sample(rng, num_segments)
        low, high = facts or (self.task.min_facts, self.task.max_facts)
        story = make_story(task or self.task.name, rng, low, high, self.babi)
        # The document ends anywhere in its last segment, as ingested text does.
        target = rng.randint((num_segments - 1) * S, num_segments * S - 1)
        if self.noise is None or not noise:
            ids = [t for f in story.facts for t in self.tokenizer.encode(" " + f, add_special_tokens=False)]
            marks = [True] * len(ids)
        else:
            placement = placement or ((self.task.placement or default_placement(task)) if task else self.placement)
            written = (num_segments - 1) * S or target  # the tokens before the question's segment
            ids, marks = build_marked_haystack(story, self.noise, target, rng, placement, written)
        try:
            question = question_ids(self.tokenizer, story.question)
            if self.answers is not None:  # a classifier: the tail and the question, and the answer's label
                bindings = [self.answers.index(a) for a in story.bindings] if self.with_bindings else None
                return qa_sample(ids, question, [], S, marks, answer_index=self.answers.index(story.answer),
                                 bindings=bindings)
            more = [(question_ids(self.tokenizer, q), answer_ids(self.tokenizer, a))
                    for q, a in story.more[: self.task.questions - 1]] if training else []
            return qa_sample(ids, question, answer_ids(self.tokenizer, story.answer), S, marks, more)
        except ValueError as e:  # the question or answer does not fit a segment of this size
            raise UsageError(f"memory.segment_size: {e} (question {story.question!r})") from None

    def _lm_sample(self, rng, num_segments: int) -> DocumentSample:
        S = self.segment_size
        length = num_segments * S
        if len(self.lm_ids) <= length:
            raise UsageError(f"task.lm_paths: {len(self.lm_ids)} tokens of text, fewer than one sample ({length})")
        start = rng.randrange(len(self.lm_ids) - length)
        ids = self.lm_ids[start : start + length]
        segments = [ids[i : i + S] for i in range(0, length, S)]
        return DocumentSample(segments[:-1], segments[-1], segments[-1], write_labels=segments[:-1])
