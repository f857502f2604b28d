"""The gated-associative update rule: the gated rule's gates on the memory vectors plus the associative rule's
matrices. A gated model upgraded to it (fresh matrices, read at scale 0) computes what it did, bit for bit, so `rmt extend`
may make that one change of a locked setting; memory files, --append, the trace and gate supervision work as for
the two rules it is made of."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from test_associative import TEXT, writing
from test_train import run as run_training
from test_train import tiny_recipe

from conftest import TINY_SEGMENT, one_error_line, run_cli
from rmt_cli.commands.ask import ask
from rmt_cli.commands.extend import extend_recipe
from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.core.associative import feature_count, split_state
from rmt_cli.core.encoder import EncoderMemoryCell
from rmt_cli.core.memory import MemoryCell, RecurrentMemoryModel
from rmt_cli.core.rules import UPDATE_RULES, has_gates, has_matrices, is_upgrade
from rmt_cli.core.segments import DocumentSample, collate
from rmt_cli.errors import UsageError
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.storage.fingerprint import fingerprint
from rmt_cli.storage.memfile import check_compatible, load_memory
from rmt_cli.storage.recipe import MemorySpec, validate_recipe

M = 3
KEY = 4  # 24 features: small matrices for tiny models
FLOOR = 0.3  # with the gates below, some slots shut and some open on every segment: both paths are compared


def spec(update="gated-associative", **changes):
    return MemorySpec(**{"num_mem_tokens": M, "segment_size": TINY_SEGMENT, "update": update, "gate_floor": FLOOR,
                         "associative_key_size": KEY, **changes})


def trained_gate(cell):
    """A gate that depends on what was written, as after training (a fresh one is the same for every slot)."""
    with torch.no_grad():
        cell.gate.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
        cell.gate.bias.fill_(0.0)
    return cell


def segments(count=5, batch=2):
    return [torch.randint(2, 300, (batch, 9), generator=torch.Generator().manual_seed(i)) for i in range(count)]


def run_segments(cell, batch=2):
    """Every segment's (memory vectors, matrices or None, logits, gate), then the final read's logits."""
    out = []
    with torch.no_grad():
        memory = cell.initial_memory(batch)
        for segment in segments(batch=batch):
            memory, logits, gate = cell.forward_segment(memory, segment, logits=True)
            out.append((memory[:, :M], memory[:, M:] if cell.associative is not None else None, logits, gate))
        final = cell.read_segment(memory, segments(1, batch)[0])
    return out, final


def assert_same_run(gated_run, upgraded_run):
    (steps_a, final_a), (steps_b, final_b) = gated_run, upgraded_run
    for (vectors_a, _, logits_a, gate_a), (vectors_b, _, logits_b, gate_b) in zip(steps_a, steps_b, strict=True):
        assert torch.equal(vectors_a, vectors_b) and torch.equal(logits_a, logits_b) and torch.equal(gate_a, gate_b)
    assert torch.equal(final_a, final_b)


# --- the rule is made of the two others ------------------------------------------------------------------------


def test_what_each_rule_has():
    assert [(has_gates(r), has_matrices(r)) for r in UPDATE_RULES] == [
        (False, False), (True, False), (False, True), (True, True), (True, False)]
    assert is_upgrade("gated", "gated-associative")
    assert not any(is_upgrade(a, b) for a in UPDATE_RULES for b in UPDATE_RULES
                   if (a, b) != ("gated", "gated-associative"))


def test_a_fresh_gated_associative_cell_is_the_gated_cell_bit_for_bit(make_model, architecture):
    """The same weights and gate, fresh matrices: every segment's memory vectors, gates and logits, and the final
    read, are the gated cell's exactly (float32), shut and open slots alike; the matrices stay zero."""
    model = make_model(architecture).eval()
    gated = trained_gate(MemoryCell(model, M, "gated", FLOOR)).eval()
    upgraded = MemoryCell(model, M, "gated-associative", FLOOR, associative_key_size=KEY).eval()
    missing, unexpected = upgraded.load_state_dict(gated.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("associative.") for name in missing)
    gated_run, upgraded_run = run_segments(gated), run_segments(upgraded)
    assert_same_run(gated_run, upgraded_run)
    shut = torch.stack([gate < FLOOR for *_, gate in gated_run[0]])
    assert shut.any() and not shut.all()
    matrices, norms = split_state(upgraded_run[0][-1][1], *upgraded.associative_shape)
    assert matrices.any() and norms.any()  # written, and read at scale 0


def test_values_off_zero_make_it_differ(make_model, architecture):
    """Once the read scale leaves zero, the later segments read what the earlier ones wrote."""
    model = make_model(architecture).eval()
    gated = trained_gate(MemoryCell(model, M, "gated", FLOOR)).eval()
    upgraded = MemoryCell(model, M, "gated-associative", FLOOR, associative_key_size=KEY).eval()
    upgraded.load_state_dict(gated.state_dict(), strict=False)
    (steps_a, final_a), (steps_b, final_b) = run_segments(gated), run_segments(writing(upgraded))
    # The first segment reads empty matrices: the same; from the second on, it reads what the first wrote.
    assert torch.equal(steps_a[0][2], steps_b[0][2]) and torch.equal(steps_a[0][0], steps_b[0][0])
    assert split_state(steps_b[0][1], *upgraded.associative_shape)[0].abs().sum() > 0
    assert not torch.allclose(steps_a[1][2], steps_b[1][2], atol=1e-6)
    assert not torch.allclose(final_a, final_b, atol=1e-6)


def test_shut_gates_keep_the_vectors_while_the_matrices_learn(make_model):
    """The gates act on the memory vectors only: under a shut gate the vectors pass through bit for bit, and the
    matrices are written with their own write strength, as in the associative rule."""
    cell = writing(MemoryCell(make_model("llama"), M, "gated-associative", 0.5, associative_key_size=KEY)).eval()
    with torch.no_grad():  # a fresh gate (0.05) is under the floor: every slot shut
        start = cell.initial_memory(2)
        memory = start
        for segment in segments():
            memory = cell.write_segment(memory, segment)
    assert torch.equal(memory[:, :M], start[:, :M]) and memory[:, M:].abs().sum() > 0


def test_gate_supervision_and_gradients(make_model, tokenizer):
    """Gate supervision adds its term, and the loss reaches the gate, the initial memory and every projection
    of the matrices (through the earlier segments' writes)."""
    cell = writing(trained_gate(MemoryCell(make_model("gpt2"), M, "gated-associative", 0.0,
                                           associative_key_size=KEY)))
    docs = [DocumentSample([list(range(10, 18)), list(range(20, 28))], [5, 6, 7], [-100, 6, 7],
                           write_has_fact=[True, False]),
            DocumentSample([list(range(30, 38)), list(range(40, 48))], [5, 8, 9], [-100, 8, 9],
                           write_has_fact=[False, True])]
    batch = collate(docs, tokenizer.pad_token_id)
    out = RecurrentMemoryModel(cell, 8, gate_supervision=1.0).train()(batch)
    assert out.gate_loss is not None and out.gate_loss > 0
    out.loss.backward()
    assert cell.gate.weight.grad.abs().sum() > 0 and cell.memory.grad.abs().sum() > 0
    for name, param in cell.associative.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert RecurrentMemoryModel(cell, 8)(batch).gate_loss is None  # no supervision asked: no term


def test_recipes_fingerprints_and_encoders(tokenizer, make_model):
    base = {"curriculum": [{"segments": 1, "steps": 1}], "model": {"architecture": "gpt2"},
            "tokenizer": {"kind": "bpe"}}
    recipe = validate_recipe({**base, "memory": {"update": "gated-associative", "associative_key_size": 8}})
    assert recipe.memory.update == "gated-associative" and recipe.memory.associative_key_size == 8
    with pytest.raises(UsageError, match="update gated-associative needs memory tokens .* num_mem_tokens >= 1"):
        validate_recipe({**base, "memory": {"update": "gated-associative", "num_mem_tokens": 0}})
    cell = MemoryCell(make_model("gpt2"), M, "gated-associative", FLOOR, associative_key_size=KEY)
    gated = MemoryCell(cell.model, M, "gated", FLOOR)
    gated.load_state_dict(cell.state_dict(), strict=False)
    prints = {fingerprint(cell, tokenizer, spec()), fingerprint(cell, tokenizer, spec(associative_key_size=KEY + 1)),
              fingerprint(gated, tokenizer, spec("gated"))}
    assert len(prints) == 3
    for update in ("associative", "gated-associative"):  # the matrices hook into decoder layers
        with pytest.raises(UsageError, match=f"memory.update {update}: .* an encoder takes replace or gated"):
            EncoderMemoryCell(torch.nn.Module(), M, ["a", "b"], 1, 2, update)


# --- checkpoints: the upgrade ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gated_checkpoint(tmp_path_factory, tokenizer, make_model):
    path = tmp_path_factory.mktemp("gated") / "model"
    cell = trained_gate(MemoryCell(make_model("llama", seed=3), M, "gated", FLOOR))
    return save_checkpoint(path, cell, tokenizer, spec("gated"), "test")


def test_a_gated_checkpoint_loads_upgraded_and_computes_the_same(gated_checkpoint):
    gated = load_checkpoint(gated_checkpoint)
    upgraded = load_checkpoint(gated_checkpoint, upgrade=spec(associative_key_size=KEY + 1))
    assert upgraded.memory_settings == spec(associative_key_size=KEY + 1)  # the checkpoint's, and the new rule's
    assert upgraded.info["memory"]["update"] == "gated-associative"
    assert upgraded.info["fingerprint"] != gated.info["fingerprint"]
    assert upgraded.cell.associative_shape == (2, feature_count(KEY + 1), 32)
    # Everything the checkpoint holds is loaded; the projections are fresh (seeded: those of any new cell).
    upgraded_state, gated_state = upgraded.cell.state_dict(), gated.cell.state_dict()
    assert all(torch.equal(upgraded_state[name], tensor) for name, tensor in gated_state.items())
    fresh = MemoryCell(gated.cell.model, M, "gated-associative", FLOOR, associative_key_size=KEY + 1)
    for name, tensor in fresh.associative.state_dict().items():
        assert torch.equal(upgraded.cell.associative.state_dict()[name], tensor), name
    assert all(not layer.read_scale.any() for layer in upgraded.cell.associative.layers)
    assert_same_run(run_segments(gated.cell), run_segments(upgraded.cell))
    # The same rule: the checkpoint's own settings, whatever key size the run asks.
    assert load_checkpoint(gated_checkpoint, upgrade=spec("gated")).memory_settings == spec("gated")


@pytest.mark.parametrize("update", ["replace", "associative"])
def test_no_other_rule_change_loads(gated_checkpoint, update):
    with pytest.raises(UsageError, match=f"memory.update: the checkpoint has 'gated', the run asks '{update}'; .*"
                                         f"gated -> gated-associative"):
        load_checkpoint(gated_checkpoint, upgrade=spec(update))


# --- memory files --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer, make_model):
    """A gpt2 checkpoint of the rule with gates that open and shut and matrices that hold something."""
    cell = MemoryCell(make_model("gpt2"), M, "gated-associative", FLOOR, associative_key_size=KEY)
    path = tmp_path_factory.mktemp("ga") / "model"
    return save_checkpoint(path, writing(trained_gate(cell)), tokenizer, spec(), "test")


def test_append_equals_one_pass_and_the_trace_shows_the_gate(tmp_path, checkpoint):
    data = TEXT.encode()
    (tmp_path / "a.txt").write_bytes(data[:305])
    (tmp_path / "b.txt").write_bytes(data[305:])
    (tmp_path / "ab.txt").write_bytes(data)
    for args in (["ab.txt", "-o", "one.st", "--trace", "t.jsonl"], ["a.txt", "-o", "two.st"],
                 ["--append", "two.st", "b.txt"]):
        r = run_cli(["ingest", *[tmp_path / a if "." in a else a for a in args], "--model", checkpoint, "-q"])
        assert r.exit_code == 0, r.stderr
    one, two = load_memory(tmp_path / "one.st"), load_memory(tmp_path / "two.st")
    assert one.segments == two.segments > 4 and one.tail_tokens == two.tail_tokens
    assert torch.equal(one.memory, two.memory)  # the vectors and every layer's matrix, bit for bit
    assert one.associative_shape == (2, feature_count(KEY), 32)
    with safe_open(str(tmp_path / "one.st"), framework="pt") as f:
        assert set(f.keys()) == {"memory", "tail_tokens", "associative_matrices", "associative_norms"}
        assert f.get_tensor("associative_matrices").abs().sum() > 0
    trace = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(trace) == one.segments and all("gate_max" in x and x["change"] > 0 for x in trace)
    answers = [run_cli(["ask", tmp_path / name, "Where is Mary?", "--model", checkpoint, "--max-new-tokens", "3"])
               for name in ("one.st", "two.st")]
    assert answers[0].exit_code == 0 and answers[0].stdout == answers[1].stdout


def test_a_gated_memory_file_is_refused_by_the_upgraded_model(tmp_path, gated_checkpoint):
    """Upgraded, the model computes the same, but its memory files hold the matrices too: a gated model's file
    (no matrices) is another model's, even with --force."""
    (tmp_path / "book.txt").write_text(TEXT)
    r = run_cli(["ingest", tmp_path / "book.txt", "-o", tmp_path / "g.st", "--model", gated_checkpoint, "-q"])
    assert r.exit_code == 0, r.stderr
    upgraded = load_checkpoint(gated_checkpoint, upgrade=spec())
    with pytest.raises(UsageError, match="made by another model or setting"):
        check_compatible(load_memory(tmp_path / "g.st"), upgraded, force=False, name="g.st")
    with pytest.raises(UsageError, match=f"matrices .* none; this model's: 2 x {feature_count(KEY)} x 32"):
        check_compatible(load_memory(tmp_path / "g.st"), upgraded, force=True, name="g.st")


def test_the_upgraded_model_answers_as_the_gated_one(tmp_path, gated_checkpoint):
    """Ingest and ask (generate() with a KV cache, the matrices read by every layer) through both: the same
    memory vectors, answers and log-probabilities."""
    (tmp_path / "book.txt").write_text(TEXT)
    models = {"gated": load_checkpoint(gated_checkpoint), "upgraded": load_checkpoint(gated_checkpoint, upgrade=spec())}
    states = {}
    for name, model in models.items():
        [result] = ingest([IngestJob([str(tmp_path / "book.txt")], tmp_path / f"{name}.st")], model)
        assert result.error is None
        states[name] = load_memory(tmp_path / f"{name}.st")
    assert states["gated"].segments > 4 and torch.equal(states["gated"].memory, states["upgraded"].memory[:M])
    for question in ("Where is Mary?", "Where is Daniel?"):
        gated, upgraded = (ask(models[name], states[name], question, 4) for name in models)
        assert (gated.answer, gated.logprob) == (upgraded.answer, upgraded.logprob)


# --- rmt extend ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_gated(tmp_path_factory):
    """A tiny gated model trained by rmt (3 steps, gate supervision on)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    data = tiny_recipe(out, curriculum=[{"segments": 2, "steps": 3}], eval={"samples": 2, "batch_size": 2},
                       checkpoint={"every": 100, "keep": 1}, threads=1)
    data["memory"] = {**data["memory"], "update": "gated", "gate_supervision": 1.0}
    run_training(data)
    return out / "final"


def extend_yaml(tmp_path, name):
    data = {"output_dir": str(tmp_path / name), "task": {"name": "memorize"}, "batch_size": 4, "seed": 3,
            "optim": {"lr": 0.001, "warmup_steps": 1}, "curriculum": [{"segments": 3, "steps": 2}],
            "eval": {"samples": 2, "segments": [3], "batch_size": 2}, "threads": 1,
            "memory": {"gate_supervision": 1.0}}  # a training setting: the recipe's, not locked
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_extend_upgrades_a_gated_model_through_the_cli(trained_gated, tmp_path):
    """`rmt extend CKPT RECIPE memory.update=gated-associative`: the first step's loss, gate loss and accuracy are
    the parent's (the same step extended without the upgrade), and the run trains the matrices."""
    command = [sys.executable, "-m", "rmt_cli.cli", "extend", str(trained_gated)]
    runs = {}
    for name, extra in (("plain", []), ("upgraded", ["memory.update=gated-associative",
                                                     f"memory.associative_key_size={KEY}"])):
        proc = subprocess.run([*command, str(extend_yaml(tmp_path, name)), *extra, "-q"], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        runs[name] = metrics(tmp_path / name)
    first = {name: rows[0] for name, rows in runs.items()}
    assert first["plain"]["step"] == first["upgraded"]["step"] == 1
    for key in ("loss", "gate_loss", "accuracy"):
        assert first["plain"][key] == first["upgraded"][key], key
    loaded = load_checkpoint(tmp_path / "upgraded" / "final")
    settings = json.loads((tmp_path / "upgraded" / "final" / "rmt.json").read_text())["memory"]
    assert settings["update"] == loaded.memory_settings.update == "gated-associative"
    assert settings["associative_key_size"] == KEY and settings["gate_supervision"] == 1.0
    assert all(layer.value.abs().sum() > 0 for layer in loaded.cell.associative.layers)  # it started to write
    parent = load_file(str(trained_gated / "memory.safetensors"))
    assert set(load_file(str(tmp_path / "upgraded" / "final" / "memory.safetensors"))) > set(parent)
    # The upgraded run extends on as itself (its rule and key size now locked).
    recipe = extend_recipe(tmp_path / "upgraded" / "final", extend_yaml(tmp_path, "again"), [])
    assert recipe.memory.update == "gated-associative" and recipe.memory.associative_key_size == KEY
    with pytest.raises(UsageError, match="memory.update: the checkpoint has 'gated-associative', the recipe asks "
                                         "'gated'"):
        extend_recipe(tmp_path / "upgraded" / "final", extend_yaml(tmp_path, "again"), ["memory.update=gated"])


@pytest.mark.parametrize("update", ["replace", "associative"])
def test_extend_refuses_any_other_rule_change(trained_gated, tmp_path, update):
    r = run_cli(["extend", trained_gated, extend_yaml(tmp_path, "x"), f"memory.update={update}"])
    one_error_line(r, 2, f"memory.update: the checkpoint has 'gated', the recipe asks '{update}'",
                   "the one change it allows is the upgrade gated -> gated-associative")
    assert not (tmp_path / "x").exists()


def test_extend_recipe_of_an_upgrade_takes_the_recipes_key_size(trained_gated, tmp_path):
    """The gated checkpoint's recipe says a key size (every recipe has one), but it had no matrices: the upgrade's
    matrices take the recipe's; gate_floor stays locked."""
    path = extend_yaml(tmp_path, "k")
    recipe = extend_recipe(trained_gated, path, ["memory.update=gated-associative", "memory.associative_key_size=8"])
    assert recipe.memory.update == "gated-associative" and recipe.memory.associative_key_size == 8
    assert extend_recipe(trained_gated, path, ["memory.update=gated-associative"]).memory.associative_key_size == 16
    with pytest.raises(UsageError, match="memory.gate_floor: the checkpoint has"):
        extend_recipe(trained_gated, path, ["memory.update=gated-associative", "memory.gate_floor=0.01"])
    with pytest.raises(UsageError, match="memory.associative_key_size: the checkpoint has"):
        extend_recipe(trained_gated, path, ["memory.associative_key_size=8"])  # no upgrade: locked as it was
