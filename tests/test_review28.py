"""The twenty-eighth review (untuned, session 16: recipes and their data paths, training runs, ingest's options,
eval): each test holds a fault it found, reproduced as it was found."""

import json

import pytest

from conftest import run_cli as run
from rmt_cli.errors import UsageError


def test_eval_says_a_document_is_read_in_context_only_when_it_is(capfd):
    """`--lengths 100` of stories longer than a segment warned that each document "is read in context, without the
    memory": the documents were the stories, about 190 tokens, read through the memory."""
    r = run(["eval", "--lengths", "100", "--samples", "2", "--facts", "30,30", "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    assert "the stories alone are about" in r.stderr and "read in context" not in r.stderr
    short = run(["eval", "--lengths", "100", "--samples", "2", "--facts", "2,2", "--json", "-q"])
    assert "read in context" in short.stderr


def test_eval_json_says_what_was_evaluated():
    """`--json` held the model and the rows only: a qa1 run and a run of a bAbI file looked alike."""
    r = run(["eval", "--lengths", "200", "--samples", "2", "--task", "qa2", "--seed", "3", "--json", "-q"])
    result = json.loads(r.stdout)
    assert (result["task"], result["babi"], result["noise"], result["seed"]) == ("qa2", None, "shipped", 3)


@pytest.mark.parametrize("override, says", [("task.babi_path=stories.txt", "task.babi_path: the stories of task babi"),
                                            ("task.lm_paths=[books]", "task.lm_paths, task.lm_dataset: the texts")])
def test_a_data_path_no_task_reads_is_refused(override, says):
    """`rmt train recipes/memorize-tiny.yaml task.babi_path=FILE` trained memorize on generated stories, exit 0."""
    from rmt_cli import load_recipe

    with pytest.raises(UsageError, match=says):
        load_recipe("recipes/memorize-tiny.yaml", [override])
