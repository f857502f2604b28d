"""Story tasks, haystacks, bAbI files and noise: determinism and the consistency of every story."""

import re

import pytest

from rmt_cli.commands.samples import TaskData
from rmt_cli.data.sources import open_document, read_texts
from rmt_cli.errors import UsageError
from rmt_cli.core.memory import IGNORE_INDEX
from rmt_cli.storage.recipe import MemorySpec, NoiseSpec, TaskSpec
from rmt_cli.data.tasks import (DIRECTIONS, DROPS, MOVES, OBJECTS, PEOPLE, PLACES, TAKES, NoiseSource, Story,
                           answer_set, build_haystack, build_marked_haystack, default_placement, make_story,
                           read_babi, rng_for, split_sentences)

TASKS = ["memorize", "detect-and-memorize", "reasoning", "qa1", "qa2", "qa3", "qa4"]

_alt = lambda words: "|".join(re.escape(w) for w in words)  # noqa: E731
MOVE_RE = re.compile(rf"^({_alt(PEOPLE)}) ({_alt(MOVES)}) the ({_alt(PLACES)})\.$")
TAKE_RE = re.compile(rf"^({_alt(PEOPLE)}) ({_alt(TAKES)}) the ({_alt(OBJECTS)}) there\.$")
DROP_RE = re.compile(rf"^({_alt(PEOPLE)}) ({_alt(DROPS)}) the ({_alt(OBJECTS)})\.$")
RELATION_RE = re.compile(rf"^The ({_alt(PLACES)}) is ({_alt(DIRECTIONS)}) of the ({_alt(PLACES)})\.$")


def story(task, index, seed=0, min_facts=2, max_facts=10):
    return make_story(task, rng_for(seed, index), min_facts, max_facts, None)


# --- determinism -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_stories_are_a_function_of_seed_and_index(task):
    assert story(task, 7) == story(task, 7)
    distinct = {repr(story(task, i)) for i in range(30)}
    assert len(distinct) > 20
    assert [story(task, i, seed=1) for i in range(10)] != [story(task, i, seed=2) for i in range(10)]


def test_rng_for_separates_purposes():
    assert rng_for(0, 1, "a").random() == rng_for(0, 1, "a").random()
    assert rng_for(0, 1, "a").random() != rng_for(0, 1, "b").random()


@pytest.mark.parametrize("task", ["memorize", "qa2"])
def test_task_data_samples_are_deterministic(tokenizer, task):
    def data(seed):
        return TaskData(TaskSpec(name=task), MemorySpec(segment_size=40), seed).bind(tokenizer)

    a, b = data(0), data(0)
    for index in range(5):
        assert a.sample(index, 2) == b.sample(index, 2)  # another instance (another process) agrees
    assert a.sample(0, 2) != a.sample(1, 2)
    assert a.sample(0, 2) != a.sample(0, 3)
    assert a.sample(0, 2) != data(1).sample(0, 2)


# --- story consistency ---------------------------------------------------------------------------------------


def test_qa1_answer_is_the_latest_place_of_the_asked_person():
    for i in range(200):
        s = story("qa1", i)
        where = {}
        for fact in s.facts:
            m = MOVE_RE.match(fact)
            assert m, fact
            where[m.group(1)] = m.group(3)
        person = re.fullmatch(r"Where is (\w+)\?", s.question).group(1)
        assert s.answer == where[person]
        assert 2 <= len(s.facts) <= 10


def test_qa1_fact_count_follows_min_and_max():
    counts = {len(story("qa1", i, min_facts=3, max_facts=4).facts) for i in range(50)}
    assert counts == {3, 4}


def simulate_objects(facts):
    """Replay move/take/drop facts, checking each is possible; returns each object's history of places."""
    at, holder, lies, history = {}, {}, {}, {o: [] for o in OBJECTS}
    for fact in facts:
        if m := MOVE_RE.match(fact):
            person, place = m.group(1), m.group(3)
            at[person] = place
            for obj, who in holder.items():
                if who == person and history[obj][-1] != place:
                    history[obj].append(place)
        elif m := TAKE_RE.match(fact):
            person, obj = m.group(1), m.group(3)
            assert person in at, f"{fact}: {person} has no place yet"
            assert obj not in holder, f"{fact}: the {obj} is already carried"
            if obj in lies:
                assert lies[obj] == at[person], f"{fact}: the {obj} lies in the {lies[obj]}"
            holder[obj] = person
            if not history[obj]:
                history[obj].append(at[person])
        elif m := DROP_RE.match(fact):
            person, obj = m.group(1), m.group(3)
            assert holder.get(obj) == person, f"{fact}: {person} does not carry the {obj}"
            del holder[obj]
            lies[obj] = at[person]
        else:
            raise AssertionError(f"unparsed fact {fact!r}")
    place_now = {o: (at[holder[o]] if o in holder else lies.get(o)) for o in OBJECTS}
    return history, place_now


def test_qa2_stories_are_consistent_and_answered_by_the_objects_place():
    kinds = set()
    for i in range(200):
        s = story("qa2", i)
        _, place_now = simulate_objects(s.facts)
        obj = re.fullmatch(r"Where is the (\w+)\?", s.question).group(1)
        assert s.answer == place_now[obj], (s.facts, s.question, s.answer)
        kinds |= {r.pattern for r in (TAKE_RE, DROP_RE) for f in s.facts if r.match(f)}
    assert len(kinds) == 2  # takes and drops both happen


def test_qa3_answer_is_the_place_before_the_current_one():
    for i in range(200):
        s = story("qa3", i)
        history, place_now = simulate_objects(s.facts)
        m = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", s.question)
        obj, current = m.group(1), m.group(2)
        assert history[obj][-1] == current == place_now[obj], (s.facts, s.question)
        assert s.answer == history[obj][-2] != current


def _relations_about_one_place(s) -> list[tuple[str, str, str]]:
    """A story's two relations (x, direction, y: x is direction of y), both about one place y."""
    relations = [RELATION_RE.match(f).groups() for f in s.facts]
    assert len(relations) == 2 and relations[0][2] == relations[1][2]
    return relations


def _answers_by_relations(s, relations) -> tuple[list[str], str]:
    """The places the relations give as the question's answer, and the question's form ("of" or "reverse")."""
    if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", s.question):
        d, y = m.groups()
        return [x for x, dd, yy in relations if dd == d and yy == y], "of"
    y, d = re.fullmatch(r"What is the (\w+) (\w+) of\?", s.question).groups()
    # "the y is d of X" means X is the opposite of d, of y
    return [x for x, dd, yy in relations if dd == DIRECTIONS[d] and yy == y], "reverse"


def test_qa4_relations_answer_the_question():
    forms = set()
    for i in range(100):
        s = story("qa4", i)
        relations = _relations_about_one_place(s)
        matches, form = _answers_by_relations(s, relations)
        forms.add(form)
        assert matches == [s.answer], (s.facts, s.question, s.answer)
    assert forms == {"of", "reverse"}


def test_reasoning_story_needs_both_relations():
    """The seed's reasoning task: two relations about one place in opposite directions, and a question that either
    answers, each as often; the answer follows from the relations, and from one of them alone only half the time."""
    answered_by = set()
    forms = set()
    for i in range(200):
        s = story("reasoning", i)
        relations = _relations_about_one_place(s)
        assert DIRECTIONS[relations[0][1]] == relations[1][1]  # opposite directions
        matches, form = _answers_by_relations(s, relations)
        forms.add(form)
        assert matches == [s.answer], (s.facts, s.question, s.answer)
        answered_by.add(s.facts.index(next(f for f in s.facts if f.startswith(f"The {s.answer} "))))
    assert forms == {"of", "reverse"} and answered_by == {0, 1}  # the first fact answers some, the second others


def test_answer_sets_are_what_a_classifier_chooses_among():
    for task in TASKS:
        assert set(answer_set(task)) == set(PLACES)
        assert all(story(task, i).answer in PLACES for i in range(30))
    babi = [Story(["x"], "q", "yes"), Story(["y"], "q", "no"), Story(["z"], "q", "yes")]
    assert answer_set("babi", babi) == ["no", "yes"]
    with pytest.raises(ValueError):
        answer_set("lm")


def test_memorize_story_is_one_move_fact():
    for i in range(50):
        s = story("memorize", i)
        (fact,) = s.facts
        m = MOVE_RE.match(fact)
        assert s.question == f"Where is {m.group(1)}?" and s.answer == m.group(3)


# --- haystacks -------------------------------------------------------------------------------------------------


def find_in_order(text, facts):
    """Character offsets of the facts in the text, each after the previous one; None if one is missing."""
    positions, start = [], 0
    for fact in facts:
        pos = text.find(fact, start)
        if pos < 0:
            return None
        positions.append(pos)
        start = pos + len(fact)
    return positions


def fact_ids(tokenizer, s):
    return [tokenizer.encode(" " + f, add_special_tokens=False) for f in s.facts]


def test_memorize_puts_the_fact_first(tokenizer):
    assert default_placement("memorize") == "start"
    data = TaskData(TaskSpec(name="memorize"), MemorySpec(segment_size=40), 0).bind(tokenizer)
    noise = NoiseSource(tokenizer)
    for i in range(30):
        s = story("memorize", i)
        text = tokenizer.decode(build_haystack(s, noise, 120, rng_for(0, i, "h"), "start"))
        assert text.lstrip().startswith(s.facts[0] + " "), text[:60]
        # And in TaskData's samples: the document opens with the fact about the asked person and place.
        sample = data.sample(i, 3)
        doc = tokenizer.decode([t for w in sample.writes for t in w] + sample.final_ids).lstrip()
        person = re.search(r"Question: Where is (\w+)\?", doc).group(1)
        answer = tokenizer.decode([t for t in sample.final_labels if t != IGNORE_INDEX][:-1]).strip()
        first = split_sentences(doc)[0]
        m = MOVE_RE.match(first)
        assert m and m.group(1) == person and m.group(3) == answer, doc[:60]


def test_detect_and_memorize_hides_the_fact_anywhere(tokenizer):
    assert default_placement("detect-and-memorize") == "random"
    noise = NoiseSource(tokenizer)
    starts = []
    for i in range(30):
        s = story("detect-and-memorize", i)
        ids = build_haystack(s, noise, 150, rng_for(0, i, "h"), default_placement("detect-and-memorize"))
        pos = find_in_order(tokenizer.decode(ids), s.facts)
        assert pos is not None
        starts.append(pos[0])
    assert len(set(starts)) > 10 and max(starts) > 200


@pytest.mark.parametrize("placement", ["random", "spread"])
@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3", "detect-and-memorize"])
def test_random_placement_keeps_the_facts_in_order(tokenizer, task, placement):
    noise = NoiseSource(tokenizer)
    for i in range(30):
        s = story(task, i)
        text = tokenizer.decode(build_haystack(s, noise, 200, rng_for(0, i, "h"), placement))
        assert find_in_order(text, s.facts) is not None, s.facts
        # Facts sit at sentence boundaries: each one is a whole sentence of the document.
        sentences = split_sentences(text)
        assert [x for x in sentences if x in s.facts] == s.facts


def test_haystack_hits_the_target_length_with_facts_first(tokenizer):
    noise = NoiseSource(tokenizer)
    for i in range(40):
        s = story("qa1", i)
        facts = sum(map(len, fact_ids(tokenizer, s)))
        for target in (facts, facts + 1, facts + 37, 300):
            ids = build_haystack(s, noise, target, rng_for(0, i, str(target)), "start")
            assert len(ids) == target


def test_haystack_longer_only_to_keep_every_fact(tokenizer):
    noise = NoiseSource(tokenizer)
    s = story("qa1", 3, min_facts=8, max_facts=8)
    facts = fact_ids(tokenizer, s)
    for placement in ("start", "random"):
        ids = build_haystack(s, noise, 10, rng_for(0, 0), placement)
        assert len(ids) >= sum(map(len, facts)) - 1
        assert tokenizer.decode(ids).strip() == " ".join(s.facts)


@pytest.mark.parametrize("placement", ["random", "spread"])
def test_haystack_hits_the_target_length_with_random_placement(tokenizer, placement):
    noise = NoiseSource(tokenizer)
    for i in range(100):
        s = story("qa1", i)
        facts = sum(map(len, fact_ids(tokenizer, s)))
        target = facts + 40
        ids = build_haystack(s, noise, target, rng_for(0, i, "h"), placement)
        assert len(ids) == target, (i, target, len(ids))


def test_spread_placement_keeps_the_facts_apart_and_out_of_the_question_segment(tokenizer):
    """Four segments of 40 tokens, three of them written: "spread" puts reasoning's two facts in different
    written segments, where "random" (same stories, same noise) often puts them together or in the last one."""
    noise = NoiseSource(tokenizer)
    S, written = 40, 3 * 40
    counts = {}
    for placement in ("random", "spread"):
        in_question_segment = together = 0
        for i in range(100):
            s = story("reasoning", i)
            ids, marks = build_marked_haystack(s, noise, 4 * S - 1, rng_for(0, i, "h"), placement, written)
            first = marks.index(True)
            second = marks.index(True, first + len(fact_ids(tokenizer, s)[0]))  # the facts are in order
            in_question_segment += any(marks[written:])
            together += first // S == second // S
        counts[placement] = (in_question_segment, together)
    assert counts["spread"] == (0, 0)
    assert counts["random"][0] > 10 and counts["random"][1] > 5
    # Facts longer than the written segments spread over the whole document, not bunched at its start.
    s = story("qa1", 5, min_facts=8, max_facts=8)
    ids, marks = build_marked_haystack(s, noise, 4 * S - 1 + 200, rng_for(0, 0, "h"), "spread", S)
    assert marks[0] and not all(marks[:sum(map(len, fact_ids(tokenizer, s)))])
    # And TaskData bands only the written segments (two segments: both facts in the first, none in the question's).
    data = TaskData(TaskSpec(name="reasoning", placement="spread"), MemorySpec(segment_size=64), 0).bind(tokenizer)
    relation = re.compile(rf"The ({_alt(PLACES)}) is")
    for i in range(100):
        sample = data.sample(i, 2)
        assert not relation.search(tokenizer.decode(sample.final_ids)), i


def test_memorize_samples_have_the_asked_number_of_segments(tokenizer):
    data = TaskData(TaskSpec(name="memorize"), MemorySpec(segment_size=40), 0).bind(tokenizer)
    for n in (1, 2, 4):
        counts = {len(data.sample(index, n).writes) for index in range(40)}
        assert counts <= {n - 1, n} and n - 1 in counts


def test_no_noise_gives_just_the_facts(tokenizer):
    data = TaskData(TaskSpec(name="qa1", noise=NoiseSpec(kind="none")), MemorySpec(segment_size=200), 0)
    data.bind(tokenizer)
    sample = data.sample(0, 3)
    assert sample.writes == []
    text = tokenizer.decode(sample.final_ids)
    assert "Question:" in text and all(MOVE_RE.match(f) for f in split_sentences(text.split("\nQuestion")[0]))


def test_a_stage_without_noise_puts_the_story_alone_in_the_final_segment(tokenizer):
    """Stage.noise false (the in-context warm-up): the same story as with noise, but with nothing around it."""
    data = TaskData(TaskSpec(name="qa1", noise=NoiseSpec(kind="synthetic")), MemorySpec(segment_size=200), 0)
    data.bind(tokenizer)
    noisy, bare = data.sample(0, 3), data.sample(0, 3, noise=False)
    assert len(noisy.writes) >= 2 and bare.writes == []
    bare_story = tokenizer.decode(bare.final_ids).split("\nQuestion")[0]
    noisy_text = tokenizer.decode([t for w in noisy.writes for t in w] + noisy.final_ids)
    facts = split_sentences(bare_story)
    assert facts and all(MOVE_RE.match(f) for f in facts)
    assert [s for s in split_sentences(noisy_text.split("\nQuestion")[0]) if MOVE_RE.match(s)] == facts
    assert tokenizer.decode(bare.final_ids).split("\nQuestion")[1] == tokenizer.decode(noisy.final_ids).split(
        "\nQuestion")[1]  # same question and answer


def _direction_pairs(batch, tokenizer):
    """For each row of a batch of bare stories: the set of the two relations' directions."""
    pairs = []
    for row in batch.final_ids.tolist():
        story_text = tokenizer.decode([t for t in row if t != tokenizer.pad_token_id]).split("\nQuestion")[0]
        found = [RELATION_RE.match(f) for f in split_sentences(story_text)]
        assert len(found) == 2 and all(found), story_text
        pairs.append({m.group(2) for m in found})
    return pairs


def test_a_stage_task_makes_that_stages_stories(tokenizer):
    """A curriculum stage with its own task (qa4) trains on that task's stories, the other stages on the recipe's
    (reasoning): qa4 relates a place in two directions at right angles, reasoning in opposite ones."""
    from rmt_cli.commands.train import StepBatches
    from rmt_cli.storage.recipe import validate_recipe

    recipe = validate_recipe({"tokenizer": {"kind": "bpe"}, "batch_size": 8, "memory": {"segment_size": 64},
                              "task": {"name": "reasoning"},
                              "curriculum": [{"segments": 1, "steps": 2, "noise": False, "task": "qa4"},
                                             {"segments": 1, "steps": 2, "noise": False}]}, "r.yaml")
    data = TaskData(recipe.task, recipe.memory, recipe.seed).bind(tokenizer)
    steps = StepBatches(data, recipe, tokenizer.pad_token_id, 0, 0, recipe.batch_size)
    for step, opposite in ((0, False), (1, False), (2, True), (3, True)):
        for pair in _direction_pairs(steps[step], tokenizer):
            assert (DIRECTIONS[min(pair)] == max(pair)) == opposite, (step, pair)


def test_a_stage_placement_places_that_stages_facts(tokenizer):
    """A stage's own placement: "spread" keeps reasoning's facts out of the question's segment in its stage, the
    recipe's "random" puts some there in the next; a stage without noise has nothing to place."""
    from rmt_cli.commands.train import StepBatches
    from rmt_cli.storage.recipe import validate_recipe

    data = {"tokenizer": {"kind": "bpe"}, "batch_size": 50, "memory": {"segment_size": 64},
            "task": {"name": "reasoning"},
            "curriculum": [{"segments": 2, "steps": 1, "placement": "spread"}, {"segments": 2, "steps": 1}]}
    recipe = validate_recipe(data, "r.yaml")
    task_data = TaskData(recipe.task, recipe.memory, recipe.seed).bind(tokenizer)
    steps = StepBatches(task_data, recipe, tokenizer.pad_token_id, 0, 0, recipe.batch_size)
    relation = re.compile(rf"The ({_alt(PLACES)}) is")
    in_question = [sum(bool(relation.search(tokenizer.decode(row))) for row in steps[step].final_ids)
                   for step in (0, 1)]
    assert in_question[0] == 0 and in_question[1] > 5, in_question
    data["curriculum"][0]["noise"] = False
    with pytest.raises(UsageError, match="curriculum.0.placement"):
        validate_recipe(data, "r.yaml")


# --- bAbI files ------------------------------------------------------------------------------------------------

BABI = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel?\thallway\t4

1 Sandra travelled to the office.
2 Where is Sandra?\toffice\t1
3 Sandra journeyed to the garden.
4 Where is Sandra?\tgarden\t3
"""


def test_read_babi_parses_stories_and_questions(tmp_path):
    path = tmp_path / "qa1_train.txt"
    path.write_text(BABI)
    stories = read_babi(path)
    assert stories == [
        Story(["Mary moved to the bathroom.", "John went to the hallway."], "Where is Mary?", "bathroom"),
        Story(["Mary moved to the bathroom.", "John went to the hallway.", "Daniel went back to the hallway."],
              "Where is Daniel?", "hallway"),
        Story(["Sandra travelled to the office."], "Where is Sandra?", "office"),  # IDs restart: a new story
        Story(["Sandra travelled to the office.", "Sandra journeyed to the garden."], "Where is Sandra?", "garden"),
    ]


def test_read_babi_rejects_non_babi_text(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 Mary moved.\nnot a bAbI line\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        read_babi(bad)
    empty = tmp_path / "noq.txt"
    empty.write_text("1 Mary moved to the bathroom.\n")
    with pytest.raises(ValueError, match="no questions"):
        read_babi(empty)


def test_babi_task_draws_stories_from_the_file(tmp_path, tokenizer):
    path = tmp_path / "qa.txt"
    path.write_text(BABI)
    task = TaskSpec(name="babi", babi_path=str(path))
    data = TaskData(task, MemorySpec(segment_size=40), 0).bind(tokenizer)
    answers = set()
    for index in range(20):
        sample = data.sample(index, 2)
        answers.add(tokenizer.decode([t for t in sample.final_labels if t != IGNORE_INDEX][:-1]).strip())
    assert answers == {"bathroom", "hallway", "office", "garden"}


# --- noise -----------------------------------------------------------------------------------------------------

FILE_TEXT = """Zorblat quivers beneath the amber moon. Quintessa polishes her brass telescope!
Velloran merchants haggle over saffron. Did the archivist misplace the ledger?
Xylophones echo through the cathedral.
"""


def test_file_noise_comes_from_the_file(tmp_path, tokenizer):
    path = tmp_path / "noise.txt"
    path.write_text(FILE_TEXT)
    sentences = split_sentences(FILE_TEXT)
    assert len(sentences) == 5 and sentences[1] == "Quintessa polishes her brass telescope!"
    task = TaskSpec(name="memorize", noise=NoiseSpec(kind="files", paths=[str(path)]))
    data = TaskData(task, MemorySpec(segment_size=40), 0)
    assert data.noise_sentences == sentences
    data.bind(tokenizer)
    sample = data.sample(0, 4)
    doc = [t for w in sample.writes for t in w] + sample.final_ids
    text = tokenizer.decode(doc)
    assert sum(text.count(s) for s in sentences) >= 4
    assert "The old man" not in text and "near the river" not in text  # no synthetic sentences
    # Consecutive sentences of the text, wrapping around at its end.
    noise = NoiseSource(tokenizer, sentences)
    chunks = noise.take(rng_for(0, 0), 200)
    decoded = [tokenizer.decode(c).strip() for c in chunks]
    start = sentences.index(decoded[0])
    assert decoded == [sentences[(start + k) % len(sentences)] for k in range(len(decoded))]


def test_noise_folder_and_missing_paths(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("Second file.")
    (folder / "sub" / "a.md").write_text("First file.")
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    names = [name for name, _ in read_texts([str(folder)])]
    assert [n.split("texts")[-1] for n in names] == ["/b.txt", "/sub/a.md"]
    with pytest.raises(UsageError, match="no such file"):
        read_texts([str(tmp_path / "missing.txt")])
    with pytest.raises(UsageError, match="no such file"):
        read_texts([str(folder / "sub" / "nothing")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no readable text files"):
        read_texts([str(empty)])
    with pytest.raises(UsageError, match="standard input"):
        read_texts(["-"])


def test_training_text_is_read_as_ingest_reads_it(tmp_path):
    """One walker and one decoder: the files, their order and every decoded character are those of ingest."""
    folder = tmp_path / "books"
    (folder / "notes").mkdir(parents=True)
    (folder / ".gitignore").write_text("drafts/\n*.log\n")
    (folder / "drafts").mkdir()
    (folder / "drafts" / "x.txt").write_text("ignored draft")
    (folder / "run.log").write_text("ignored log")
    (folder / "a.txt").write_bytes(b"Caf\xc3\xa9 \xff bad byte, then a cut \xc3")  # invalid, then unfinished
    (folder / "notes" / "b.py").write_text("print('code is text too')")
    (folder / "c.latin1").write_bytes("na\u00efve".encode("latin-1"))
    texts = read_texts([str(folder)])
    document = open_document([str(folder)])
    assert [name for name, _ in texts] == [item.name for item in document.items]
    assert [n.split("books")[-1] for n, _ in texts] == ["/a.txt", "/c.latin1", "/notes/b.py"]
    ingested = b"".join(document.chunks()).decode("utf-8", errors="replace")
    for (name, text), item in zip(texts, document.items):
        assert item.header.decode() + text in ingested  # same characters, U+FFFD where bytes are invalid
    assert texts[0][1] == "Caf\u00e9 \ufffd bad byte, then a cut \ufffd"
    assert texts[1][1] == "na\ufffdve"


def test_noise_and_lm_text_from_a_local_datasets_folder(tmp_path, tokenizer):
    """`datasets` loads a folder of .txt files with its `text` builder: no hub, no network."""
    from rmt_cli.storage.recipe import DatasetSpec

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "part.txt").write_text("The red fox ran home. A blue bird sang there.\nMary moved to the garden.\n")
    noise = TaskData(TaskSpec(name="memorize", noise=NoiseSpec(kind="dataset", dataset=str(folder))),
                     MemorySpec(segment_size=64), 0)
    assert "The red fox ran home." in noise.noise_sentences
    lm = TaskData(TaskSpec(name="lm", lm_dataset=DatasetSpec(name=str(folder))), MemorySpec(segment_size=8), 0)
    assert any("blue bird" in t for t in lm.lm_texts)
    with pytest.raises(UsageError, match="no field"):
        TaskData(TaskSpec(name="lm", lm_dataset=DatasetSpec(name=str(folder), text_field="body")),
                 MemorySpec(segment_size=8), 0)


@pytest.mark.parametrize("line", ["2 Where is Mary?\t\t1", "2 \tbathroom\t1", "2 Where is Mary?\t   \t1"])
def test_read_babi_rejects_a_question_without_an_answer_or_a_question(tmp_path, line):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"1 Mary moved to the bathroom.\n{line}\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: a question line"):
        read_babi(bad)


@pytest.mark.parametrize("text, line, says", [
    ("1 Mary went\tto the kitchen.\n2 Where is Mary?\tkitchen\t1\n", 1, "a question line"),  # a tab in a statement
    ("1 Mary went.\n2 Where is Mary?\tkitchen\n", 2, "a question line"),  # no supporting numbers
    ("1 Mary went.\n2 Where is Mary?\tkitchen\tthe first\n", 2, "a question line"),
    ("1 \n2 Where is Mary?\tkitchen\t1\n", 1, "an empty statement"),
    ("1 Mary went to the kitchen.\u2028 2 John went home.\n3 Where is Mary?\tkitchen\t1\n", None, None),
    ("1 Mary went to the kitchen.\r\n2 Where is Mary?\tkitchen\t1\r\n", None, None),
])
def test_read_babi_reads_lines_as_an_editor_shows_them(tmp_path, text, line, says):
    """The fourteenth review: lines split at U+2028, vertical tab and form feed; a statement holding a tab was
    scored as a question; an empty statement was an empty fact."""
    path = tmp_path / "b.txt"
    path.write_text(text, encoding="utf-8", newline="")
    if says is None:  # one statement (U+2028 is no line end), one question; CRLF as LF
        (story,) = read_babi(path)
        assert story.question == "Where is Mary?" and story.answer == "kitchen" and len(story.facts) == 1
    else:
        with pytest.raises(ValueError, match=f"b.txt:{line}: {says}"):
            read_babi(path)


def test_read_babi_names_the_line_of_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "b.txt"
    path.write_bytes(b"1 Mary went to the kitchen.\n2 John went \xff home.\n3 Where is Mary?\tkitchen\t1\n")
    with pytest.raises(ValueError, match="b.txt:2: not UTF-8 text"):
        read_babi(path)


def test_read_babi_ids_are_ascii_numbers(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("\u0661 Mary moved to the bathroom.\n")  # an Arabic-Indic one
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        read_babi(bad)


def test_read_babi_refuses_an_endless_or_huge_file(tmp_path, monkeypatch):
    """/dev/zero (or a wrong path to a huge file) is refused at the cap, not read until memory runs out."""
    from rmt_cli.data import tasks

    from rmt_cli.errors import UsageError

    monkeypatch.setattr(tasks, "BABI_MAX_BYTES", 1024)
    big = tmp_path / "big.txt"
    big.write_text("1 Mary moved to the bathroom.\n" * 100)
    with pytest.raises(UsageError, match="larger than"):
        read_babi(big)
    with pytest.raises(UsageError, match="larger than"):
        read_babi("/dev/zero")


def test_read_babi_ignores_a_byte_order_mark(tmp_path):
    """A bAbI file saved with a byte order mark (as Windows editors save) was refused: "a bAbI line starts with a
    number, got '\\ufeff1 Mary …'" (manifests and question files already dropped it)."""
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf1 Mary went to the kitchen.\n2 Where is Mary?\tkitchen\t1\n")
    assert read_babi(path) == [Story(["Mary went to the kitchen."], "Where is Mary?", "kitchen")]


def test_read_babi_questions_share_their_story_so_memory_is_linear(tmp_path):
    """Each question got a copy of its story so far: a story alternating 20,000 statements and questions held
    200 million list entries (a 3.6 MB file took 5.5 GB). The questions now share the story's one list."""
    import gc

    from rmt_cli.data.tasks import StoryPrefix

    n = 20_000
    path = tmp_path / "long.txt"
    path.write_text("".join(f"{2 * i + 1} Mary went to the hall.\n{2 * i + 2} Where is Mary?\thall\t{2 * i + 1}\n"
                            for i in range(n)))
    stories = read_babi(path)
    assert len(stories) == n and [len(s.facts) for s in stories[:3]] == [1, 2, 3] and len(stories[-1].facts) == n
    # Statement lists held: one for the story, not one per question (a copy would be a list of up to n entries).
    lists = {id(r) for s in stories for r in gc.get_referents(s.facts) if isinstance(r, list)}
    assert len(lists) == 1 and all(isinstance(s.facts, StoryPrefix) for s in stories)
    # ...and read as the copies did: a question sees only the statements before it.
    facts = stories[1].facts
    assert facts == ["Mary went to the hall."] * 2 and list(facts) == facts[:] == [facts[0], facts[-1]]
    assert " ".join(facts) == "Mary went to the hall. Mary went to the hall."
    with pytest.raises(IndexError):
        facts[2]
