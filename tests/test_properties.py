"""Property tests (issue 8): random recipes, overrides and manifests end in a valid result or a documented error
(`UsageError`, one line per problem), never in any other exception."""

import os
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmt_cli.errors import UsageError
from rmt_cli.commands.ingest import check_job, check_plan, manifest_jobs
from rmt_cli.storage.recipe import Recipe, load_recipe

VALID = {"tokenizer": {"kind": "bpe", "vocab_size": 300},
         "model": {"architecture": "gpt2", "config": {"n_layer": 1}},
         "memory": {"num_mem_tokens": 2, "segment_size": 48},
         "task": {"name": "qa1", "noise": {"kind": "synthetic"}},
         "curriculum": [{"segments": 1, "steps": 1}, {"segments": 2, "steps": 3}],
         "eval": {"samples": 1}}
KEYS = ["seed", "output_dir", "model", "tokenizer", "memory", "task", "optim", "batch_size", "curriculum", "eval",
        "checkpoint", "threads", "data_workers", "resume", "mixed_precision", "segments", "steps", "facts", "noise",
        "lr", "segment_size", "num_mem_tokens", "update", "name", "paths", "0", "1", "kind", "x"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                     max_leaves=20)


def ends_well(load) -> None:
    try:
        assert isinstance(load(), Recipe)
    except UsageError as e:
        assert str(e).strip(), "an error says what is wrong"


def write(tmp_path_factory, text: str) -> Path:
    path = tmp_path_factory.mktemp("r") / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@SETTINGS
@given(tree=trees)
def test_random_recipe_trees(tmp_path_factory, tree):
    path = write(tmp_path_factory, yaml.safe_dump(tree))
    ends_well(lambda: load_recipe(path))


@SETTINGS
@given(section=st.sampled_from(sorted(VALID) + ["optim", "checkpoint", "seed", "batch_size"]), value=trees)
def test_a_valid_recipe_with_one_section_replaced_at_random(tmp_path_factory, section, value):
    path = write(tmp_path_factory, yaml.safe_dump({**VALID, section: value}))
    ends_well(lambda: load_recipe(path))


@SETTINGS
@given(text=st.text(alphabet=string.printable + "äλ\x00\u2028", max_size=300))
def test_random_recipe_text(tmp_path_factory, text):
    path = write(tmp_path_factory, text)
    ends_well(lambda: load_recipe(path))


overrides = st.one_of(
    st.text(max_size=40),
    st.builds(lambda key, value: f"{key}={value}",
              st.lists(st.sampled_from(KEYS), min_size=1, max_size=4).map(".".join),
              st.one_of(st.text(max_size=20), scalars.map(lambda v: yaml.safe_dump(v).strip()),
                        trees.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))),
)


@SETTINGS
@given(given_overrides=st.lists(overrides, max_size=4))
def test_random_overrides(tmp_path_factory, given_overrides):
    path = write(tmp_path_factory, yaml.safe_dump(VALID))
    ends_well(lambda: load_recipe(path, given_overrides))


names = st.sampled_from(["a.txt", "b.txt", "out/a.st", "a.st", "-", "", " ", "missing/x.st", "a.txt/x.st", "\x1b",
                         "b.st", ".", ".."])
lines = st.one_of(st.text(max_size=30),
                  st.builds(lambda i, o, sep: f"{i}{sep}{o}", names, names, st.sampled_from(["\t", " ", "\t\t"])))


@SETTINGS
@given(manifest=st.lists(lines, max_size=6), raw=st.binary(max_size=40))
def test_random_manifests(tmp_path_factory, manifest, raw):
    folder = tmp_path_factory.mktemp("m")
    (folder / "a.txt").write_text("Mary went to the garden.")
    (folder / "b.txt").write_text("John moved to the office.")
    path = folder / "jobs.tsv"
    path.write_bytes("\n".join(manifest).encode() + raw)
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        jobs = manifest_jobs(path)
        check_plan(jobs)
        for job in jobs:
            check_job(job)
        assert jobs
    except UsageError as e:
        assert str(e).strip()
    finally:
        os.chdir(cwd)
