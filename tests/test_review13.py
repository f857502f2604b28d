"""The thirteenth review: crafted inputs and faults. A question stream or line too big for memory, a question too
long said without which, bAbI answers that cannot fit, a quadratic plan check, a trace temporary a kill left, a
lone surrogate in --json, API settings the CLI refuses, a wrapped table. Each must be one line, or work."""

import fcntl
import json
import os
import pathlib
import subprocess
import sys

import pytest

import rmt_cli.commands.ask as ask_module
from rmt_cli.atomic import atomic_path
from rmt_cli.commands.ask import ask
from rmt_cli.commands.ingest import IngestJob, check_plan, ingest
from rmt_cli.commands.perplexity import perplexity
from rmt_cli.core.segments import ANSWER_ROOM, question_ids
from rmt_cli.data.sources import SMALL_FILE_LIMIT
from rmt_cli.errors import UsageError
from rmt_cli.storage.checkpoint import load_checkpoint
from rmt_cli.storage.memfile import load_memory
from conftest import TINY_SEGMENT, one_error_line, run_cli as run

TEXT = "Mary went to the kitchen. Daniel moved to the garden. " * 4 + "Sandra"
LONG = "x " * 300  # 300 tokens at least: more than a segment of TINY_SEGMENT


# S1: questions from stdin under the cap of --file; a question refused by its length before it is tokenized


def test_questions_on_stdin_are_capped_as_a_file_of_them_is(tmp_path, memfile, checkpoint):
    """`yes 'Where is Daniel?' | rmt ask MEM -` was read whole (24 GB, then the kernel's kill)."""
    big = "Where is Daniel?\n" * (SMALL_FILE_LIMIT // 17 + 1)
    (tmp_path / "q.txt").write_text(big)
    from_file = run(["ask", memfile, "--file", tmp_path / "q.txt", "--model", checkpoint])
    one_error_line(from_file, 2, "larger than 16 MiB")
    from_stdin = run(["ask", memfile, "-", "--model", checkpoint], input=big)
    one_error_line(from_stdin, 2, "standard input: larger than 16 MiB")


def test_a_question_far_too_long_is_refused_before_it_is_tokenized(memfile, checkpoint, monkeypatch):
    """A 16 MB line took 19 s and 3.4 GB to tokenize, only to be refused; a question that fits, many characters
    long, is still answered."""
    model, state = load_checkpoint(checkpoint), load_memory(memfile)
    tokenized = []
    monkeypatch.setattr(ask_module, "question_ids", lambda tok, q: tokenized.append(q) or question_ids(tok, q))
    with pytest.raises(UsageError, match="question too long: 1,000,000 characters"):
        ask(model, state, "a" * 1_000_000)
    assert tokenized == []
    # The longest question of a long word that fits: more characters than a question may take tokens, answered.
    word = max((w for w in TEXT.replace(".", "").split()), key=len)
    words = 1
    while len(question_ids(model.tokenizer, " ".join([word] * (words + 1)))) + ANSWER_ROOM <= TINY_SEGMENT:
        words += 1
    question = " ".join([word] * words)
    assert len(question) > TINY_SEGMENT - ANSWER_ROOM
    assert ask(model, state, question).question == question


# L7: which question is too long; bAbI answers longer than the answer room


def test_a_question_too_long_is_named_with_its_line(tmp_path, memfile, checkpoint):
    r = run(["ask", memfile, "-", "--model", checkpoint], input=f"Where is Daniel?\n\n{LONG}\nWhere is Mary?\n")
    assert r.exit_code == 2 and r.stderr.splitlines()[0].startswith("warning: standard input: 1 blank line")
    error = r.stderr.splitlines()[1]  # line 3, the blank line 2 counted
    assert error.startswith("error: standard input:3: question too long")
    assert error.endswith("(question '" + "x " * 29 + "x…')")  # cut to 60 characters
    (tmp_path / "q.txt").write_text(f"Where is Daniel?\n{LONG}\n")
    r = run(["ask", memfile, "Where is Mary?", "--file", tmp_path / "q.txt", "--model", checkpoint])
    one_error_line(r, 2, f"error: --file {tmp_path / 'q.txt'}:2: question too long")
    one_error_line(run(["ask", memfile, LONG, "--model", checkpoint]), 2, "error: question too long", "(question 'x")


def test_eval_warns_once_of_babi_answers_longer_than_the_answer_room(tmp_path, checkpoint):
    stories = ["1 Mary moved to the kitchen.\n2 Where is Mary?\tkitchen\t1\n",
               "1 John went to the garden.\n2 Where is John?\tgarden\t1\n"]
    long_answer = stories[0].replace("\tkitchen\t", "\t" + " ".join(["kitchen"] * 200) + "\t")
    warnings = {}
    for name, text in (("fits", "".join(stories)), ("long", long_answer + stories[1])):
        (tmp_path / f"{name}.txt").write_text(text)
        r = run(["eval", "--babi", tmp_path / f"{name}.txt", "--model", checkpoint, "--lengths", "100",
                 "--samples", "2", "-q", "--json"])
        assert r.exit_code == 0, r.stderr
        warnings[name] = [line for line in r.stderr.splitlines() if "answer room" in line or "answers take" in line]
    assert warnings["fits"] == []
    assert len(warnings["long"]) == 1 and "1 of 2 answers take more than the 8 tokens" in warnings["long"][0]


# M1: the plan check of a large manifest


def test_the_plan_check_does_not_compare_every_input_with_every_output(tmp_path, monkeypatch):
    """Quadratic in the jobs: 2,000 took 36 s, 20,000 never started. Each input is now looked up once; refusals
    are as before (tests/test_properties.py and test_ingest_ask.py hold the others)."""
    jobs = [IngestJob(["s.txt"], tmp_path / "out" / f"{i}.st") for i in range(5000)]
    compared = [0]
    equal = pathlib.PurePath.__eq__

    def counted(self, other):
        compared[0] += 1
        if compared[0] == 10 * len(jobs):  # once: pytest compares paths of its own afterwards
            raise AssertionError("every input compared with every output")
        return equal(self, other)

    monkeypatch.setattr(pathlib.PurePath, "__eq__", counted)
    check_plan(jobs)
    with pytest.raises(UsageError, match=r"read by job 5001 and written by job 1;"):
        check_plan(jobs + [IngestJob([str(tmp_path / "out")], tmp_path / "all.st")])
    # A job may write inside the folder it reads; the next job that writes there may not
    mine = IngestJob([str(tmp_path / "out")], tmp_path / "out" / "mine.st")
    check_plan([mine])
    with pytest.raises(UsageError, match=r"read by job 1 and written by job 2;"):
        check_plan([mine, *jobs[:2]])


# M3: a temporary file a kill -9 left


def test_a_later_trace_removes_the_temporary_a_kill_left_and_nothing_else(tmp_path):
    target = tmp_path / "t.jsonl"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom rmt_cli.atomic import atomic_path\n"
                              "with atomic_path(sys.argv[1]) as tmp:\n    open(tmp, 'w').write('{\"segm')\n"
                              "    print(tmp, flush=True)\n    time.sleep(600)", str(target)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 [str(pathlib.Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])})
    killed = child.stdout.readline().strip()
    child.kill()  # kill -9: no clean-up runs
    child.wait()
    assert os.path.isfile(killed)
    others = [".t.jsonl.abcdefgh.tmp.jsonl.keep", ".t.jsonl.short.tmp.jsonl", ".u.jsonl.abcdefgh.tmp.jsonl",
              "t.jsonl.abcdefgh.tmp.jsonl", ".t.jsonl.busyxxxx.tmp.jsonl"]
    for name in others:
        (tmp_path / name).write_text("not stale")
    with open(tmp_path / ".t.jsonl.busyxxxx.tmp.jsonl") as busy:  # another run writes this one now
        fcntl.flock(busy, fcntl.LOCK_EX)
        with atomic_path(target, clear_stale=True) as tmp:
            pathlib.Path(tmp).write_text("{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "t.jsonl"])


# L4: --json is valid UTF-8


def test_json_output_is_valid_unicode_for_a_name_that_is_not_utf8(tmp_path, checkpoint):
    (tmp_path / "s.txt").write_text(TEXT)
    out = tmp_path / os.fsdecode(b"o\xe9.st")
    r = run(["ingest", tmp_path / "s.txt", "-o", out, "--model", checkpoint, "--json"])
    assert r.exit_code == 0, r.stderr
    output = json.loads(r.stdout)["output"]
    output.encode("utf-8")  # strict: a lone surrogate (JSON's "\udce9") raised here
    assert f"done: {output}: " in r.stderr  # as the error and done lines write the name


# L3: the API refuses what the CLI refuses, in the same words


@pytest.mark.parametrize("setting, option", [
    (dict(temperature=-1.0), ["--temperature", "-1"]),
    (dict(temperature=1.0, top_p=2.0), ["--temperature", "1", "--top-p", "2"]),
    (dict(temperature=1.0, top_p=-1.0), ["--temperature", "1", "--top-p", "-1"]),
    (dict(temperature=1.0, top_p=float("nan")), ["--temperature", "1", "--top-p", "nan"]),
])
def test_the_api_refuses_sampling_settings_as_the_cli_does(memfile, checkpoint, setting, option):
    with pytest.raises(UsageError) as refused:
        ask(load_checkpoint(checkpoint), load_memory(memfile), "Where is Daniel?", **setting)
    r = run(["ask", memfile, "Where is Daniel?", "--model", checkpoint, *option])
    one_error_line(r, 2)
    assert r.stderr == f"error: {refused.value}\n"


def test_the_api_refuses_a_max_tokens_below_two_and_an_empty_output_as_the_cli_does(tmp_path, checkpoint):
    (tmp_path / "s.txt").write_text(TEXT)
    with pytest.raises(UsageError, match="max_tokens -3: a whole number, at least 2"):
        perplexity([str(tmp_path / "s.txt")], load_checkpoint(checkpoint), max_tokens=-3)
    one_error_line(run(["perplexity", tmp_path / "s.txt", "--model", checkpoint, "--max-tokens", "-3"]), 2,
                   "--max-tokens")
    with pytest.raises(UsageError, match="^no output given"):
        IngestJob([str(tmp_path / "s.txt")], "")
    one_error_line(run(["ingest", tmp_path / "s.txt", "-o", "", "--model", checkpoint]), 2, "error: no output given")


# S1: running out of memory advises what the command has


def test_out_of_memory_advises_a_smaller_batch_only_where_the_command_has_one(memfile, checkpoint, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")

    monkeypatch.setattr(ask_module, "ask_many", no_memory)
    r = run(["ask", memfile, "Where is Daniel?", "--model", checkpoint])
    one_error_line(r, 1, "out of memory", "try a smaller model")
    assert "batch" not in r.stderr
    import rmt_cli.commands.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "ingest", no_memory)
    one_error_line(run(["ingest", memfile.parent / "doc.txt", "-o", memfile.parent / "x.st", "--model", checkpoint]),
                   1, "out of memory", "a smaller --batch-size")


# L8: the perplexity table on stderr


def test_the_perplexity_table_wraps_no_cell(tmp_path, checkpoint):
    (tmp_path / "s.txt").write_text(TEXT)
    r = run(["perplexity", tmp_path / "s.txt", "--model", checkpoint])
    assert r.exit_code == 0, r.stderr
    rows = [line for line in r.stderr.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "memory reset each segment" in rows[1], r.stderr
