"""`rmt eval`: streamed haystacks, the ingest/ask path, intervals, and the command's contract."""

import json

import pytest
import torch
from typer.testing import CliRunner

from rmt_cli.commands.ask import ask
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.cli import app
from rmt_cli.errors import UsageError
from rmt_cli.commands.longeval import (NoiseCorpus, StorySource, evaluate_length, haystack_pieces, parse_lengths,
                              wilson_interval)
from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.storage.memfile import load_memory
from rmt_cli.core.memory import MemoryCell
from rmt_cli.storage.recipe import MemorySpec
from rmt_cli.data.tasks import Story, qa1_story, read_babi, rng_for, synthetic_sentence

SEGMENT = 32


@pytest.fixture(scope="module")
def corpus(tokenizer):
    rng = rng_for(0, 0, "noise")
    return NoiseCorpus(tokenizer, [synthetic_sentence(rng) for _ in range(200)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer, make_model):
    path = tmp_path_factory.mktemp("eval") / "model"
    cell = MemoryCell(make_model("gpt2", 3), 2, "gated", 0.001)
    save_checkpoint(path, cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=SEGMENT, update="gated"), "t")
    return path


def test_parse_lengths():
    assert parse_lengths("1k,16k, 128k,1M,500") == [1_000, 16_000, 128_000, 1_000_000, 500]
    assert parse_lengths("1.5k") == [1500]
    for bad in ("", "k", "1x", "-3", "0", "\u0663k", "\uff11k"):  # Arabic-Indic and full-width digits
        with pytest.raises(UsageError):
            parse_lengths(bad)


def test_wilson_interval_contains_the_estimate_and_narrows_with_samples():
    for hits, n in ((0, 20), (20, 20), (7, 10), (50, 100)):
        low, high = wilson_interval(hits, n)
        assert 0 <= low <= hits / n <= high <= 1
    assert wilson_interval(100, 100)[0] > wilson_interval(20, 20)[0]  # more samples, a tighter bound
    assert wilson_interval(0, 20)[1] > 0.1  # 0/20 does not prove 0%


@pytest.mark.parametrize("length", [5, 40, 333, 2000])
def test_haystack_has_the_exact_length_and_every_fact_in_order(tokenizer, corpus, length):
    for i in range(5):
        rng = rng_for(1, i, "h")
        story = qa1_story(rng, 2, 6)
        ids = [t for piece in haystack_pieces(story, corpus, length, rng) for t in piece]
        fact_ids = [tokenizer.encode(" " + f, add_special_tokens=False) for f in story.facts]
        assert len(ids) == max(length, sum(map(len, fact_ids)))
        text = tokenizer.decode(ids)
        positions = [text.find(f) for f in story.facts]
        assert all(p >= 0 for p in positions) and positions == sorted(positions)
        assert not text.startswith(" ")  # a document starts as a file does, without the joining space


def test_haystack_noise_streams_without_building_the_document(tokenizer, corpus):
    story = Story(["Mary went to the kitchen."], "Where is Mary?", "kitchen")
    pieces = haystack_pieces(story, corpus, 10**9, rng_for(0, 0))  # a billion tokens: only what is pulled exists
    first = [next(pieces) for _ in range(100)]
    assert sum(map(len, first)) <= 100 * max(map(len, corpus.sentences)) + 20


def test_eval_answers_are_what_ingest_and_ask_would_answer(tmp_path, tokenizer, corpus, checkpoint):
    """Per document the eval's answer equals `rmt ask` on the memory file that `rmt ingest` writes for the
    same document (written out as text), and its verdict is that answer against the story's."""
    model = load_checkpoint(checkpoint)
    source = StorySource("qa1", 2, 4, seed=5)
    result = evaluate_length(model, corpus, source, 150, 6, batch_size=3, keep_answers=True)
    said = []
    for i in range(6):
        story, rng = source.story(150, i)
        text = tokenizer.decode([t for p in haystack_pieces(story, corpus, 150, rng) for t in p])
        doc = tmp_path / f"doc{i}.txt"
        doc.write_text(text)
        assert tokenizer.encode(text, add_special_tokens=False) == [t for p in haystack_pieces(
            story, corpus, 150, source.story(150, i)[1]) for t in p]  # the file holds exactly these tokens
        ingest([IngestJob([str(doc)], tmp_path / f"m{i}.st")], model)
        said.append(ask(model, load_memory(tmp_path / f"m{i}.st"), story.question, max_new_tokens=8).answer)
    assert [a["said"] for a in result.answers] == said
    assert result.correct == sum(a["said"] == a["answer"] for a in result.answers)


def test_batched_eval_equals_one_document_at_a_time(corpus, checkpoint):
    model = load_checkpoint(checkpoint)
    source = StorySource("qa1", 2, 10, seed=2)
    together = evaluate_length(model, corpus, source, 300, 6, batch_size=6, keep_answers=True)
    alone = evaluate_length(model, corpus, source, 300, 6, batch_size=1, keep_answers=True)
    assert together.answers == alone.answers
    assert (together.correct, together.correct_reset, together.tokens) == (alone.correct, alone.correct_reset,
                                                                             alone.tokens)


def test_babi_split_is_by_story(tmp_path):
    lines = []
    for story in range(20):
        lines += [f"1 Mary went to the kitchen{story}.", "2 John went to the hallway.",
                  f"3 Where is Mary?\tkitchen{story}\t1", "4 Mary went to the garden.", "5 Where is Mary?\tgarden\t4"]
    path = tmp_path / "qa1.txt"
    path.write_text("\n".join(lines) + "\n")
    train, valid, every = read_babi(path, "train"), read_babi(path, "valid"), read_babi(path, "all")
    assert len(train) + len(valid) == len(every) == 40 and len(valid) == 4
    story_of = lambda s: s.facts[0]  # noqa: E731
    assert not {story_of(s) for s in train} & {story_of(s) for s in valid}


def run(args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.stderr + result.stdout
    return result


def test_eval_command_json_table_and_plot(tmp_path, checkpoint):
    pytest.importorskip("matplotlib")
    noise = tmp_path / "noise.txt"
    rng = rng_for(0, 1)
    noise.write_text(" ".join(synthetic_sentence(rng) for _ in range(300)))
    r = run(["eval", "--model", checkpoint, "--noise", noise, "--lengths", "100,200", "--samples", "8,4",
             "--json", "--plot", tmp_path / "acc.png"])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [row["length"] for row in rows] == [100, 200] and [row["samples"] for row in rows] == [8, 4]
    for row in rows:
        for key in ("accuracy", "accuracy_reset", "constant_guess"):
            low, high = row[key + "_ci95"]
            assert low <= row[key] <= high
        assert row["constant_guess"] >= 1 / row["samples"]
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    table = run(["eval", "--model", checkpoint, "--noise", noise, "--lengths", "100", "--samples", "4"])
    assert table.exit_code == 0 and "constant guess" in table.stderr and table.stdout == ""


@pytest.mark.parametrize("args, words", [
    (["--lengths", "1x"], "--lengths"),
    (["--samples", "3,4,5"], "--samples"),
    (["--facts", "5,2"], "--facts"),
    (["--babi-split", "test"], "--babi-split"),
    (["--plot", "out.jpg"], "PNG"),
    (["--babi", "missing.txt"], "--babi"),
])
def test_eval_bad_options_are_one_line_exit_2(tmp_path, checkpoint, args, words):
    noise = tmp_path / "noise.txt"
    noise.write_text("One sentence here. Another one there.")
    r = run(["eval", "--model", checkpoint, "--noise", noise, "--lengths", "100,200", *args])
    assert r.exit_code == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_length_shorter_than_the_stories_is_warned_about(tmp_path, checkpoint):
    """The fifth review: `--lengths 10` reported length 10 for documents of ~45 tokens without a word."""
    noise = tmp_path / "noise.txt"
    rng = rng_for(0, 1)
    noise.write_text(" ".join(synthetic_sentence(rng) for _ in range(300)))
    r = run(["eval", "--model", checkpoint, "--noise", noise, "--lengths", "10,300", "--samples", "3", "-q", "--json"])
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert all(w.startswith("warning: --lengths 10: ") for w in warnings)  # 300 tokens: several segments of noise
    assert any("the stories alone are about" in w for w in warnings)
    assert any("read in context, without the memory" in w for w in warnings)  # the sixth review
