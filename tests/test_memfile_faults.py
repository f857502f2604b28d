"""Memory files are untrusted input. Whatever a file holds, `load_memory` + `check_compatible` accept it or refuse
it with one UsageError line naming the file and the field (exit 2); a failed write is one RMTError line (exit 1)
that keeps the old file and loses no other document of a batch."""

import contextlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from typer.testing import CliRunner

from rmt_cli.storage import memfile
from rmt_cli.commands.ask import ask
from rmt_cli.storage.checkpoint import load_checkpoint
from rmt_cli.cli import app
from rmt_cli.errors import RMTError, UsageError
from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.storage.memfile import (MAX_CARRY_CHARS, MAX_FILE_BYTES, MAX_HEADER_BYTES, MAX_METADATA_BYTES, check_compatible,
                             load_memory, save_memory, tensors_digest, vocabulary_size)
from conftest import TINY_SEGMENT, one_error_line, run_cli

SEGMENT = TINY_SEGMENT
# Ends inside a word and inside a UTF-8 character, so the file holds a tail, carried text and pending bytes.
DOCUMENT = ("Mary went to the kitchen. Daniel moved to the garden. " * 3).encode() + "Sandra 日".encode()[:-1]
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def valid(tmp_path_factory, model):
    """A memory file as rmt writes it: (its path, its tensors, its metadata)."""
    folder = tmp_path_factory.mktemp("valid")
    (folder / "doc.txt").write_bytes(DOCUMENT)
    [result] = ingest([IngestJob([str(folder / "doc.txt")], folder / "valid.st")], model)
    assert result.error is None
    with safe_open(str(folder / "valid.st"), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        meta = f.metadata()
    assert len(tensors["tail_tokens"]) and meta["carry_text"] and meta["pending_bytes_hex"]
    assert meta.pop("tensors_sha256") == tensors_digest(tensors)
    # Without its checksum: files crafted from these tensors and this metadata reach every check past it (an
    # attacker can compute the checksum; `craft` does)
    return folder / "valid.st", tensors, meta


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One file that property tests overwrite example after example."""
    return tmp_path_factory.mktemp("scratch") / "crafted.st"


def craft(path, valid, tensors=None, **meta_changes):
    """The valid file with other tensors (all of them) or changed metadata (None removes a key)."""
    _, valid_tensors, valid_meta = valid
    tensors = valid_tensors if tensors is None else tensors
    # A crafted file's checksum agrees with its tensors (anyone can compute it), so every later check is reached.
    meta = {**valid_meta, "tensors_sha256": tensors_digest(tensors), **meta_changes}
    meta = {k: v for k, v in meta.items() if v is not None}
    path.write_bytes(safetensors_bytes(tensors, metadata=meta))
    return path


def raw_file(path, header: bytes, data: bytes = b""):
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def refused(path, model, *words, force=True) -> str:
    """The one-line UsageError that `path` gets; it names the file and every word given."""
    with pytest.raises(UsageError) as caught:
        check_compatible(load_memory(path), model, force=force, name=str(path))
    message = str(caught.value)
    assert type(caught.value) is UsageError and len(message.splitlines()) == 1, message
    assert str(path) in message and all(w in message for w in words), message
    return message


def accepted_or_one_line(path, model) -> None:
    """The property every crafted file must have: accepted (and then safe to use) or one UsageError line."""
    try:
        state = load_memory(path)
        check_compatible(state, model, force=True, name=str(path))
    except UsageError as e:
        assert len(str(e).splitlines()) == 1 and str(path) in str(e), str(e)
        return
    # What the model relies on (test_memory_at_the_value_cap_answers_finitely runs it on the extreme case).
    assert len(state.tail_tokens) < model.segment_size and max(state.tail_tokens, default=0) < vocabulary_size(model)
    assert state.memory.shape == (model.memory_settings.num_mem_tokens, model.cell.hidden_size)
    assert torch.isfinite(state.memory.to(model.cell.dtype)).all()


# --- what the file is ---------------------------------------------------------------------------------------------

def test_the_valid_file_loads_and_saves_unchanged(tmp_path, model, valid):
    path, tensors, meta = valid
    state = load_memory(path)
    check_compatible(state, model, force=False, name=str(path))
    assert state.carry_text == meta["carry_text"] and state.pending_bytes == bytes.fromhex(meta["pending_bytes_hex"])
    save_memory(tmp_path / "again.st", state)
    again = load_memory(tmp_path / "again.st")
    assert torch.equal(again.memory, state.memory) and again.tail_tokens == state.tail_tokens
    assert again.metadata() == state.metadata()


@contextlib.contextmanager
def released_after(fifo, seconds: float = 10):
    """Should something open the FIFO and wait for a writer (the fault), a writer comes after `seconds`, so the
    test fails instead of hanging. It is another process: a reader stuck in native code may hold the GIL."""
    writer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep({seconds}); "
                               f"os.close(os.open({str(fifo)!r}, os.O_WRONLY | os.O_NONBLOCK))"],
                              stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "folder", "device"])
def test_what_is_not_a_regular_file_is_refused_before_opening(tmp_path, model, kind):
    fifo = tmp_path / "pipe.st"
    os.mkfifo(fifo)
    path = {"fifo": fifo, "link to a fifo": tmp_path / "link.st", "folder": tmp_path / "dir.st",
            "device": Path(os.devnull)}[kind]
    if kind == "link to a fifo":
        path.symlink_to(fifo)
    if kind == "folder":
        path.mkdir()
    with released_after(fifo):
        refused(path, model, "is a folder" if kind == "folder" else "not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_missing_or_unreachable_file_is_one_line(tmp_path, model):
    refused(tmp_path / "missing.st", model, "no such memory file")
    (tmp_path / "plain").write_text("x")
    refused(tmp_path / "plain" / "m.st", model, "cannot read it")


def test_a_file_over_the_size_cap_is_refused_without_reading_it(tmp_path, model):
    path = tmp_path / "huge.st"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    refused(path, model, str(MAX_FILE_BYTES), "at most")


def test_a_file_shorter_than_its_header_says_is_not_a_memory_file(tmp_path, model):
    """7 bytes were read as a header length (of 15 quadrillion bytes); now the line says how short the file is."""
    for size in (0, 7):
        path = tmp_path / f"short{size}.st"
        path.write_bytes(b"1234567"[:size])
        refused(path, model, "not a readable rmt memory file", "truncated", f"{size} bytes, fewer than the 8")
    cut = tmp_path / "cut.st"
    cut.write_bytes((100).to_bytes(8, "little") + b'{"a": 1')  # a header of 100 bytes, cut after 7
    refused(cut, model, "truncated", "a header of 100 bytes, but only 7 bytes follow")


def test_a_header_over_its_cap_is_refused_before_parsing(tmp_path, model):
    path = tmp_path / "header.st"
    path.write_bytes((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{" + b" " * 100)
    refused(path, model, "corrupt", "header")
    path.write_bytes((2**64 - 1).to_bytes(8, "little"))
    refused(path, model, "corrupt")


# --- tensors -----------------------------------------------------------------------------------------------------

MEMORY = torch.randn(2, 32)
TAIL = torch.tensor([5, 6, 7])
BAD_TENSORS = {
    "no tail_tokens": ({"memory": MEMORY}, "lacks tail_tokens"),
    "an extra tensor": ({"memory": MEMORY, "tail_tokens": TAIL, "evil\nerror: x": TAIL.clone()}, "unexpected tensor"),
    "memory in float64": ({"memory": MEMORY.double(), "tail_tokens": TAIL}, "tensor memory is float64"),
    "memory in int64": ({"memory": MEMORY.long(), "tail_tokens": TAIL}, "tensor memory is int64"),
    "memory of rank 3": ({"memory": MEMORY[None], "tail_tokens": TAIL}, "tensor memory has shape"),
    "memory of no rows": ({"memory": MEMORY[:0], "tail_tokens": TAIL}, "tensor memory has shape"),
    "memory with NaN": ({"memory": MEMORY.clone().fill_(float("nan")), "tail_tokens": TAIL}, "NaN"),
    "memory with inf": ({"memory": torch.full((2, 32), float("-inf")), "tail_tokens": TAIL}, "infinite"),
    "memory beyond float16": ({"memory": torch.full((2, 32), 1e30), "tail_tokens": TAIL}, "beyond"),
    "tail in float": ({"memory": MEMORY, "tail_tokens": TAIL.float()}, "tensor tail_tokens is float32"),
    "tail of rank 2": ({"memory": MEMORY, "tail_tokens": TAIL[None]}, "tensor tail_tokens is int64 of shape"),
    "tail in uint8": ({"memory": MEMORY, "tail_tokens": TAIL.to(torch.uint8)}, "tensor tail_tokens is uint8"),
    "negative token": ({"memory": MEMORY, "tail_tokens": torch.tensor([3, -1])}, "negative token id (-1)"),
    "tail of a segment": ({"memory": MEMORY, "tail_tokens": torch.arange(SEGMENT)}, "fewer than a segment (24)"),
}


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_bad_tensors_are_refused_naming_the_tensor(tmp_path, model, valid, case):
    tensors, words = BAD_TENSORS[case]
    path = tmp_path / "m.st"
    path.write_bytes(safetensors_bytes(tensors, metadata=valid[2]))
    assert "\n" not in refused(path, model, words)


# --- metadata ----------------------------------------------------------------------------------------------------

SOURCE = {"name": "a.txt", "size": 3, "sha256": "ab" * 32}
BAD_METADATA = {
    "no rmt metadata": ({"rmt_format": None}, "not an rmt memory file"),
    "another format": ({"rmt_format": "2"}, "format '2'"),
    "missing keys": ({"fingerprint": None, "tokens": None}, "metadata lacks fingerprint, tokens"),
    "short fingerprint": ({"fingerprint": "abc"}, "metadata fingerprint 'abc'"),
    "upper-case fingerprint": ({"fingerprint": "AB" * 16}, "metadata fingerprint"),
    "short forced_from": ({"forced_from": "abc"}, "metadata forced_from 'abc'"),
    "upper-case forced_from": ({"forced_from": "AB" * 16}, "metadata forced_from"),
    "unknown dtype": ({"dtype": "float64"}, "metadata dtype 'float64' is not one of float32"),
    "dtype unlike the tensor": ({"dtype": "bfloat16"}, "says bfloat16, but the memory tensor is float32"),
    "segment size 0": ({"segment_size": "0"}, "metadata segment_size '0' is not a whole number from 1"),
    "negative segment size": ({"segment_size": "-24"}, "metadata segment_size"),
    "segment size with spaces": ({"segment_size": " 24"}, "metadata segment_size"),
    "segment size in other digits": ({"segment_size": "٢٤"}, "metadata segment_size"),
    "segment size 1e3": ({"segment_size": "1e3"}, "metadata segment_size"),
    "huge segment size": ({"segment_size": "9" * 40}, "metadata segment_size"),
    "segment size over the cap": ({"segment_size": str(2**20 + 1)}, "to 1048576"),
    "memory tokens unlike the tensor": ({"num_mem_tokens": "3"}, "num_mem_tokens 3 differs"),
    "memory tokens over the cap": ({"num_mem_tokens": str(2**16 + 1)}, "to 65536"),
    "negative tokens": ({"tokens": "-5"}, "metadata tokens"),
    "fewer tokens than the tail holds": ({"tokens": "0", "segments": "0"}, "0 disagrees with 0 segments"),
    "segments not a number": ({"segments": "many"}, "metadata segments"),
    "carry text over its cap": ({"carry_text": "x" * (MAX_CARRY_CHARS + 1)}, "carry_text has 4097 characters"),
    "pending bytes not hex": ({"pending_bytes_hex": "zz"}, "metadata pending_bytes_hex"),
    "pending bytes a whole character": ({"pending_bytes_hex": "41"}, "metadata pending_bytes_hex"),
    "pending bytes not UTF-8": ({"pending_bytes_hex": "ff"}, "metadata pending_bytes_hex"),
    "pending bytes too many": ({"pending_bytes_hex": "f09f98f0"}, "metadata pending_bytes_hex"),
    "sources not JSON": ({"sources": "[{"}, "metadata sources"),
    "sources not a list": ({"sources": "{}"}, "metadata sources"),
    "sources nested deep": ({"sources": "[" * 30_000 + "]" * 30_000}, "metadata sources"),
    "a source's name a number": ({"sources": json.dumps([{**SOURCE, "name": 1}])}, "metadata sources"),
    "a source's size a bool": ({"sources": json.dumps([{**SOURCE, "size": True}])}, "metadata sources"),
    "a source's size negative": ({"sources": json.dumps([{**SOURCE, "size": -1}])}, "metadata sources"),
    "a source's digest short": ({"sources": json.dumps([{**SOURCE, "sha256": "ab"}])}, "metadata sources"),
    "a source with extra keys": ({"sources": json.dumps([{**SOURCE, "x": 1}])}, "metadata sources"),
    "negative sources omitted": ({"sources_omitted": "-1"}, "metadata sources_omitted"),
    "long model hint": ({"model_hint": "m" * 501}, "model_hint has 501 characters; at most 500"),
    "long created": ({"created": "c" * 101}, "metadata created"),
    "long version": ({"rmt_version": "v" * 101}, "metadata rmt_version"),
    "metadata over its cap": ({"padding": "p" * MAX_METADATA_BYTES}, "at most 65536"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_bad_metadata_is_refused_naming_the_field(tmp_path, model, valid, case):
    changes, words = BAD_METADATA[case]
    refused(craft(tmp_path / "m.st", valid, **changes), model, words)


def test_the_carry_cap_is_the_one_ingest_keeps(tmp_path, model, valid):
    from rmt_cli.data.tokenstream import MAX_CARRY_CHARS as ingest_cap

    assert MAX_CARRY_CHARS is ingest_cap  # one constant, documented as 4,096
    load_memory(craft(tmp_path / "m.st", valid, carry_text="x" * MAX_CARRY_CHARS))


def test_a_header_that_is_not_a_map_of_strings_is_corrupt(tmp_path, model):
    header = {"__metadata__": {"rmt_format": 1}, "memory": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    refused(raw_file(tmp_path / "m.st", json.dumps(header).encode(), b"\0" * 4), model, "corrupt")


@pytest.mark.parametrize("field", ["rmt_format", "fingerprint", "forced_from", "dtype", "segment_size",
                                   "pending_bytes_hex"])
def test_messages_stay_one_line_whatever_a_field_holds(tmp_path, model, valid, field):
    evil = "1\nerror: all good\r\x1b[2K\u202e"
    message = refused(craft(tmp_path / "m.st", valid, **{field: evil}), model)
    assert "\\n" in message and "\x1b" not in message and "\r" not in message and "\u202e" not in message


def test_model_hint_is_escaped_in_the_fingerprint_message(tmp_path, model, valid):
    path = craft(tmp_path / "m.st", valid, fingerprint="0" * 32, model_hint="runs/x\nerror: \x1b[31mfake")
    message = refused(path, model, "another model", "runs/x\\nerror: \\x1b[31mfake", force=False)
    assert "\x1b" not in message


# --- against the model, even with --force ---------------------------------------------------------------------------

def test_a_token_id_beyond_the_vocabulary_is_refused_even_with_force(tmp_path, model, valid):
    vocabulary = vocabulary_size(model)
    path = craft(tmp_path / "m.st", valid, tensors={"memory": valid[1]["memory"],
                                                   "tail_tokens": torch.tensor([1, vocabulary])})
    refused(path, model, f"token id {vocabulary}", "vocabulary", "even with --force")
    craft(path, valid, tensors={"memory": valid[1]["memory"], "tail_tokens": torch.tensor([vocabulary - 1])})
    check_compatible(load_memory(path), model, force=False, name=str(path))  # the last id is a real one


def test_another_segment_size_is_refused_even_with_force(tmp_path, model, valid):
    # tokens as such a file would count them (a segment of 32, the tail of 12)
    refused(craft(tmp_path / "m.st", valid, segment_size="32", tokens="44"), model, "segments of 32", "reads 24")


def test_another_memory_shape_is_refused_even_with_force(tmp_path, model, valid):
    path = craft(tmp_path / "m.st", valid, tensors={"memory": torch.zeros(2, 48), "tail_tokens": TAIL})
    refused(path, model, "memory of shape (2, 48)", "even with --force")


def test_another_model_needs_force_and_then_loads(tmp_path, model, valid):
    path = craft(tmp_path / "m.st", valid, fingerprint="f" * 32)
    refused(path, model, "another model", force=False)
    check_compatible(load_memory(path), model, force=True, name=str(path))


def test_memory_at_the_value_cap_answers_finitely(tmp_path, model, valid):
    signs = torch.randint(0, 2, valid[1]["memory"].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    extreme = signs * memfile.MAX_MEMORY_VALUE
    path = craft(tmp_path / "m.st", valid, tensors={"memory": extreme.float(), "tail_tokens": valid[1]["tail_tokens"]})
    state = load_memory(path)
    check_compatible(state, model, force=False, name=str(path))
    answer = ask(model, state, "Where is Mary?", 2, 0.0, 1.0, torch.Generator())
    assert torch.isfinite(torch.tensor(answer.logprob))


def test_a_float16_memory_file_can_be_forced_onto_the_float32_model(tmp_path, model, valid):
    memory = valid[1]["memory"].half()
    path = craft(tmp_path / "m.st", valid, tensors={"memory": memory, "tail_tokens": valid[1]["tail_tokens"]},
                 dtype="float16")
    state = load_memory(path)
    check_compatible(state, model, force=True, name=str(path))
    assert state.memory.dtype == torch.float16


# --- the command line ----------------------------------------------------------------------------------------------

CRAFTED_FOR_ASK = {
    "NaN memory": lambda v, p: craft(p, v, tensors={"memory": torch.full((2, 32), float("nan")), "tail_tokens": TAIL}),
    "huge memory": lambda v, p: craft(p, v, tensors={"memory": torch.full((2, 32), 1e30), "tail_tokens": TAIL}),
    "token beyond the vocabulary": lambda v, p: craft(p, v, tensors={"memory": v[1]["memory"],
                                                                     "tail_tokens": torch.tensor([10**9])}),
    "a newline in a field": lambda v, p: craft(p, v, rmt_format="1\nerror: a forged second line"),
    "random bytes": lambda v, p: raw_file(p, os.urandom(100), os.urandom(200)),
}


@pytest.mark.parametrize("case", CRAFTED_FOR_ASK)
def test_ask_on_a_crafted_file_is_one_error_line(tmp_path, checkpoint, valid, case):
    path = CRAFTED_FOR_ASK[case](valid, tmp_path / "m.st")
    result = CliRunner().invoke(app, ["ask", str(path), "Where is Mary?", "--model", str(checkpoint), "--json",
                                      "--force"])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "NaN" not in result.stdout


def test_ask_on_a_fifo_does_not_hang(tmp_path, checkpoint):
    os.mkfifo(tmp_path / "pipe.st")
    with released_after(tmp_path / "pipe.st"):
        result = CliRunner().invoke(app, ["ask", str(tmp_path / "pipe.st"), "Where?", "--model", str(checkpoint)])
    assert result.exit_code == 2 and "not a regular file" in result.stderr


def test_append_onto_a_float16_file_says_what_the_file_holds(tmp_path, checkpoint, valid):
    """The file's dtype was blamed on --dtype, which the user had not given."""
    memory = valid[1]["memory"].half()
    path = craft(tmp_path / "m.st", valid, tensors={"memory": memory, "tail_tokens": valid[1]["tail_tokens"]},
                 dtype="float16")
    before = path.read_bytes()
    (tmp_path / "more.txt").write_text("John moved to the office. " * 5)
    r = run_cli(["ingest", "--append", path, tmp_path / "more.txt", "--model", checkpoint, "-q"])
    one_error_line(r, 2, f"--append {path}", "holds a float16 memory", "float32 or bfloat16", "-o")
    assert "--dtype" not in r.stderr and path.read_bytes() == before
    # --dtype unlike the file's names both; a --dtype rmt does not know is named as such first
    plain = craft(tmp_path / "plain.st", valid)
    one_error_line(run_cli(["ingest", "--append", plain, tmp_path / "more.txt", "--model", checkpoint, "--dtype",
                            "bf16", "-q"]), 2, "--dtype bf16", "holds a float32 memory", "leave out --dtype")
    one_error_line(run_cli(["ingest", "--append", path, tmp_path / "more.txt", "--model", checkpoint, "--dtype",
                            "float16", "-q"]), 2, "--dtype 'float16'", "choose float32 or bfloat16")
    assert path.read_bytes() == before


# --- writing -------------------------------------------------------------------------------------------------------

DISK_FULL = {
    "safetensors": lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    "OSError": lambda: OSError(28, "No space left on device"),
}


def _failing_save_file(error, only=""):
    """save_file that writes half a file to the temporary name, then fails as a full disk does."""
    real = memfile.save_file

    def save_file(tensors, filename, metadata=None):
        if only not in os.path.basename(filename):
            return real(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise error()

    return save_file


@pytest.mark.parametrize("kind", DISK_FULL)
def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, valid, kind):
    path = tmp_path / "m.st"
    old = Path(valid[0]).read_bytes()  # a memory file: what save_memory may replace
    path.write_bytes(old)
    monkeypatch.setattr(memfile, "save_file", _failing_save_file(DISK_FULL[kind]))
    with pytest.raises(RMTError) as caught:
        save_memory(path, load_memory(valid[0]))
    message = str(caught.value)
    assert type(caught.value) is RMTError and caught.value.exit_code == 1
    assert message == f"{path}: cannot write the memory file: " + (
        "I/O error: No space left on device (os error 28)" if kind == "safetensors" else "No space left on device")
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.st"]  # the temporary file is gone


def test_a_real_write_error_from_safetensors_is_one_line(tmp_path, valid):
    resource = pytest.importorskip("resource")
    import signal

    state = load_memory(valid[0])
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, limits[1]))
    try:
        with pytest.raises(RMTError) as caught:
            save_memory(tmp_path / "m.st", state)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert type(caught.value) is RMTError and "File too large" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_batch_loses_only_its_own_document(tmp_path, monkeypatch, checkpoint):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_bytes(DOCUMENT)
    out = tmp_path / "out"
    out.mkdir()
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "c.txt"), "-o", str(out / "b.st"), "--model", str(checkpoint),
                                 "-q"])
    assert r.exit_code == 0, r.stderr
    old_memory = (out / "b.st").read_bytes()  # an earlier memory file, which a failed write must leave as it was
    (tmp_path / "jobs.tsv").write_text("".join(f"{tmp_path / n}.txt\t{out / n}.st\n" for n in "abc"))
    monkeypatch.setattr(memfile, "save_file", _failing_save_file(DISK_FULL["safetensors"], only=".b.st."))
    result = CliRunner().invoke(app, ["ingest", "--manifest", str(tmp_path / "jobs.tsv"), "--model", str(checkpoint),
                                      "-q", "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    rows = json.loads(result.stdout)
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert rows[1]["error"] == f"{out / 'b.st'}: cannot write the memory file: I/O error: No space left on device " \
                               f"(os error 28)"
    assert "done: 2 of 3 documents" in result.stderr
    load_memory(out / "a.st"), load_memory(out / "c.st")
    assert (out / "b.st").read_bytes() == old_memory
    assert sorted(p.name for p in out.iterdir()) == ["a.st", "b.st", "c.st"]


# --- property-based: nothing but acceptance or one UsageError line ------------------------------------------------

@PROPERTY
@given(data=st.binary(max_size=4096))
def test_random_bytes(model, scratch, data):
    scratch.write_bytes(data)
    accepted_or_one_line(scratch, model)


@PROPERTY
@given(header=st.binary(max_size=400), data=st.binary(max_size=200))
def test_random_bytes_behind_a_plausible_header_length(model, scratch, header, data):
    raw_file(scratch, header, data)
    accepted_or_one_line(scratch, model)


MUTATION = st.tuples(st.sampled_from(["flip", "flip tensor data", "insert", "delete", "truncate"]),
                     st.integers(0, 2**31), st.binary(min_size=1, max_size=8))


@PROPERTY
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_random_mutations_of_a_valid_file(model, valid, scratch, mutations):
    data = bytearray(valid[0].read_bytes())
    for op, where, chunk in mutations:
        at = where % (len(data) + 1)
        if op == "flip tensor data":  # past the header, so that most such files still parse
            header_end = 8 + int.from_bytes(data[:8], "little")
            at = header_end + where % max(len(data) - header_end, 1)
        if op.startswith("flip") and at < len(data):
            data[at] ^= chunk[0] or 1
        elif op == "insert":
            data[at:at] = chunk
        elif op == "delete":
            del data[at : at + len(chunk)]
        elif op == "truncate":
            del data[at:]
    scratch.write_bytes(bytes(data))
    accepted_or_one_line(scratch, model)


NUMBERS = st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(["", "0", "2", "24", "+24", "1e3", "nan",
                                                                             " 1", "٢"]))
FIELD_VALUE = st.one_of(
    st.text(max_size=40), NUMBERS, st.text("0123456789abcdefABCDEF", max_size=40),
    st.sampled_from(["float32", "bfloat16", "float16", "float64", "1", "[]", "[{}]", "[" * 3000, "\n\x1b", "null"]),
    st.lists(st.fixed_dictionaries({"name": st.one_of(st.text(max_size=5), st.integers()),
                                    "size": st.one_of(st.integers(-2, 2**64), st.booleans(), st.floats()),
                                    "sha256": st.sampled_from(["", "ab" * 32, "AB" * 32, "x"])}),
             max_size=3).map(json.dumps),
)
METADATA_KEYS = ["rmt_format", "rmt_version", "fingerprint", "model_hint", "dtype", "segment_size", "num_mem_tokens",
                 "tokens", "segments", "carry_text", "pending_bytes_hex", "sources", "sources_omitted", "created",
                 "something_else"]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64]
TOKEN_TENSOR_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.float32]


@st.composite
def crafted_tensors(draw, valid_memory, valid_tail):
    """Mostly the valid tensors, so that what is wrong in the rest is reached."""
    tensors = {"memory": valid_memory, "tail_tokens": valid_tail}
    if draw(st.integers(0, 2)) == 0:
        shape = draw(st.one_of(st.just(list(valid_memory.shape)), st.lists(st.integers(0, 40), max_size=3)))
        values = torch.full(shape, draw(st.sampled_from([0.0, -3.5, 7e4, 1e30, float("nan"), float("inf")])))
        if values.numel() and draw(st.booleans()):
            values = torch.randn(shape) * draw(st.sampled_from([1.0, 1e3, 6e4]))
        tensors["memory"] = values.to(draw(st.sampled_from(FLOAT_DTYPES)))
    if draw(st.integers(0, 2)) == 0:
        ids = draw(st.lists(st.one_of(st.integers(0, 500), st.integers(-5, 2**40)), max_size=30))
        tensors["tail_tokens"] = torch.tensor(ids, dtype=torch.int64).to(draw(st.sampled_from(TOKEN_TENSOR_DTYPES)))
    if draw(st.integers(0, 19)) == 0:
        del tensors[draw(st.sampled_from(sorted(tensors)))]
    if draw(st.integers(0, 19)) == 0:
        tensors["extra"] = torch.zeros(1)
    return tensors


@PROPERTY
@given(data=st.data())
def test_structured_mutations_of_a_valid_file(model, valid, scratch, data):
    _, tensors, meta = valid
    crafted_meta = dict(meta)
    for key in data.draw(st.lists(st.sampled_from(METADATA_KEYS), max_size=2, unique=True)):
        if data.draw(st.integers(0, 9)) == 0:
            crafted_meta.pop(key, None)
        else:
            crafted_meta[key] = data.draw(FIELD_VALUE)
    crafted = data.draw(crafted_tensors(tensors["memory"], tensors["tail_tokens"]))
    scratch.write_bytes(safetensors_bytes(crafted, metadata=crafted_meta))
    accepted_or_one_line(scratch, model)


# Third review (a crafted set): safetensors headers as a crafter may write them; each was already handled.


def _with_header(data: bytes, change) -> bytes:
    size = int.from_bytes(data[:8], "little")
    header = change(data[8 : 8 + size])
    return len(header).to_bytes(8, "little") + header + data[8 + size :]


CRAFTED_HEADERS = {  # name: (how the header is changed, None if the file still loads, else words of the error)
    "padded with spaces (the format allows it)": (lambda h: h + b" " * 1000, None),
    "the same tensor entry twice": (lambda h: h.rstrip()[:-1] + b', "memory": '
                                    + json.dumps(json.loads(h)["memory"]).encode() + b"}", None),
    "__metadata__ twice": (lambda h: h.rstrip()[:-1] + b', "__metadata__": {"rmt_format": "1"}}', "duplicate field"),
    "padded with NUL bytes": (lambda h: h + b"\0" * 16, "trailing characters"),
    "a byte order mark first": (lambda h: b"\xef\xbb\xbf" + h, "expected value"),
    "a NaN literal": (lambda h: h.replace(b'"__metadata__"', b'"x": NaN, "__metadata__"'), "expected value"),
    "a lone surrogate escape": (lambda h: h.replace(b'"created":"', b'"created":"\\ud800'), "hex escape"),
}


@pytest.mark.parametrize("name", CRAFTED_HEADERS)
def test_crafted_headers_load_exactly_or_are_one_line(tmp_path, valid, name):
    change, words = CRAFTED_HEADERS[name]
    path = tmp_path / "crafted.st"
    path.write_bytes(_with_header(valid[0].read_bytes(), change))
    if words is None:
        assert torch.equal(load_memory(path).memory, load_memory(valid[0]).memory)
        return
    with pytest.raises(UsageError) as caught:
        load_memory(path)
    assert len(str(caught.value).splitlines()) == 1 and "not a readable rmt memory file" in str(caught.value)
    assert words in str(caught.value)


def test_a_changed_tensor_byte_is_refused_by_the_checksum(tmp_path, valid, model):
    """The tenth review: one flipped bit in the memory tensor was read as another memory (a changed answer, exit
    0). The tensors' sha256 in the metadata catches it; a file from before the checksum still loads."""
    path, tensors, meta = valid
    data = bytearray(Path(path).read_bytes())
    header = int.from_bytes(data[:8], "little")
    start = json.loads(data[8 : 8 + header])["memory"]["data_offsets"][0]
    data[8 + header + start + 10] ^= 2
    flipped = tmp_path / "flipped.st"
    flipped.write_bytes(bytes(data))
    refused(flipped, model, "checksum")
    older = craft(tmp_path / "older.st", valid, tensors_sha256=None)
    assert torch.equal(load_memory(older).memory, load_memory(path).memory)


def test_a_zero_dimensional_tensor_with_a_checksum_is_one_line(tmp_path, valid, model):
    """The checksum is computed before the shapes are checked: a crafted 0-dim memory once escaped as a traceback."""
    _, tensors, _ = valid
    path = craft(tmp_path / "m.st", valid, tensors={**tensors, "memory": torch.tensor(1.0)})
    refused(path, model, "memory")
