"""The memory cell and the recurrence: the heart of the Recurrent Memory Transformer.

A `MemoryCell` wraps an unchanged causal language model. Every segment it runs is laid out as

    [read memory (m vectors)] [segment tokens] [write memory (m vectors)]

and the written memory is the model's last hidden states at the write positions. Position ids restart at 0 in
every segment, so learned (GPT-2) and rotary (Llama) position schemes both see short sequences only.

How the written memory becomes the next segment's memory is the update rule:
- `replace` (the original RMT): the written memory is the new memory.
- `gated`: each memory slot has a learned gate g = sigmoid(w . written + b), started mostly shut, and the new
  memory is old + g * (written - old). A gate under `gate_floor` is exactly 0, so a segment that writes nothing
  (noise) passes the memory through bit for bit: a million tokens of noise cannot wear a fact away.
- `associative` (ARMT): the memory vectors are replaced as in `replace`, and besides them every decoder layer
  has an associative matrix that the write-memory tokens write with a delta rule and every token reads
  (`associative.py`). The matrices travel as further rows of the memory tensor, after the m memory vectors.
- `routed`: `gated` with competing slots. The slots' gates are one softmax over the slots' scores and a learned
  "keep" score, so a segment writes at most one slot's worth in all, and a fact written to a slot no other fact
  uses leaves the others' bindings as they were. A fresh router keeps 95% and spreads the rest evenly; training
  can add a balance loss (`route_balance`) that spreads the facts over the slots.
- `gated-associative`: the memory vectors are gated as in `gated`, and the matrices are those of `associative`.
  The reads start at scale 0, so a gated cell upgraded to it (fresh matrices) computes what the gated cell did, bit for
  bit (`rules.UPGRADES`: `rmt extend` may make this change).

A cell has a gate where `rules.has_gates(update)`, matrices where `rules.has_matrices(update)`; the code below
asks `self.gate` and `self.associative`, never the rule's name.

`MemorySlots` holds what every cell has (the initial memory, the update rule, the streaming calls);
`encoder.EncoderMemoryCell` is the other kind, for BERT-style encoders with a classifier over a task's answers.

`RecurrentMemoryModel` runs a batch of documents segment after segment, carries the memory, applies truncated
back-propagation through time and computes the loss (of answer tokens, or of a classifier's answer when the batch
holds `answers`). Ingestion and asking use the cell's streaming calls (`initial_memory`, `write_segment`,
`read_segment`) directly, so all three paths run the same code.

The cell runs the model's base (`model.base_model`) and its output embeddings itself, so whatever a family's own
forward does to the logits after the output embeddings has to be done here too, or the family refused:
`final_logit_softcapping` (Gemma-2 and later Gemma) is applied as the family applies it; the logit scalings of
Cohere, Granite and others are refused by name (`UnsupportedModelError`). tests/test_architectures.py checks on
every family the README lists that the cell's logits are the model's own.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UsageError, shown
from .associative import KEY_SIZE, AssociativeMemory
from .rules import GATE_FLOOR, UPDATE_RULES, has_gates, has_matrices, is_routed

IGNORE_INDEX = -100

GATE_INIT_BIAS = -3.0  # sigmoid(-3) ~ 0.05: a fresh gate mostly keeps the old memory
ROUTE_KEEP_SHARE = 0.95  # a fresh router (all slot scores 0) keeps the old memory with this probability

# Config settings with which a family's own forward changes the logits after (or the hidden states just before)
# the output embeddings, as found in transformers 5.x, and what it does with them. The cell does not reproduce them
# (one name means a division in one family and a multiplication in another), so a model that sets one to anything
# but a neutral value is refused.
LOGIT_TRANSFORMS = {
    "logit_scale": "multiplies the logits by it (Cohere)",
    "logits_scaling": "scales the logits by it (Granite, MiniCPM3, HyperCLOVAX)",
    "lm_head_multiplier": "multiplies the logits by it (Falcon-H1)",
    "output_multiplier": "multiplies the logits by it (MuseSpark)",
    "logits_mup_width_multiplier": "divides the LM head's input by it (Inkling)",
    "logits_soft_cap": "soft-caps the logits with it (RecurrentGemma)",
    "output_logit_soft_cap": "soft-caps the logits with it (xLSTM)",
}
SOFTCAP = "final_logit_softcapping"  # logits = cap * tanh(logits / cap) in every family that has it: applied


class UnsupportedModelError(UsageError, ValueError):
    """A model the memory cell cannot run faithfully (one line; the CLI exits 2 with it)."""


def final_logit_softcap(config) -> float | None:
    """The family's final logit soft-capping (applied by the cell), or None. Raises UnsupportedModelError for a
    config whose model changes its logits in a way the cell does not reproduce: callers can check a config this
    way before loading any weights."""
    family = getattr(config, "model_type", None) or type(config).__name__
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    caps = []
    for settings in [config] if text is config else [config, text]:  # a model with text and vision has two
        for name, what in LOGIT_TRANSFORMS.items():
            value = getattr(settings, name, None)
            if not _neutral(value):
                raise UnsupportedModelError(
                    f"{family} with {name}={shown(repr(value), 40)}: the model's own forward {what}, which rmt's memory cell "
                    f"does not do, so its logits would be wrong; not supported (README: Supported model families)")
        caps.append(getattr(settings, SOFTCAP, None))
    cap = next((c for c in caps if c is not None), None)
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap < math.inf):
        raise UnsupportedModelError(f"{family} with {SOFTCAP}={shown(repr(cap), 40)}: a soft-cap must be a positive number "
                                    f"or null")
    return None if cap is None else float(cap)


def _neutral(value) -> bool:
    """None or 1: a setting of LOGIT_TRANSFORMS that changes nothing."""
    return value is None or (isinstance(value, (int, float)) and float(value) == 1.0)


def _check_cell_arguments(model, num_mem_tokens, update, gate_floor, associative_key_size) -> None:
    """A cell's arguments, as the recipe checks them (the exported classes are built by hand too): UsageError."""
    if update not in UPDATE_RULES:
        raise UsageError(f"unknown memory update rule {update!r}; known: {', '.join(UPDATE_RULES)}")
    if not (type(num_mem_tokens) is int and 0 <= num_mem_tokens <= 4096):
        raise UsageError(f"num_mem_tokens: a whole number from 0 to 4096, not {num_mem_tokens!r}")
    if not (isinstance(gate_floor, (int, float)) and not isinstance(gate_floor, bool) and 0 <= gate_floor < 1):
        raise UsageError(f"gate_floor: a number from 0 up to (not including) 1, not {gate_floor!r}")
    if not (type(associative_key_size) is int and associative_key_size >= 1):
        raise UsageError(f"associative_key_size: a whole number of at least 1, not {associative_key_size!r}")
    if has_matrices(update) and num_mem_tokens < 1:
        raise UsageError(f"the {update} update rule needs memory tokens to write its associative matrices with: "
                         f"num_mem_tokens >= 1")
    if not isinstance(model, nn.Module) or not hasattr(model, "get_input_embeddings"):
        raise UsageError(f"model: a transformers model (with input embeddings), not {type(model).__name__}")


class MemorySlots(nn.Module):
    """What every memory cell has, whatever model it wraps: the learned initial memory, the update rule (and its
    gate), and the streaming calls ingest, ask and eval use. A cell of a kind says how a segment is laid out around
    the memory (`forward_segment`) and what its final segment predicts: `MemoryCell` (a causal LM: next tokens) and
    `encoder.EncoderMemoryCell` (a BERT-style encoder: one of a task's answers)."""

    kind = ""  # "causal" or "encoder": what a checkpoint records and the fingerprint marks

    def __init__(self, model: nn.Module, num_mem_tokens: int, update: str = "replace", gate_floor: float = GATE_FLOOR,
                 associative_key_size: int = KEY_SIZE):
        super().__init__()
        _check_cell_arguments(model, num_mem_tokens, update, gate_floor, associative_key_size)
        self.model = model
        self.num_mem_tokens = num_mem_tokens
        self.update = update
        self.gate_floor = gate_floor
        self.associative_key_size = associative_key_size

    def _init_memory(self) -> None:
        """The gate (gated rules), the associative matrices' projections (associative rules) and the initial
        memory, at the scale of the token embeddings."""
        embeddings = self.model.get_input_embeddings()
        if has_gates(self.update):
            self.gate = nn.Linear(embeddings.embedding_dim, 1)
            with torch.no_grad():
                self.gate.weight.zero_()
                self.gate.bias.fill_(0.0 if is_routed(self.update) else GATE_INIT_BIAS)
        else:
            self.gate = None
        # The routed rule's score for "write nothing", against the slots' scores in one softmax: keep / (keep + m
        # slots at score 0) = ROUTE_KEEP_SHARE.
        self.route_keep = None
        if is_routed(self.update):
            keep_score = math.log(ROUTE_KEEP_SHARE / (1 - ROUTE_KEEP_SHARE) * max(self.num_mem_tokens, 1))
            self.route_keep = nn.Parameter(torch.full((1,), keep_score))
        # The associative rules: per-layer matrices, read and written through hooks on the decoder layers.
        self.associative = (AssociativeMemory(decoder_layers(self.model), _layer_width(self.model),
                                              embeddings.embedding_dim, self.associative_key_size)
                            if has_matrices(self.update) else None)
        # Start the memory at the scale of the token embeddings so the first segments are not swamped.
        scale = _embedding_scale(embeddings)
        generator = torch.Generator().manual_seed(0)
        self.memory = nn.Parameter(
            torch.randn(self.num_mem_tokens, embeddings.embedding_dim, generator=generator) * scale
        )

    @staticmethod
    def positions_needed(num_mem_tokens: int, segment_size: int) -> int:
        """The model positions one segment takes with its memory."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        return self.memory.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def associative_shape(self) -> tuple[int, int, int] | None:
        """(layers, features, hidden) of the associative matrices after the memory vectors; None without them."""
        return None if self.associative is None else self.associative.shape

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """The learned memory every document starts from, shaped [batch, m, hidden] (the associative rules: then
        empty associative matrices, [batch, m + associative rows, hidden])."""
        memory = self.memory.to(self.dtype).unsqueeze(0).expand(batch_size, -1, -1)
        if self.associative is None:
            return memory
        return torch.cat([memory, self.associative.empty_state(batch_size, memory.dtype)], dim=1)

    def gate_probabilities(self, written: torch.Tensor) -> torch.Tensor:
        """Per slot, how much of the written memory replaces the old one, before the floor: [batch, m] float32.
        The routed rule's slots share one softmax with "keep", so they sum to at most 1."""
        scores = self.gate(written).float().squeeze(-1)
        if self.route_keep is None:
            return torch.sigmoid(scores)
        keep = self.route_keep.float().expand(scores.shape[0], 1)
        return torch.softmax(torch.cat([scores, keep], dim=-1), dim=-1)[:, :-1]

    def update_memory(self, old: torch.Tensor, written: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next memory from the old and the written one; also the gate probabilities (None for replace)."""
        if self.gate is None:
            return written, None
        gate = self.gate_probabilities(written)
        # Under the floor a slot keeps its old memory bit for bit.
        shut = (gate < self.gate_floor).unsqueeze(-1)
        mixed = old + gate.to(old.dtype).unsqueeze(-1) * (written.to(old.dtype) - old)
        return torch.where(shut, old, mixed), gate

    def forward_segment(self, memory, input_ids, attention_mask=None, write=True, logits=False):
        """Run one segment. Returns (new memory or None, the final segment's predictions or None, gate or None)."""
        raise NotImplementedError

    def write_segment(self, memory, input_ids, attention_mask=None) -> torch.Tensor:
        """Read a segment and return the next memory (no head is run)."""
        return self.forward_segment(memory, input_ids, attention_mask, write=True)[0]

    def read_segment(self, memory, input_ids, attention_mask=None) -> torch.Tensor:
        """The predictions for a final segment (no memory is written)."""
        return self.forward_segment(memory, input_ids, attention_mask, write=False, logits=True)[1]


class MemoryCell(MemorySlots):
    """A causal LM with `num_mem_tokens` memory vectors read at the start and written at the end of a segment."""

    kind = "causal"

    def __init__(self, model: nn.Module, num_mem_tokens: int, update: str = "replace", gate_floor: float = GATE_FLOOR,
                 associative_key_size: int = KEY_SIZE):
        super().__init__(model, num_mem_tokens, update, gate_floor, associative_key_size)
        config = getattr(model, "config", None)
        if model.get_output_embeddings() is None:
            raise UnsupportedModelError(f"{getattr(config, 'model_type', type(model).__name__)}: the model has no "
                                        f"output embeddings (an LM head); rmt's memory cell needs a causal LM")
        self.logit_softcap = None if config is None else final_logit_softcap(config)
        self._init_memory()
        # A write-only pass on the native engine may skip the final layer's work for rows nobody reads (the
        # tokens); associative matrices record every row of every layer, so they need the whole pass.
        self._writes_read_last_rows = getattr(model, "engine", None) == "native" and self.associative is None

    @staticmethod
    def positions_needed(num_mem_tokens: int, segment_size: int) -> int:
        return 2 * num_mem_tokens + segment_size  # [read memory] [segment] [write memory]

    def _hidden_states(self, memory, input_ids, attention_mask, write: bool, only_written: bool = False
                       ) -> torch.Tensor:
        """The base model's last hidden states over [read memory, tokens(, write memory)]; with `only_written`
        (the native engine, a write whose token outputs nobody reads), those of the write memory alone."""
        batch, length = input_ids.shape
        m = self.num_mem_tokens
        token_embeds = self.model.get_input_embeddings()(input_ids)
        # Memory sits where token embeddings do: after the embedding module's own scaling (Gemma's sqrt(hidden) in
        # transformers 5), before the base model's (Granite's embedding_multiplier), which scales both alike.
        memory = memory.to(token_embeds.dtype)
        parts = [memory, token_embeds, memory] if write else [memory, token_embeds]
        inputs_embeds = torch.cat(parts, dim=1)
        full_mask = None
        if attention_mask is not None:
            ones = attention_mask.new_ones(batch, m)
            full_mask = torch.cat([ones, attention_mask, ones] if write else [ones, attention_mask], dim=1)
        positions = real_positions(full_mask, batch, inputs_embeds.shape[1], input_ids.device)
        only = {"last": m} if only_written else {}
        out = self.model.base_model(inputs_embeds=inputs_embeds, attention_mask=full_mask, position_ids=positions,
                                    use_cache=False, **only)  # each segment is one pass: a KV cache is overhead
        return out.last_hidden_state

    def forward_segment(self, memory, input_ids, attention_mask=None, write=True, logits=False):
        """Run one segment. Returns (new memory or None, logits over the segment's tokens or None, gate or None).

        logits[:, i] predicts input_ids[:, i + 1], as in any causal LM. The gate (per slot, before the floor) is
        there for the gated update rules only.
        """
        m, length = self.num_mem_tokens, input_ids.shape[1]
        vectors, associations = memory[:, :m], memory[:, m:]  # associations: empty but for the associative rules
        only_written = write and not logits and m > 0 and self._writes_read_last_rows
        with self._associating(associations, m if write else 0) as associating:
            hidden = self._hidden_states(vectors, input_ids, attention_mask, write, only_written)
        written = hidden[:, hidden.shape[1] - m :]  # the last m rows (none when m is 0)
        new_memory, gate = self.update_memory(vectors, written) if write else (None, None)
        if write and associating is not None:
            new_memory = torch.cat([new_memory, self.associative.write(associating).to(new_memory.dtype)], dim=1)
        token_logits = self.logits(hidden[:, m : m + length]) if logits else None
        return new_memory, token_logits, gate

    @contextmanager
    def reading_memory(self, memory: torch.Tensor):
        """For a caller that runs the wrapped model itself on [memory vectors, tokens] (ask's generate(), with its
        KV cache): yields the memory vectors [batch, m, hidden]; inside, every decoder layer reads the memory's
        associative matrices (where the rule has them) as in `read_segment`."""
        with self._associating(memory[:, self.num_mem_tokens :], 0):
            yield memory[:, : self.num_mem_tokens]

    def _associating(self, associations: torch.Tensor, write_slots: int):
        """Inside, the decoder layers read the associative matrices (and record the write memory's outputs);
        yields the pass for AssociativeMemory.write. Without associative matrices: nothing, and yields None."""
        if self.associative is None:
            return nullcontext()
        return self.associative.reading(associations, write_slots)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states, and the family's final soft-capping where it has one (Gemma-2)."""
        out = self.model.get_output_embeddings()(hidden)
        if self.logit_softcap is not None:
            out = torch.tanh(out / self.logit_softcap) * self.logit_softcap
        return out


def real_positions(full_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Position ids 0, 1, 2, ... over the real entries of a segment laid out with its memory, [batch, length]:
    padding, left or right, moves nothing (the memory sits where it sits in an unpadded row)."""
    if full_mask is None:
        return torch.arange(length, device=device).unsqueeze(0).expand(batch, -1)
    return (full_mask.long().cumsum(-1) - 1).clamp(min=0)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The wrapped model's decoder layers: the first list of config.num_hidden_layers modules in its base model
    (GPT-2's `h`, OPT's `decoder.layers`, `layers` elsewhere)."""
    count = getattr(_text_config(model), "num_hidden_layers", None)
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and count and len(module) == count:
            return module
    raise UnsupportedModelError(f"{getattr(model.config, 'model_type', type(model).__name__)}: the associative update "
                                f"rule cannot find the model's decoder layers (a list of num_hidden_layers={count} "
                                f"modules in its base model)")


def _layer_width(model: nn.Module) -> int:
    """The width of the hidden states between decoder layers (wider than the embeddings in OPT-350m)."""
    return _text_config(model).hidden_size


def _text_config(model: nn.Module):
    """The settings of the language model (a model with text and vision nests them)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _embedding_scale(embeddings: nn.Module) -> float:
    """The standard deviation of what the input embeddings put out. A family that scales its embeddings inside the
    embedding module (Gemma-2's sqrt(hidden) in transformers 5) scales the tokens but not its weight."""
    weight = embeddings.weight.detach().float()
    scale = float(weight.std())
    if type(embeddings) is not nn.Embedding:  # a plain embedding puts out its rows: the same number, bit for bit
        rows = torch.arange(min(weight.shape[0], 1024), device=weight.device)
        with torch.no_grad():
            out, raw = embeddings(rows).float(), weight[rows]
        if float(raw.norm()) > 0:
            scale *= float(out.norm() / raw.norm())
    return scale


@dataclass
class WriteStep:
    """One step of the recurrence for a batch: rows with `active` False keep their memory unchanged."""

    input_ids: torch.Tensor  # [B, T], left-padded
    attention_mask: torch.Tensor  # [B, T]
    active: torch.Tensor  # [B] bool
    labels: torch.Tensor | None = None  # [B, T], IGNORE_INDEX where no loss
    has_fact: torch.Tensor | None = None  # [B] bool: the segment holds (part of) a fact; supervises the gates


@dataclass
class SegmentBatch:
    """A batch of documents cut into write segments plus one final (read-only) segment each."""

    steps: list[WriteStep]
    final_ids: torch.Tensor  # [B, T], right-padded
    final_mask: torch.Tensor
    final_labels: torch.Tensor
    writes_per_row: torch.Tensor  # [B] number of write steps each row takes part in
    # A classifier's labels (the encoder cell): per row, the index of the right answer in the cell's answer set.
    # None for a causal LM, whose answer tokens are in final_labels.
    answers: torch.Tensor | None = None
    # [B, K]: per row, the answers (indices) that a head on the memory after the writes must name
    # (memory.binding_supervision); IGNORE_INDEX for a row whose facts are not all written. None: no row has any.
    bindings: torch.Tensor | None = None

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        steps = [WriteStep(move(s.input_ids), move(s.attention_mask), move(s.active), move(s.labels), move(s.has_fact))
                 for s in self.steps]
        return SegmentBatch(steps, move(self.final_ids), move(self.final_mask), move(self.final_labels),
                            move(self.writes_per_row), move(self.answers), move(self.bindings))

    @property
    def num_tokens(self) -> int:
        return int(sum(s.attention_mask.sum() for s in self.steps) + self.final_mask.sum())


@dataclass
class RecurrentOutput:
    loss: torch.Tensor | None
    final_logits: torch.Tensor
    memory: torch.Tensor
    num_loss_tokens: int
    gate_loss: torch.Tensor | None = None  # the gate supervision term (already inside `loss`, weighted)
    balance_loss: torch.Tensor | None = None  # the routed rule's balance term (already inside `loss`, weighted)
    binding_loss: torch.Tensor | None = None  # the binding head's term (already inside `loss`, weighted)


class RecurrentMemoryModel(nn.Module):
    """Runs documents through a MemoryCell segment by segment with truncated BPTT."""

    def __init__(self, cell: MemoryCell, segment_size: int, bptt_depth: int | None = None,
                 gradient_checkpointing: bool = False, gate_supervision: float = 0.0,
                 gate_supervision_open: bool = True, route_balance: float = 0.0,
                 binding_supervision: float = 0.0, binding_count: int = 0):
        super().__init__()
        if not isinstance(cell, MemorySlots):
            raise UsageError(f"cell: a MemoryCell or EncoderMemoryCell, not {type(cell).__name__}")
        for value, name, least in ((segment_size, "segment_size", 1), (bptt_depth, "bptt_depth", 0),
                                   (binding_count, "binding_count", 0)):
            if value is not None and not (type(value) is int and value >= least):  # None: bptt_depth's "all"
                raise UsageError(f"{name}: a whole number of at least {least}, not {value!r}")
        for value, name in ((gate_supervision, "gate_supervision"), (route_balance, "route_balance"),
                            (binding_supervision, "binding_supervision")):  # loss weights
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf):
                raise UsageError(f"{name}: a weight of 0 or more, not {value!r}")
        self.cell = cell
        self.segment_size = segment_size
        self.bptt_depth = bptt_depth
        self.gradient_checkpointing = gradient_checkpointing
        # Weight of the gate supervision: shut every slot on segments without a fact, open some slot on those
        # with one. Only the gated rules have gates, and only samples that know where their facts are supervise.
        self.gate_supervision = gate_supervision
        self.gate_supervision_open = gate_supervision_open
        # Weight of the routed rule's balance loss over the segments with a fact (`route_balance_loss`).
        self.route_balance = route_balance
        # Weight of the binding head's loss: a linear map of the whole memory after the writes to `binding_count`
        # answers of the cell's answer set (SegmentBatch.bindings). The answer's gradient alone leaves a reasoning
        # memory holding the places without their directions; this one asks the write for the binding directly.
        # Training only: the head is not part of the model a checkpoint holds.
        self.binding_supervision = binding_supervision
        self.binding_head = None
        if binding_supervision and binding_count:
            slots, width = cell.memory.shape[-2:]
            self.binding_head = nn.Linear(slots * width, binding_count * len(cell.answers))

    def _binding_loss(self, memory: torch.Tensor, bindings: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The term added to the loss, and the loss to report (None when no row names bindings: a stage of
        another task, or every row's facts reach the question's segment)."""
        logits = self.binding_head(memory.float().flatten(1)).view(len(memory), -1, len(self.cell.answers))
        if bindings is None or not bool((bindings != IGNORE_INDEX).any()):
            # A zero that still reaches the head, so that every process of a distributed run uses the same
            # parameters in each step.
            return logits.sum() * 0.0, None
        loss = F.cross_entropy(logits[:, :bindings.shape[1]].reshape(-1, logits.shape[-1]), bindings.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return loss, loss

    def _segment(self, memory, ids, mask, write, logits):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.cell.forward_segment, memory, ids, mask, write, logits, use_reentrant=False)
        return self.cell.forward_segment(memory, ids, mask, write, logits)

    def forward(self, batch: SegmentBatch, reset_memory: bool = False) -> RecurrentOutput:
        """`reset_memory` gives every segment the initial memory: the no-memory baseline of the same weights."""
        batch_size = batch.final_ids.shape[0]
        initial = self.cell.initial_memory(batch_size)
        memory = initial
        loss_sum = initial.new_zeros((), dtype=torch.float32)
        loss_tokens = 0
        gate_sum, gate_count = initial.new_zeros((), dtype=torch.float32), 0
        cut = None if self.bptt_depth is None else len(batch.steps) - self.bptt_depth - 1
        supervised_gates = self.cell.gate is not None and bool(self.gate_supervision)
        routed = self.cell.route_keep is not None
        balanced = routed and bool(self.route_balance)
        fact_routes = []  # the routed gates of rows whose segment holds a fact, for the balance loss
        for index, step in enumerate(batch.steps):
            rows = step.active.nonzero().squeeze(-1)
            want_logits = step.labels is not None
            # A segment at or before the cut with no loss of its own would only build a graph that the cut
            # throws away: it runs without one, so truncated BPTT bounds memory and backward time alike.
            local_loss = want_logits or ((supervised_gates or balanced) and step.has_fact is not None)
            beyond_reach = cut is not None and index <= cut and not local_loss
            with torch.no_grad() if beyond_reach else nullcontext():
                new_memory, logits, gate = self._segment(
                    memory.index_select(0, rows), step.input_ids[rows], step.attention_mask[rows], True, want_logits
                )
            if want_logits:
                s, n = _shifted_loss_sum(logits, step.labels[rows])
                loss_sum, loss_tokens = loss_sum + s, loss_tokens + n
            if gate is not None and self.gate_supervision and step.has_fact is not None:
                gate_sum = gate_sum + _gate_loss_sum(gate, step.has_fact[rows], self.gate_supervision_open, routed)
                gate_count += len(rows)
            if balanced and gate is not None and step.has_fact is not None:
                fact_routes.append(gate[step.has_fact[rows]])
            memory = memory.index_copy(0, rows, new_memory.to(memory.dtype))
            if index == cut:
                # Gradients flow back through at most `bptt_depth` write segments of each row. Every row's last
                # write is the last step (collate right-aligns them), so one cut here bounds every row and the
                # graph before it is dropped; rows that have not started yet keep their initial memory's graph.
                started = (index >= len(batch.steps) - batch.writes_per_row).view(-1, 1, 1)
                memory = torch.where(started, memory.detach(), initial)
            if reset_memory:
                memory = initial
        binding_term = binding_loss = None
        if self.binding_head is not None:
            binding_term, binding_loss = self._binding_loss(memory, batch.bindings)
        _, final_logits, _ = self._segment(memory, batch.final_ids, batch.final_mask, False, True)
        s, n = _answer_loss_sum(final_logits, batch)
        loss_sum, loss_tokens = loss_sum + s, loss_tokens + n
        loss = loss_sum / max(loss_tokens, 1) if loss_tokens else None
        gate_loss = gate_sum / gate_count if gate_count else None
        balance_loss = route_balance_loss(torch.cat(fact_routes)) if fact_routes else None
        for weight, term in ((self.gate_supervision, gate_loss), (self.route_balance, balance_loss),
                             (self.binding_supervision, binding_term)):
            if term is not None:  # the memory's own terms, weighted, beside the answer loss (or alone)
                loss = weight * term if loss is None else loss + weight * term
        return RecurrentOutput(loss, final_logits, memory, loss_tokens, gate_loss, balance_loss, binding_loss)


def _gate_loss_sum(gate: torch.Tensor, has_fact: torch.Tensor, open_on_facts: bool = True,
                   routed: bool = False) -> torch.Tensor:
    """Binary cross-entropy per row: every slot shut on a segment without a fact, and (`open_on_facts`) the most
    open slot open on one with a fact (which slots to use is the model's choice). Routed gates: "keep" chosen on a
    segment without a fact, and "write" (any slot) on one with a fact."""
    eps = 1e-6
    if routed:
        written = gate.sum(-1).clamp(eps, 1 - eps)
        shut, opened = -torch.log1p(-written), -torch.log(written)
    else:
        shut = -torch.log1p(-gate.clamp(max=1 - eps)).sum(-1)
        opened = -torch.log(gate.max(-1).values.clamp(min=eps))
    if not open_on_facts:
        opened = torch.zeros_like(shut)
    return torch.where(has_fact, opened, shut).sum()


def route_balance_loss(routes: torch.Tensor) -> torch.Tensor:
    """How unevenly a batch of writes [rows, m] (routed gates of segments with a fact) uses the m slots: m times
    the sum over slots of (share of rows whose top slot it is) x (its mean share of the row's write), as in a
    mixture of experts' load balancing. 1 when every slot is used alike, m when all writes go to one slot. The
    shares are normalised over the slots, so the loss does not touch how much is written, only where; and since
    the slots share one softmax, lowering an overused slot's share raises the others', so an unused slot gets a
    gradient (independent sigmoid gates give it none)."""
    m = routes.shape[-1]
    shares = routes / routes.sum(-1, keepdim=True).clamp(min=1e-12)
    top = F.one_hot(shares.argmax(-1), m).float().mean(0)
    return m * (top * shares.mean(0)).sum()


def _answer_loss_sum(final_logits: torch.Tensor, batch: SegmentBatch) -> tuple[torch.Tensor, int]:
    """The final segment's loss sum and count: a classifier's (one answer per row), or the answer tokens'."""
    if batch.answers is not None:
        return F.cross_entropy(final_logits.float(), batch.answers, reduction="sum"), len(batch.answers)
    return _shifted_loss_sum(final_logits, batch.final_labels)


def _shifted_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies where logits[:, i] predicts labels[:, i + 1]."""
    targets = labels[:, 1:]
    count = int((targets != IGNORE_INDEX).sum())
    if count == 0:
        return logits.new_zeros((), dtype=torch.float32), 0
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, count


def answer_correct(final_logits: torch.Tensor, final_labels: torch.Tensor,
                   answers: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: every answer token is the argmax (what greedy decoding would produce); for a classifier (`answers`,
    SegmentBatch.answers), its most likely answer is the right one."""
    if answers is not None:
        return final_logits.argmax(-1) == answers
    predictions = final_logits[:, :-1].argmax(-1)
    targets = final_labels[:, 1:]
    scored = targets != IGNORE_INDEX
    right = (predictions == targets) | ~scored
    return right.all(-1) & scored.any(-1)
