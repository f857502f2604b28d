"""The eighteenth review (untuned, session 15): each test holds a fault it found, reproduced as it was found, and
the faults left open by the seventeenth."""

import os
import re

import pytest
from safetensors.torch import load_file

from conftest import MEMFILE_TEXT, one_error_line, run_cli as run


def _pipe_of(data: bytes) -> tuple[int, str]:
    """A pipe holding `data`, its writer closed, named as a shell names `<(…)`: /dev/fd/N."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end, f"/dev/fd/{read_end}"


def test_ingest_reads_a_pipe_named_by_path_as_it_reads_stdin(tmp_path, checkpoint):
    """`rmt ingest <(zcat book.gz)` and `rmt ingest /dev/stdin` were refused as "not a regular file"."""
    read_end, name = _pipe_of(MEMFILE_TEXT.encode())
    try:
        piped = run(["ingest", name, "-o", tmp_path / "piped.st", "--model", checkpoint, "-q"])
    finally:
        os.close(read_end)
    assert piped.exit_code == 0, piped.stderr
    stdin = run(["ingest", "-", "-o", tmp_path / "stdin.st", "--model", checkpoint, "-q"], input=MEMFILE_TEXT)
    assert stdin.exit_code == 0, stdin.stderr
    a, b = load_file(tmp_path / "piped.st"), load_file(tmp_path / "stdin.st")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_piped_input_is_judged_binary_by_its_first_block_and_a_device_is_refused(tmp_path, checkpoint):
    read_end, name = _pipe_of(b"\0\1\2" * 100)
    try:
        one_error_line(run(["ingest", name, "-o", tmp_path / "b.st", "--model", checkpoint, "-q"]), 2,
                       "looks like binary data")
    finally:
        os.close(read_end)
    one_error_line(run(["ingest", "/dev/null", "-o", tmp_path / "n.st", "--model", checkpoint, "-q"]), 2,
                   "/dev/null: not a regular file")
    assert not (tmp_path / "b.st").exists() and not (tmp_path / "n.st").exists()


def test_one_pipe_named_twice_is_refused(tmp_path, checkpoint):
    read_end, name = _pipe_of(MEMFILE_TEXT.encode())
    try:
        one_error_line(run(["ingest", name, name, "-o", tmp_path / "t.st", "--model", checkpoint, "-q"]), 2,
                       "the same pipe is named twice")
    finally:
        os.close(read_end)


def _usage_error_in_a_child(code: str) -> str:
    """What UsageError `code` raises, run in a child process: a fault there was a hang, which must not hang the
    suite."""
    import subprocess
    import sys

    program = f"from rmt_cli.errors import UsageError\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines())
    program += "except UsageError as e:\n    print(e)\n"
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def test_an_output_turned_into_a_fifo_before_its_lock_is_refused_not_waited_on(tmp_path):
    """A manifest job's output replaced by a FIFO while an earlier job ran: the lock's open() waited for a writer
    that never came, and the batch hung for ever."""
    os.mkfifo(tmp_path / "late.st")
    said = _usage_error_in_a_child(
        f"from rmt_cli.atomic import hold_lock\nhold_lock({str(tmp_path / 'late.st')!r}, 'x')")
    assert "late.st: is not a regular file (a device, a FIFO or a socket) now" in said, said


def test_an_input_turned_into_a_fifo_after_its_check_is_refused_not_waited_on(tmp_path):
    """A folder's later file replaced by a FIFO while an earlier one was read: open() waited for ever."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.txt").write_text(MEMFILE_TEXT)
    (tmp_path / "code" / "z.txt").write_text(MEMFILE_TEXT)
    said = _usage_error_in_a_child(
        f"import os\nfrom rmt_cli.data.sources import open_document\n"
        f"document = open_document([{str(tmp_path / 'code')!r}])\n"
        f"os.remove({str(tmp_path / 'code' / 'z.txt')!r})\nos.mkfifo({str(tmp_path / 'code' / 'z.txt')!r})\n"
        f"for block in document.chunks():\n    pass")
    assert "z.txt: is not a regular file now (replaced since it was checked)" in said, said


@pytest.mark.parametrize("make", ["missing", "binary"])
def test_a_text_path_with_a_newline_stays_one_error_line_in_perplexity_and_eval(tmp_path, checkpoint, make):
    """`rmt perplexity $'no\\nsuch'` and `rmt eval --noise $'bi\\nn.dat'` printed the name raw: two error lines."""
    path = tmp_path / "bi\nn.dat"
    if make == "binary":
        path.write_bytes(b"\0\1" * 1000)
    one_error_line(run(["perplexity", path, "--model", checkpoint]), 2, "bi\\nn.dat")
    one_error_line(run(["eval", "--noise", path, "--lengths", "1k", "--samples", "2"]), 2, "bi\\nn.dat")


def test_a_manifest_name_with_a_line_separator_stays_one_error_line(tmp_path, checkpoint):
    """U+2028 in a manifest's output name: str.splitlines() cut the error there into two `error:` lines."""
    (tmp_path / "a.txt").write_text(MEMFILE_TEXT)
    odd = tmp_path / "x\u2028y.st"
    (tmp_path / "jobs.tsv").write_text(f"{tmp_path / 'a.txt'}\t{odd}\n{odd}\t{tmp_path / 'z.st'}\n")
    one_error_line(run(["ingest", "--manifest", tmp_path / "jobs.tsv", "--model", checkpoint]), 2,
                   "x\\u2028y.st: read by job 2 and written by job 1")


@pytest.mark.parametrize("extra, override, says", [
    ('"bad\\nkey": 1\n', None, "bad\\nkey: unknown key"),
    ("", "bad\nkey=1", "bad\\nkey: unknown key"),
    ("", "curriculum.0.x\ry=1", "curriculum.0.x\\ry: unknown key"),
    ("", 'task.noise={kind: files, paths: ["/nonexist/a\\nb"]}', "/nonexist/a\\nb: no such file"),
])
def test_a_recipe_key_or_value_with_a_newline_stays_one_error_line(tmp_path, extra, override, says):
    """The field path (a key) and a validator's message quoting a path were printed raw: one error, two lines."""
    import yaml

    from conftest import TINY_RECIPE

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}) + extra)
    one_error_line(run(["train", recipe, *([override] if override else [])]), 2, says)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("engine", ["auto", "transformers"])
def test_a_checkpoint_saved_from_a_loaded_one_has_the_same_tokenizer_config(tmp_path, checkpoint, engine):
    """A resumed run's checkpoints gained `"is_local": true, "local_files_only": true` in tokenizer_config.json
    (from_pretrained's options written back by save_pretrained): unlike the uninterrupted run's."""
    from rmt_cli import load_checkpoint
    from rmt_cli.storage.checkpoint import save_checkpoint

    loaded = load_checkpoint(checkpoint, engine=engine)
    save_checkpoint(tmp_path / "again", loaded.cell, loaded.tokenizer, loaded.memory_settings, "test")
    assert (tmp_path / "again" / "tokenizer_config.json").read_text() == \
        (checkpoint / "tokenizer_config.json").read_text()


def test_model_config_keys_the_architecture_lacks_are_refused_at_once_with_a_hint(tmp_path):
    """`model.config.n_embed=64 model.config.num_layers=3` trained the recipe's model and wrote both keys into
    config.json, where nothing reads them."""
    import yaml

    from conftest import TINY_RECIPE

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}))
    r = run(["train", tmp_path / "r.yaml", "model.config.n_embed=64", "model.config.num_layers=3"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 2, r.stderr
    assert "model.config.n_embed: not a setting of gpt2 models" in lines[0] and "did you mean 'n_embd'" in lines[0]
    assert lines[1].startswith("error: model.config.num_layers: not a setting")
    assert not (tmp_path / "run").exists()
    # A key the class takes under another name (llama's rope_theta) or maps (gpt2's hidden_size) is a setting.
    ok = run(["train", tmp_path / "r.yaml", "model.config.hidden_size=32", "curriculum.0.steps=1", "-q"])
    assert ok.exit_code == 0, ok.stderr


def test_standard_input_or_one_pipe_read_by_two_manifest_jobs_is_refused_before_anything_is_read(tmp_path, checkpoint):
    """A manifest with `-` on two lines: the two documents took alternate blocks of one stdin, both `done`."""
    (tmp_path / "jobs.tsv").write_text(f"-\t{tmp_path / 'a.st'}\n-\t{tmp_path / 'b.st'}\n")
    one_error_line(run(["ingest", "--manifest", tmp_path / "jobs.tsv", "--model", checkpoint], input=MEMFILE_TEXT),
                   2, "standard input (-): read by job 1 and job 2; it can be read only once")
    read_end, name = _pipe_of(MEMFILE_TEXT.encode())
    try:
        (tmp_path / "jobs.tsv").write_text(f"{name}\t{tmp_path / 'a.st'}\n{name}\t{tmp_path / 'b.st'}\n")
        one_error_line(run(["ingest", "--manifest", tmp_path / "jobs.tsv", "--model", checkpoint]), 2,
                       f"the pipe {name}: read by job 1 and job 2")
    finally:
        os.close(read_end)
    assert not (tmp_path / "a.st").exists() and not (tmp_path / "b.st").exists()


def test_a_manifest_read_from_stdin_cannot_have_a_job_read_stdin(tmp_path, checkpoint):
    """`… | rmt ingest --manifest /dev/stdin` with a `-` job: the job read the drained stdin, an empty memory,
    exit 0."""
    import subprocess
    import sys

    (tmp_path / "a.txt").write_text(MEMFILE_TEXT)
    manifest = f"{tmp_path / 'a.txt'}\t{tmp_path / 'a.st'}\n-\t{tmp_path / 'b.st'}\n"
    r = subprocess.run([sys.executable, "-m", "rmt_cli", "ingest", "--manifest", "/dev/stdin", "--model",
                        str(checkpoint), "-q"], input=manifest, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: manifest /dev/stdin:2: reads standard input (-), which holds the manifest itself", r.stderr
    assert not (tmp_path / "a.st").exists()


@pytest.mark.parametrize("line", [" {a}\t{o}", "{a} \t{o}", "{a}\t{o} "])
def test_a_manifest_name_with_white_space_at_an_end_is_refused_not_stripped(tmp_path, monkeypatch, checkpoint, line):
    """`manifest_jobs` stripped both fields: a line naming ` sp.txt` read a sibling `sp.txt` without a word."""
    (tmp_path / "sp.txt").write_text(MEMFILE_TEXT)
    (tmp_path / " sp.txt").write_text("another text")
    (tmp_path / "jobs.tsv").write_text(line.format(a="sp.txt", o="sp.st") + "\n")
    monkeypatch.chdir(tmp_path)
    one_error_line(run(["ingest", "--manifest", "jobs.tsv", "--model", checkpoint]), 2,
                   "begins or ends with white space; names are taken as written")
    assert not (tmp_path / "sp.st").exists()


@pytest.mark.parametrize("field, value, says", [
    ("tail_tokens", [-1, -2], "state: tensor tail_tokens holds a negative token id"),
    ("tail_tokens", [1.5], "state: a field of the MemoryState is not of its type"),
    ("memory", "3-d", "state: tensor memory has shape"),
    ("carry_text", b"abc", "state: a field of the MemoryState is not of its type"),
    ("pending_bytes", "ab", "state: a field of the MemoryState is not of its type"),
    ("memory", 1e30, "state: the memory holds values that are not finite"),
    ("tail_tokens", [5] * 1000, "state: tensor tail_tokens holds 1000 tokens"),
])
def test_the_api_ask_checks_a_state_as_load_memory_checks_a_file(memfile, checkpoint, field, value, says):
    """A MemoryState edited in Python: IndexError (a negative id), RuntimeError, TypeError, AttributeError from
    deep inside, or an answer from a memory no file may hold (values of 1e30, a tail of 1,000 tokens)."""
    import torch

    from rmt_cli import ask, load_checkpoint, load_memory
    from rmt_cli.errors import RMTError

    state = load_memory(memfile)
    if field == "memory":
        value = state.memory.unsqueeze(0) if value == "3-d" else torch.full(state.memory.shape, value)
    setattr(state, field, value)
    with pytest.raises(RMTError, match=says):
        ask(load_checkpoint(checkpoint), state, "Where is Mary?")


def test_the_api_ingest_takes_one_job_and_refuses_a_lookahead_that_is_no_count(tmp_path, checkpoint):
    """`ingest(IngestJob(...), m)`: "TypeError: 'IngestJob' object is not iterable"; `lookahead=None`: a TypeError
    from a comparison; 0 and -3 accepted without a word."""
    from rmt_cli import IngestJob, ingest, load_checkpoint
    from rmt_cli.errors import UsageError

    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    model = load_checkpoint(checkpoint)
    [result] = ingest(IngestJob(str(tmp_path / "s.txt"), tmp_path / "one.st"), model)
    assert result.error is None and (tmp_path / "one.st").is_file()
    for lookahead in (None, 0, -3, 2.5):
        with pytest.raises(UsageError, match=f"lookahead {lookahead}"):
            ingest([IngestJob(str(tmp_path / "s.txt"), tmp_path / "two.st")], model, lookahead=lookahead)
    assert not (tmp_path / "two.st").exists()


def test_the_api_writes_no_memory_file_inside_a_checkpoint_folder(tmp_path, checkpoint, memfile):
    """`rmt ingest -o CK/x.st` was refused, but the API's ingest and save_memory wrote there: the folder then was
    no longer a checkpoint rmt would replace."""
    import shutil

    from rmt_cli import IngestJob, ingest, load_checkpoint, load_memory, save_memory
    from rmt_cli.errors import UsageError
    from rmt_cli.storage.checkpoint import is_rmt_checkpoint

    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    with pytest.raises(UsageError, match="api.st: is inside the checkpoint folder"):
        ingest([IngestJob(str(tmp_path / "s.txt"), copy / "api.st")], load_checkpoint(checkpoint))
    with pytest.raises(UsageError, match="save_memory: .*is inside the checkpoint folder"):
        save_memory(copy / "api2.st", load_memory(memfile))
    assert is_rmt_checkpoint(copy) and not (copy / "api.st").exists() and not (copy / "api2.st").exists()


def test_an_output_link_into_a_missing_folder_is_refused_before_reading(tmp_path, checkpoint):
    """`-o dang.st` (a link to nodir/sub/x.st): the whole book was ingested, then exit 1 "cannot write"."""
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    (tmp_path / "dang.st").symlink_to("nodir/sub/x.st")
    one_error_line(run(["ingest", tmp_path / "s.txt", "-o", tmp_path / "dang.st", "--model", checkpoint]), 2,
                   "a symbolic link to nodir/sub/x.st, in a folder that does not exist")


def test_a_folder_of_the_users_at_a_checkpoints_tmp_name_is_never_removed(tmp_path, checkpoint):
    """`final.tmp/thesis.txt` (and `apiout.tmp/` beside the API's `save_checkpoint('apiout', …)`) was rmtree'd by
    the write's clearing of a killed write's leftovers."""
    import yaml

    from conftest import TINY_RECIPE
    from rmt_cli import load_checkpoint
    from rmt_cli.errors import UsageError
    from rmt_cli.storage.checkpoint import save_checkpoint

    loaded = load_checkpoint(checkpoint)
    (tmp_path / "apiout.tmp").mkdir()
    (tmp_path / "apiout.tmp" / "thesis.txt").write_text("precious")
    with pytest.raises(UsageError, match="apiout.tmp: holds what is not part of a checkpoint"):
        save_checkpoint(tmp_path / "apiout", loaded.cell, loaded.tokenizer, loaded.memory_settings, "test")
    assert (tmp_path / "apiout.tmp" / "thesis.txt").read_text() == "precious"
    # What a killed write leaves (checkpoint files only) is still cleared, and the checkpoint written.
    (tmp_path / "apiout.tmp" / "thesis.txt").unlink()
    (tmp_path / "apiout.tmp" / "config.json").write_text("{")
    save_checkpoint(tmp_path / "apiout", loaded.cell, loaded.tokenizer, loaded.memory_settings, "test")
    assert not (tmp_path / "apiout.tmp").exists() and load_checkpoint(tmp_path / "apiout")

    run_dir = tmp_path / "run"
    (run_dir / "final.tmp").mkdir(parents=True)
    (run_dir / "final.tmp" / "thesis.txt").write_text("precious")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(run_dir)}))
    one_error_line(run(["train", tmp_path / "r.yaml"]), 2, "final.tmp holds what is not part of a checkpoint")
    assert (run_dir / "final.tmp" / "thesis.txt").read_text() == "precious"
    assert not (run_dir / "final").exists()


def test_the_bpe_trainer_sees_no_word_longer_than_ingest_keeps():
    """200,000 characters without a space among noise files: minutes in the BPE trainer (its work grows faster
    than a word's length), deaf to Ctrl-C. The trainer gets such a run in pieces, and the text is otherwise whole."""
    from rmt_cli.data.tokenstream import MAX_CARRY_CHARS
    from rmt_cli.storage.modeling import _bounded_words, train_bpe

    texts = ["a" * 200_000 + " tail", "plain words here", "x" * MAX_CARRY_CHARS + " y " + "b" * (MAX_CARRY_CHARS + 1)]
    pieces = list(_bounded_words(texts))
    assert "".join(pieces) == "".join(texts)
    assert max(len(word) for piece in pieces for word in piece.split()) == MAX_CARRY_CHARS
    assert "plain words here" in pieces and "x" * MAX_CARRY_CHARS + " y " in pieces
    tokenizer = train_bpe(texts, 300)
    assert tokenizer.decode(tokenizer.encode("plain words")) == "plain words"


@pytest.mark.parametrize("override, says", [
    ("output_dir=runs/a #b", "YAML reads the text from its '#' as a comment and drops it"),
    ("output_dir=#b", "YAML reads the text from its '#' as a comment and drops it"),
    ("output_dir=of\nx", "YAML folds the newline of a plain value into a space"),
])
def test_an_override_value_yaml_would_cut_or_fold_is_refused(tmp_path, monkeypatch, override, says):
    """`output_dir=runs/a #b` trained into runs/a; `output_dir=$'of\\nx'` into `of x`: other folders than named."""
    import yaml

    from conftest import TINY_RECIPE

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(TINY_RECIPE))
    one_error_line(run(["train", "r.yaml", override]), 2, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_an_override_value_with_a_hash_yaml_keeps_is_taken(tmp_path):
    from conftest import TINY_RECIPE
    from rmt_cli.storage.recipe import apply_overrides

    data = apply_overrides(dict(TINY_RECIPE), ['output_dir="runs/a #b"', "output_dir=a#b"])
    assert data["output_dir"] == "a#b"
    assert apply_overrides(dict(TINY_RECIPE), ["output_dir='x #y'"])["output_dir"] == "x #y"


def test_resuming_a_run_from_an_earlier_checkpoint_than_its_latest_is_refused(tmp_path):
    """`resume=RUN/checkpoints/step-350` beside step-403: pruning then kept the abandoned step-403 over the new
    branch's, and a later resume=auto went back to it without a word."""
    import yaml

    from conftest import TINY_RECIPE

    recipe = {**TINY_RECIPE, "output_dir": str(tmp_path / "run"), "curriculum": [{"segments": 1, "steps": 3}],
              "checkpoint": {"every": 1, "keep": 3}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert run(["train", tmp_path / "r.yaml", "-q"]).exit_code == 0
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == ["step-0000001", "step-0000002", "step-0000003"]
    earlier = tmp_path / "run" / "checkpoints" / "step-0000001"
    one_error_line(run(["train", tmp_path / "r.yaml", f"resume={earlier}", "curriculum.0.steps=4"]), 2,
                   "is an earlier step than", "step-0000003", "would mix two histories")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == steps
    # The latest checkpoint named explicitly is as resume=auto.
    latest = tmp_path / "run" / "checkpoints" / "step-0000003"
    assert run(["train", tmp_path / "r.yaml", f"resume={latest}", "curriculum.0.steps=4", "-q"]).exit_code == 0


@pytest.mark.parametrize("swapped", ["model.safetensors", "memory.safetensors", "tokenizer.json"])
def test_a_checkpoint_with_a_file_of_another_run_is_not_resumed(tmp_path, swapped):
    """Another run's weights, memory or tokenizer copied into the checkpoint to resume: a hybrid trained on, exit 0
    (the optimizer state alone had a digest)."""
    import shutil

    import yaml

    from conftest import TINY_RECIPE

    for name, seed in (("a", 0), ("b", 1)):
        recipe = {**TINY_RECIPE, "seed": seed, "output_dir": str(tmp_path / name),
                  "curriculum": [{"segments": 1, "steps": 2}], "checkpoint": {"every": 1, "keep": 1}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        assert run(["train", tmp_path / f"{name}.yaml", "-q"]).exit_code == 0
    step = "checkpoints/step-0000002"
    if swapped == "tokenizer.json":  # another tokenizer of the same size: its ids name other strings
        other = yaml.safe_load((tmp_path / "b.yaml").read_text())
        other["tokenizer"]["training_texts"] = 40
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({**other, "output_dir": str(tmp_path / "c")}))
        assert run(["train", tmp_path / "c.yaml", "-q"]).exit_code == 0
        shutil.copy(tmp_path / "c" / step / swapped, tmp_path / "a" / step / swapped)
    else:
        shutil.copy(tmp_path / "b" / step / swapped, tmp_path / "a" / step / swapped)
    one_error_line(run(["train", tmp_path / "a.yaml", "resume=auto"]), 2,
                   "its weights, memory or tokenizer are not those rmt.json was written for")


def _base_model_folder(tmp_path, checkpoint, name: str):
    """A pretrained model's folder as a hub download holds it (config, tokenizer, weights), from `checkpoint`."""
    import shutil

    folder = tmp_path / name
    folder.mkdir()
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        shutil.copy(checkpoint / file, folder / file)
    return folder


def _base_model_recipe(tmp_path, folder) -> str:
    import yaml

    recipe = {"model": {"name_or_path": str(folder)}, "tokenizer": {"kind": "model"},
              "memory": {"num_mem_tokens": 2, "segment_size": 24}, "task": {"name": "memorize"},
              "curriculum": [{"segments": 1, "steps": 1}], "eval": {"samples": 1}, "output_dir": str(tmp_path / "run")}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "base.yaml")


def test_a_base_model_whose_shard_index_names_a_pickle_is_refused_unread(tmp_path, checkpoint):
    """A `model.safetensors.index.json` mapping the weights to `pytorch_model.bin`: transformers torch.load'ed the
    pickle (trained on, exit 0), and a pickle that is no state dict ended in a 77-line traceback."""
    import json

    import torch
    from safetensors.torch import load_file

    folder = _base_model_folder(tmp_path, checkpoint, "base")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {name: "pytorch_model.bin" for name in weights}}))
    # Found in the index before transformers reads it (the twentieth review); torch.load refused in any case below
    one_error_line(run(["train", _base_model_recipe(tmp_path, folder)]), 2,
                   "names the shard pytorch_model.bin; a shard is a .safetensors file of the model's own folder")
    assert not (tmp_path / "run" / "final").exists()


def test_a_base_model_whose_config_names_code_trains_a_checkpoint_rmt_reads(tmp_path, checkpoint):
    """`auto_map` in a base model's config.json (trust_remote_code off: the built-in class is trained) was copied
    into every checkpoint, which resume, extend and ingest then refused."""
    import json

    folder = _base_model_folder(tmp_path, checkpoint, "base")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil.M"}}))
    assert run(["train", _base_model_recipe(tmp_path, folder), "-q"]).exit_code == 0
    assert "auto_map" not in json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    r = run(["ingest", tmp_path / "s.txt", "-o", tmp_path / "m.st", "--model", tmp_path / "run" / "final", "-q"])
    assert r.exit_code == 0, r.stderr


def test_an_extend_run_stopped_before_its_first_checkpoint_starts_again_from_the_trained_model(tmp_path):
    """`rmt train RUN/recipe.yaml resume=auto` of an extend run killed before its first checkpoint (the README's way
    to continue a run) built a model from scratch without a word: its recipe.yaml did not say where it began."""
    import shutil

    import yaml
    from safetensors.torch import load_file

    from conftest import TINY_RECIPE

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "base")}))
    assert run(["train", tmp_path / "base.yaml", "-q"]).exit_code == 0
    trained = tmp_path / "base" / "final"
    longer = {"task": TINY_RECIPE.get("task", {"name": "memorize"}), "curriculum": [{"segments": 2, "steps": 2}],
              "eval": {"samples": 1}, "checkpoint": {"every": 1000}}
    (tmp_path / "longer.yaml").write_text(yaml.safe_dump(longer))
    for name in ("ref", "cut"):
        r = run(["extend", trained, tmp_path / "longer.yaml", f"output_dir={tmp_path / name}", "-q"])
        assert r.exit_code == 0, r.stderr
    assert yaml.safe_load((tmp_path / "cut" / "recipe.yaml").read_text())["init_from"] == str(trained.resolve())
    for left in (tmp_path / "cut").iterdir():  # as a kill before the first checkpoint leaves the run
        if left.name not in ("recipe.yaml", "metrics.jsonl"):
            shutil.rmtree(left)
    (tmp_path / "cut" / "metrics.jsonl").write_text("")
    r = run(["train", tmp_path / "cut" / "recipe.yaml", "resume=auto"])
    assert r.exit_code == 0 and "starting a new run from" in r.stderr, r.stderr
    again, ref = load_file(tmp_path / "cut" / "final" / "model.safetensors"), \
        load_file(tmp_path / "ref" / "final" / "model.safetensors")
    assert all(again[k].equal(ref[k]) for k in ref)
    # A recipe whose init_from names the checkpoint but asks for other locked settings is refused.
    one_error_line(run(["train", tmp_path / "cut" / "recipe.yaml", "memory.segment_size=40",
                        f"output_dir={tmp_path / 'other'}"]), 2, "memory.segment_size: the checkpoint init_from names")


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["extend", "-h"]])
def test_help_written_to_a_full_device_is_one_error_line(args):
    """`rmt train --help > /dev/full`: a 60-line traceback ending in OSError: No space left on device."""
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "rmt_cli", *args], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=120)
    assert r.returncode == 1 and r.stderr == "error: cannot write standard output: No space left on device\n", \
        r.stderr


def test_a_library_failing_for_memory_is_one_error_line(tmp_path, checkpoint, monkeypatch):
    """Under `ulimit -v`: "ImportError: libtorch_cpu.so: failed to map segment from shared object" and oneDNN's
    "RuntimeError: could not create a primitive" reached the terminal as tracebacks."""
    import rmt_cli.cli as cli

    def fail(*args, **kwargs):
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(cli, "_load_model", fail)
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    one_error_line(run(["ingest", tmp_path / "s.txt", "-o", tmp_path / "m.st", "--model", checkpoint]), 1,
                   "out of memory")

    def fail_import(*args, **kwargs):
        raise ImportError("libtorch_cpu.so: failed to map segment from shared object")

    monkeypatch.setattr(cli, "_load_model", fail_import)
    one_error_line(run(["ingest", tmp_path / "s.txt", "-o", tmp_path / "m.st", "--model", checkpoint]), 1,
                   "out of memory while loading a library")


def test_the_sources_a_memory_file_keeps_are_the_first_that_fit_in_one_pass():
    """Trimming the sources list re-serialised the whole list after each one dropped: 20,000 files, 3 minutes after
    the ingest had ended. The list kept is the longest prefix whose JSON fits, and the rest is counted."""
    import json

    import torch

    from rmt_cli.storage.memfile import MAX_METADATA_BYTES, MemoryState

    sources = [{"name": f"folder/file-{i:05d}.txt", "size": i, "sha256": "ab" * 32} for i in range(2_000)]
    state = MemoryState(memory=torch.zeros(2, 4), tail_tokens=[], fingerprint="0" * 32, model_hint="m", dtype="float32",
                        segment_size=24, num_mem_tokens=2, tokens=1, segments=1, sources=sources)
    meta = state.metadata()
    kept = json.loads(meta["sources"])
    assert kept == sources[:len(kept)] and int(meta["sources_omitted"]) == len(sources) - len(kept)
    assert sum(len(k) + len(v.encode()) for k, v in meta.items()) <= MAX_METADATA_BYTES
    # As many as the earlier way kept: drop the last until the whole list's JSON fits the budget.
    others = {k: v for k, v in meta.items() if k not in ("sources", "sources_omitted")}
    budget = MAX_METADATA_BYTES - sum(len(k) + len(v.encode()) for k, v in others.items()) - 200
    earlier = list(sources)
    while earlier and len(json.dumps(earlier).encode()) > budget:
        earlier.pop()
    assert kept == earlier


@pytest.mark.parametrize("call, says", [
    (lambda m, st: __import__("rmt_cli").load_memory("a\0b.st"), "load_memory: a\\x00b.st: holds a NUL character"),
    (lambda m, st: __import__("rmt_cli").save_memory("a\0b.st", st), "save_memory: a\\x00b.st: holds a NUL"),
    (lambda m, st: __import__("rmt_cli").IngestJob(["sm\0all.txt"], "o.st"), "paths: sm\\x00all.txt: holds a NUL"),
    (lambda m, st: __import__("rmt_cli").IngestJob(["s.txt"], "o\0.st"), "output: o\\x00.st: holds a NUL"),
    (lambda m, st: __import__("rmt_cli").IngestJob(["s.txt"], "o.st", append_from="m\0.st"), "append_from: m\\x00"),
])
def test_the_api_refuses_a_path_with_a_nul_in_one_usage_error(memfile, checkpoint, call, says):
    """`load_memory("a\\0b.st")` and the like: a raw `ValueError: embedded null byte` from the system."""
    from rmt_cli import load_checkpoint, load_memory
    from rmt_cli.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(says)):
        call(load_checkpoint(checkpoint), load_memory(memfile))


def test_a_gitignore_line_of_many_stars_is_refused_not_matched_for_hours(tmp_path, checkpoint):
    """`*a*a*a…*b` in a codebase's .gitignore and a file of 40 a's: the backtracking match spun for good."""
    from rmt_cli.data.sources import MAX_STARS_IN_A_NAME

    code = tmp_path / "code"
    code.mkdir()
    (code / "readme.txt").write_text(MEMFILE_TEXT)
    (code / ("a" * 40)).write_text("hi")
    (code / ".gitignore").write_text("*.pyc\n" + "*a" * 14 + "*b\n")
    one_error_line(run(["ingest", code, "-o", tmp_path / "m.st", "--model", checkpoint]), 2,
                   ".gitignore:2:", "has 15 '*' in one name", f"at most {MAX_STARS_IN_A_NAME}")
    # As many as allowed, and `**` (any folders) beside them, are matched as git matches them.
    (code / ".gitignore").write_text("**/" + "*a" * (MAX_STARS_IN_A_NAME - 1) + "*x\n")
    (code / "baay.x").write_text("ignored")
    r = run(["ingest", code, "-o", tmp_path / "m.st", "--model", checkpoint, "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    from rmt_cli import load_memory
    names = sorted(s["name"] for s in load_memory(tmp_path / "m.st").sources)
    assert names == sorted([str(code / ("a" * 40)), str(code / "readme.txt")]), names


def test_a_new_output_written_by_another_run_meanwhile_is_not_replaced_without_a_word(tmp_path, checkpoint):
    """Two ingests to one new `-o` path: both said `done`, exit 0, and the one that saved first was lost (a new
    output has no file to lock)."""
    from rmt_cli import IngestJob, ingest, load_checkpoint, load_memory

    (tmp_path / "s.txt").write_text(MEMFILE_TEXT * 20)
    (tmp_path / "other.txt").write_text(MEMFILE_TEXT)
    model = load_checkpoint(checkpoint)
    output = tmp_path / "race.st"
    written = []

    def other_run_saves(progress):  # another rmt finishing first, while this one reads
        if not written:
            [result] = ingest([IngestJob(str(tmp_path / "other.txt"), output)], model)
            written.append(result)

    [result] = ingest([IngestJob(str(tmp_path / "s.txt"), output)], model, on_progress=other_run_saves)
    assert written and written[0].error is None
    assert result.exit_code == 1 and "written by another program while this ingest ran" in result.error
    assert [s["name"] for s in load_memory(output).sources] == [str(tmp_path / "other.txt")]


@pytest.mark.parametrize("args, says", [
    (["train", ""], "an empty path ('') names no file or folder"),
    (["extend", "", "r.yaml"], "an empty path ('') names no file or folder"),
    (["ask", "", "Where is Mary?"], "an empty path ('') names no file or folder"),
    (["ask", "m.st", "Where is Mary?", "--model", ""], "an empty path ('') names no file or folder"),
    (["perplexity", ""], "an empty path ('') names no file or folder"),
    (["ingest", "", "-o", "x.st"], "an empty path ('') names no file or folder"),
    (["eval", "--noise", "", "--lengths", "1k", "--samples", "2"], "an empty path ('') names no file or folder"),
])
def test_an_empty_path_argument_names_nothing_not_the_current_folder(tmp_path, monkeypatch, args, says):
    """`rmt ingest "$UNSET" -o x.st` read the whole current folder into x.st (click's Path makes '' the folder '.');
    `rmt train ''` said "recipe .: is a folder"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text(MEMFILE_TEXT)
    one_error_line(run(args), 2, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("override, says", [
    ("model.config.torch_dtype=float16", "model: config.torch_dtype: rmt trains the weights in float32"),
    ("model.config.dtype=bfloat16", "model: config.dtype: rmt trains the weights in float32"),
    ("model.name_or_path=package:rmt_cli/../../../tmp", "is not a folder inside the package"),
])
def test_model_settings_that_would_train_elsewhere_or_in_half_precision_are_refused(tmp_path, override, says):
    """`model.config.torch_dtype=float16`: accepted, then "training diverged at step 2"; `package:NAME/../..` left
    the package for any folder."""
    import yaml

    from conftest import TINY_RECIPE

    recipe = {**TINY_RECIPE, "output_dir": str(tmp_path / "run")}
    if "package" in override:
        recipe = {**recipe, "tokenizer": {"kind": "model"}, "model": {}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    one_error_line(run(["train", tmp_path / "r.yaml", override]), 2, says)
    assert not (tmp_path / "run").exists()
