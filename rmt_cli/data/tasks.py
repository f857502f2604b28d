"""Tasks: bAbI-style stories, the memorization variants, real bAbI files, and the haystack they hide in.

Every story and every sample is a pure function of (seed, index): `rng_for(seed, index)` seeds a private
random generator, so a resumed run, another process or an evaluation sees exactly the same data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from ..errors import UsageError
from .sources import editor_lines

PEOPLE = ["Mary", "John", "Daniel", "Sandra"]
PLACES = ["bathroom", "hallway", "garden", "office", "bedroom", "kitchen"]
MOVES = ["moved to", "went to", "went back to", "journeyed to", "travelled to"]
OBJECTS = ["football", "apple", "milk"]
TAKES = ["picked up", "got", "grabbed", "took"]
DROPS = ["dropped", "discarded", "put down", "left"]
DIRECTIONS = {"north": "south", "south": "north", "east": "west", "west": "east"}

STORY_TASKS = ("memorize", "detect-and-memorize", "reasoning", "qa1", "qa2", "qa3", "qa4", "babi")
BINDING_COUNTS = {"reasoning": 2}  # how many bindings (Story.bindings) a task's stories name
GENERATED_TASKS = tuple(t for t in STORY_TASKS if t != "babi")  # the stories made here: all answer with a place
SIZED_TASKS = ("qa1", "qa2", "qa3")  # the generated stories whose number of facts a range (min, max) sets


def rng_for(seed: int, index: int, purpose: str = "") -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, stable across processes and Python runs.
    return random.Random(f"{seed}:{index}:{purpose}")


@dataclass
class Story:
    facts: list[str]  # a StoryPrefix for a story read from a bAbI file
    question: str
    answer: str
    # Further (question, answer) pairs about the same facts: training can ask them after the first for more
    # supervision per story (every person, not only the one a single question happens to ask about).
    more: list[tuple[str, str]] = field(default_factory=list)
    # Answers that a memory holding the facts must determine, whatever the question (memory.binding_supervision
    # trains a head on the memory to name them): for reasoning, which place lies east (north) of the other and
    # which west (south). Empty for the tasks without.
    bindings: list[str] = field(default_factory=list)


def _move(person: str, place: str, rng: random.Random) -> str:
    return f"{person} {rng.choice(MOVES)} the {place}."


def qa1_story(rng: random.Random, min_facts: int = 2, max_facts: int = 10) -> Story:
    """Single supporting fact: where is a person now (their latest move)."""
    n = rng.randint(min_facts, max_facts)
    where: dict[str, str] = {}
    facts = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        facts.append(_move(person, place, rng))
        where[person] = place
    people = sorted(where)
    person = rng.choice(people)
    others = [p for p in people if p != person]
    rng.shuffle(others)
    return Story(facts, f"Where is {person}?", where[person], [(f"Where is {p}?", where[p]) for p in others])


def memorize_story(rng: random.Random) -> Story:
    person, place = rng.choice(PEOPLE), rng.choice(PLACES)
    return Story([_move(person, place, rng)], f"Where is {person}?", place)


def _object_events(rng: random.Random, n: int):
    """Simulate people moving and carrying objects; yields (facts, object locations over time)."""
    at: dict[str, str] = {}
    holding: dict[str, str] = {}  # object -> person
    history: dict[str, list[str]] = {o: [] for o in OBJECTS}
    facts = []

    def place_of(obj):
        return at.get(holding[obj]) if obj in holding else (history[obj][-1] if history[obj] else None)

    while len(facts) < n:
        person = rng.choice(PEOPLE)
        carried = [o for o, p in holding.items() if p == person]
        free = [o for o in OBJECTS if o not in holding]
        roll = rng.random()
        if person in at and free and roll < 0.3:
            obj = rng.choice(free)
            if history[obj] and history[obj][-1] != at[person]:
                continue  # an object can only be picked up where it lies
            holding[obj] = person
            facts.append(f"{person} {rng.choice(TAKES)} the {obj} there.")
            if not history[obj]:
                history[obj].append(at[person])
        elif carried and roll < 0.45:
            obj = rng.choice(carried)
            del holding[obj]
            facts.append(f"{person} {rng.choice(DROPS)} the {obj}.")
        else:
            place = rng.choice(PLACES)
            at[person] = place
            facts.append(_move(person, place, rng))
            for obj in carried:
                if history[obj][-1] != place:
                    history[obj].append(place)
    return facts, history, place_of


def qa2_story(rng: random.Random, min_facts: int = 2, max_facts: int = 10) -> Story:
    """Two supporting facts: where is an object (who carried it, and where they went)."""
    while True:
        facts, _, place_of = _object_events(rng, rng.randint(max(min_facts, 2), max(max_facts, 2)))
        known = [o for o in OBJECTS if place_of(o)]
        if known:
            obj = rng.choice(known)
            return Story(facts, f"Where is the {obj}?", place_of(obj))


def qa3_story(rng: random.Random, min_facts: int = 4, max_facts: int = 12) -> Story:
    """Three supporting facts: where was an object before its current place."""
    while True:
        facts, history, _ = _object_events(rng, rng.randint(max(min_facts, 4), max(max_facts, 4)))
        moved = [o for o in OBJECTS if len(history[o]) >= 2]
        if moved:
            obj = rng.choice(moved)
            return Story(facts, f"Where was the {obj} before the {history[obj][-1]}?", history[obj][-2])


def reasoning_story(rng: random.Random) -> Story:
    """The seed's reasoning task: two relations about one place in opposite directions ("The hallway is east of
    the bathroom. The bedroom is west of the bathroom."), in random order, and a question either may answer
    ("What is the bathroom east of?" - bedroom). The facts name the same place and the same pair of directions,
    so a question is answered by telling them apart: a memory that kept one fact is right only when the question
    happens to be about it."""
    a, b, c = rng.sample(PLACES, 3)
    d = rng.choice(list(DIRECTIONS))
    back = DIRECTIONS[d]
    facts = [f"The {a} is {d} of the {b}.", f"The {c} is {back} of the {b}."]
    rng.shuffle(facts)
    # "the b is back of X" means X is d of the b: a; "the b is d of X" means X is back of the b: c.
    question, answer = rng.choice([(f"What is {d} of the {b}?", a), (f"What is {back} of the {b}?", c),
                                   (f"What is the {b} {back} of?", a), (f"What is the {b} {d} of?", c)])
    # The binding of places to directions, which neither place alone gives: a bag of the two places answers half.
    bindings = [a, c] if d in ("east", "north") else [c, a]
    return Story(facts, question, answer, bindings=bindings)


def qa4_story(rng: random.Random) -> Story:
    """Two-argument relations: "The hallway is east of the bathroom." """
    a, b, c = rng.sample(PLACES, 3)
    d1 = rng.choice(list(DIRECTIONS))
    d2 = rng.choice([d for d in DIRECTIONS if d not in (d1, DIRECTIONS[d1])])
    facts = [f"The {a} is {d1} of the {b}.", f"The {c} is {d2} of the {b}."]
    rng.shuffle(facts)
    if rng.random() < 0.5:
        return Story(facts, f"What is {d1} of the {b}?", a)
    return Story(facts, f"What is the {b} {DIRECTIONS[d1]} of?", a)


BABI_SPLITS = ("all", "train", "valid")
VALID_EVERY = 10  # every 10th story of a bAbI file is the validation split


BABI_MAX_BYTES = 64 << 20


class StoryPrefix(Sequence):
    """The first `end` statements of a bAbI story, as a read-only list. Every question of a story shares the story's
    one list: a copy per question made reading quadratic (a 3.6 MB file took 5.5 GB, the fourteenth review)."""

    __slots__ = ("_statements", "_end")

    def __init__(self, statements: list[str], end: int):
        self._statements, self._end = statements, end

    def __len__(self) -> int:
        return self._end

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._statements[j] for j in range(*i.indices(self._end))]
        if not -self._end <= i < self._end:
            raise IndexError("story statement index out of range")
        return self._statements[i % self._end]

    def __iter__(self):
        return islice(self._statements, self._end)

    def __eq__(self, other):  # equal to a list of the same statements, as the copy it replaces was
        if not isinstance(other, (list, StoryPrefix)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # unhashable, as a list

    def __repr__(self) -> str:
        return repr(list(self))


def read_babi(path: str | Path, split: str = "all", what: str = "bAbI file") -> list[Story]:
    """Stories from a bAbI-format file: `ID text` lines; `ID question<TAB>answer<TAB>ids`; IDs restart per story.

    Each question becomes one Story holding every statement of its story before it. `split` "valid" keeps
    every 10th story (all its questions), "train" the others: a split by story, so no story is in both.
    """
    if split not in BABI_SPLITS:
        raise ValueError(f"unknown bAbI split {split!r}; choose {', '.join(BABI_SPLITS)}")
    stories: list[Story] = []
    context: list[str] = []
    story_number = -1
    from .sources import home_path, read_small_file

    # A bAbI file is a few MB; a size cap keeps /dev/zero or a wrong path to a huge file from filling memory.
    raw_bytes = read_small_file(Path(home_path(str(path))), what, limit=BABI_MAX_BYTES)  # `what`: the setting named
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as e:  # named by line, as every other fault of the file is
        line_no = raw_bytes.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line_no}: not UTF-8 text ({e.reason})") from None
    for line_no, raw in enumerate(editor_lines(text), 1):  # a byte order mark (Windows editors write one) dropped
        if not raw.strip():
            continue
        head, _, rest = raw.partition(" ")
        if not (head.isascii() and head.isdigit()):
            raise ValueError(f"{path}:{line_no}: a bAbI line starts with a number, got {raw[:40]!r}")
        if head == "1":
            context = []
            story_number += 1
        if "\t" in rest:
            # Exactly three fields, the last the supporting statements' numbers: a statement that holds a tab
            # would otherwise be scored as a question.
            parts = rest.split("\t")
            if len(parts) != 3 or not parts[0].strip() or not parts[1].strip() or \
                    not all(n.isascii() and n.isdigit() for n in parts[2].split()):
                raise ValueError(f"{path}:{line_no}: a question line is ID question<TAB>answer<TAB>ids, with a "
                                 f"question, an answer and the numbers of the statements it rests on; got "
                                 f"{raw[:60]!r}")
            in_valid = story_number % VALID_EVERY == VALID_EVERY - 1
            if split == "all" or (split == "valid") == in_valid:
                stories.append(Story(StoryPrefix(context, len(context)), parts[0].strip(), parts[1].strip()))
        elif not rest.strip():
            raise ValueError(f"{path}:{line_no}: an empty statement (a bAbI line is ID text)")
        else:
            context.append(rest.strip())
    if not stories:
        raise ValueError(f"{path}: no questions found (is this a bAbI file{'' if split == 'all' else ', with ' + split + ' stories'}?)")
    return stories


# --- noise --------------------------------------------------------------------------------------------------

_SUBJECTS = ["The old man", "A young woman", "The farmer", "Her brother", "The captain", "A small child",
             "The teacher", "Our neighbour", "The doctor", "A stranger", "The baker", "His sister"]
_VERBS = ["saw", "painted", "bought", "carried", "found", "sold", "mended", "watched", "lost", "cleaned"]
_THINGS = ["a red boat", "the wooden chair", "an old map", "a green coat", "the silver bell", "a heavy box",
           "the blue kettle", "a broken clock", "the tall ladder", "a yellow kite", "the stone bridge"]
_TAILS = ["near the river", "before dawn", "in the market", "after the storm", "by the road", "at noon",
          "on the hill", "during the fair", "under the trees", "with great care", "last winter"]


def synthetic_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_THINGS)} {rng.choice(_TAILS)}."


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if s.strip()]


class NoiseSource:
    """Sentences to hide facts among: built-in synthetic sentences, or consecutive sentences of real text."""

    def __init__(self, tokenizer, sentences: list[str] | None = None):
        self.tokenizer = tokenizer
        self.sentences = sentences  # None: synthetic
        self._ids: list[list[int]] | None = None
        self._cache: dict[str, list[int]] = {}

    def _encode(self, sentence: str) -> list[int]:
        ids = self._cache.get(sentence)
        if ids is None:
            ids = self.tokenizer.encode(" " + sentence, add_special_tokens=False)
            if len(self._cache) < 100_000:
                self._cache[sentence] = ids
        return ids

    def take(self, rng: random.Random, num_tokens: int) -> list[list[int]]:
        """Token ids of consecutive sentences adding up to at least `num_tokens`."""
        out, total = [], 0
        if self.sentences is None:
            while total < num_tokens:
                out.append(self._encode(synthetic_sentence(rng)))
                total += len(out[-1])
            return out
        if self._ids is None:
            self._ids = [
                ids for ids in self.tokenizer(
                    [" " + s for s in self.sentences], add_special_tokens=False
                )["input_ids"] if ids
            ]
        i = rng.randrange(len(self._ids))
        while total < num_tokens:
            out.append(self._ids[i % len(self._ids)])
            total += len(out[-1])
            i += 1
        return out

    def text_sample(self, rng: random.Random, num_sentences: int) -> str:
        if self.sentences is None:
            return " ".join(synthetic_sentence(rng) for _ in range(num_sentences))
        i = rng.randrange(len(self.sentences))
        return " ".join(self.sentences[(i + k) % len(self.sentences)] for k in range(num_sentences))


def build_haystack(story: Story, noise: NoiseSource, target_tokens: int, rng: random.Random,
                   placement: str = "random", written_tokens: int | None = None) -> list[int]:
    """Hide the story's facts, in order, at sentence boundaries of noise, to exactly `target_tokens` tokens.

    The result is longer only when the facts alone need more. `placement`: "start" puts the facts first (the
    memorize task), "random" scatters them at random boundaries (in order), "spread" puts fact k of n at a random
    boundary of the k-th of n equal bands of the first `written_tokens` tokens (the segments the memory is
    written from; default: all), so that facts stand apart and the memory must carry each across the others'
    writes, rather than the last fact sitting in the question's segment (facts too long for the written segments
    spread over the whole document).
    """
    return build_marked_haystack(story, noise, target_tokens, rng, placement, written_tokens)[0]


def _spread_slots(sentences: list[list[int]], fact_ids: list[list[int]], written_tokens: int,
                  rng: random.Random) -> list[int]:
    """"spread" placement: a boundary (the index of the sentence a fact goes before) in each of len(fact_ids)
    equal bands of the boundaries whose noise, with every fact, still starts within the first `written_tokens`."""
    num_facts = len(fact_ids)
    room = written_tokens - sum(len(f) for f in fact_ids)  # the noise that fits beside the facts
    boundaries, start = 0, 0
    for sentence in sentences:  # boundary i starts at the tokens of sentences[:i]
        if start >= room:
            break
        boundaries += 1
        start += len(sentence)
    boundaries = max(boundaries, 1)
    slots = []
    for k in range(num_facts):
        low = k * boundaries // num_facts
        high = max(low, (k + 1) * boundaries // num_facts - 1)
        slots.append(rng.randint(low, high))
    return slots


def build_marked_haystack(story: Story, noise: NoiseSource, target_tokens: int, rng: random.Random,
                          placement: str = "random",
                          written_tokens: int | None = None) -> tuple[list[int], list[bool]]:
    """`build_haystack`, and for each token whether it belongs to a fact (what the gate supervision needs)."""
    tok = noise.tokenizer
    fact_ids = [tok.encode(" " + f, add_special_tokens=False) for f in story.facts]
    fact_tokens = sum(len(f) for f in fact_ids)
    noise_tokens = max(target_tokens - fact_tokens, 0)
    sentences = noise.take(rng, noise_tokens) if noise_tokens else []
    if placement == "start":
        slots = [0] * len(fact_ids)
    elif placement == "spread":
        # Facts that do not fit the written segments spread over the whole document (some then reach the
        # question's segment): bunched at its start they would run into it all the same.
        fits = written_tokens and fact_tokens < written_tokens
        slots = _spread_slots(sentences, fact_ids, written_tokens if fits else target_tokens, rng)
    else:
        # Never after the last noise sentence: the document ends in noise, so trimming reaches the target.
        last = max(len(sentences) - 1, 0)
        slots = sorted(rng.randint(0, last) for _ in fact_ids)
    pieces: list[tuple[list[int], bool]] = []  # (token ids, is a fact)
    f = 0
    for i in range(len(sentences) + 1):
        while f < len(fact_ids) and slots[f] == i:
            pieces.append((fact_ids[f], True))
            f += 1
        if i < len(sentences):
            pieces.append((sentences[i], False))
    if pieces:
        # A document starts without the space that joins sentences, exactly as a text file read by ingest.
        first, is_fact = pieces[0]
        pieces[0] = (tok.encode(tok.decode(first).lstrip(), add_special_tokens=False), is_fact)
    ids: list[int] = []
    marks: list[bool] = []
    last_fact_end = 0
    for piece, is_fact in pieces:
        ids.extend(piece)
        marks.extend([is_fact] * len(piece))
        if is_fact:
            last_fact_end = len(ids)
    # Trim surplus noise from the end, never a fact.
    end = max(target_tokens, last_fact_end)
    return ids[:end], marks[:end]


def make_story(task: str, rng: random.Random, min_facts: int, max_facts: int, babi: list[Story] | None) -> Story:
    if task == "memorize" or task == "detect-and-memorize":
        return memorize_story(rng)
    if task == "reasoning":
        return reasoning_story(rng)
    if task == "qa1":
        return qa1_story(rng, min_facts, max_facts)
    if task == "qa2":
        return qa2_story(rng, min_facts, max_facts)
    if task == "qa3":
        return qa3_story(rng, min_facts, max_facts)
    if task == "qa4":
        return qa4_story(rng)
    if task == "babi":
        return babi[rng.randrange(len(babi))]
    raise ValueError(f"unknown task {task!r}")


def default_placement(task: str) -> str:
    return "start" if task == "memorize" else "random"


def check_answerable(what: str, needed: list[str], answers: list[str]) -> None:
    """An encoder's classifier can only name `answers`: stories whose answers lie outside them could never be
    answered right (a 0% that says nothing of the memory). UsageError naming them, else nothing."""
    unknown = [a for a in needed if a not in answers]
    if unknown:
        raise UsageError(f"{what}: answers {', '.join(repr(a) for a in unknown[:5])} are not among the "
                         f"{len(answers)} the encoder's classifier knows "
                         f"({', '.join(answers[:8])}{', ...' if len(answers) > 8 else ''})")


def answer_set(task: str, babi: list[Story] | None = None) -> list[str]:
    """Every answer a task's stories can have, in a fixed order: what a classifier (the encoder cell) chooses
    among. The generators' stories answer with a place; a bAbI file's with whatever its answers are."""
    if task == "babi":
        return sorted({story.answer for story in babi or []})
    if task in STORY_TASKS:
        return list(PLACES)
    raise ValueError(f"task {task!r} has no answer set to classify into")
