"""The twenty-fifth review (untuned, session 16: a new shell user's and pipeline author's pass over the README,
ingest, ask and the environment): each test holds a fault it found, reproduced as it was found."""

import json
from pathlib import Path

import pytest

from conftest import MEMFILE_TEXT, one_error_line, run_cli as run


def test_the_eval_length_limit_is_one_the_user_can_type():
    """`--lengths 10000000001` said "1 token to 10G tokens", and `--lengths 1G` was then no length at all."""
    from rmt_cli.commands.longeval import parse_lengths

    assert parse_lengths("1G,2.5g") == [10**9, 2_500_000_000]
    r = run(["eval", "--lengths", "11G", "--samples", "1"])
    one_error_line(r, 2, "'11G' is out of range (1 token to 10G tokens)")


@pytest.mark.parametrize("data", [b"\0\1\2bin", b"Where is Mary?\n\0\0\0"])
def test_a_question_file_of_binary_data_is_refused(memfile, checkpoint, tmp_path, data):
    """`rmt ask M --file blob.bin` answered the question "\\x00\\x01\\x02bin" with exit 0."""
    (tmp_path / "blob.bin").write_bytes(data)
    r = run(["ask", memfile, "--file", tmp_path / "blob.bin", "--model", checkpoint])
    one_error_line(r, 2, "blob.bin: looks like binary data (it has NUL bytes); questions are lines of text")
    assert r.stdout == ""
    one_error_line(run(["ask", memfile, "-", "--model", checkpoint], input=data), 2, "standard input: looks like "
                                                                                       "binary data")


def test_two_inputs_of_one_name_for_a_folder_output_are_named(checkpoint, tmp_path):
    """`rmt ingest d1/x.txt d2/x.md -o out/` said "two inputs would write the same FOLDER/NAME.st", naming neither
    (with a glob of hundreds, the user could not find them)."""
    for name in ("d1/x.txt", "d2/x.md", "d2/y.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(MEMFILE_TEXT)
    r = run(["ingest", tmp_path / "d2/y.txt", tmp_path / "d1/x.txt", tmp_path / "d2/x.md", "-o", f"{tmp_path}/out/",
             "--model", checkpoint])
    one_error_line(r, 2, f"{tmp_path / 'd1/x.txt'} and {tmp_path / 'd2/x.md'} would both write "
                         f"{tmp_path / 'out/x.st'}; use --manifest")
    assert not (tmp_path / "out").exists()


def test_the_bytes_of_a_folder_are_its_files_bytes(checkpoint, tmp_path):
    """5,000 files of 48,890 bytes were reported as 178,890 bytes: the file headers rmt adds were counted."""
    (tmp_path / "many").mkdir()
    for i in range(5):
        (tmp_path / "many" / f"f{i}.txt").write_text(f"Mary went to room {i}.\n")
    (tmp_path / "one.txt").write_text(MEMFILE_TEXT)
    r = run(["ingest", tmp_path / "many", tmp_path / "one.txt", "-o", f"{tmp_path}/out/", "--model", checkpoint,
             "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    results = {Path(result["output"]).name: result for result in json.loads(r.stdout)}
    assert results["many.st"]["bytes"] == sum(p.stat().st_size for p in (tmp_path / "many").iterdir())
    assert results["one.st"]["bytes"] == len(MEMFILE_TEXT)


def test_one_nul_byte_is_said_as_one(checkpoint, tmp_path):
    """"1 NUL bytes in …"."""
    (tmp_path / "t.txt").write_bytes((MEMFILE_TEXT * 40).encode() + b"\0")
    r = run(["ingest", tmp_path / "t.txt", "-o", tmp_path / "t.st", "--model", checkpoint, "--json", "-q"])
    assert json.loads(r.stdout)["warnings"][0].startswith("1 NUL byte in ")
