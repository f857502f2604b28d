"""The memory cell for BERT-style encoders, as in the RMT paper's own headline experiment (a pretrained BERT).

Every segment, written or final, is laid out as

    [CLS] [memory (m vectors)] [SEP] [segment tokens] [SEP]

with position ids 0, 1, 2, ... over the real entries (padding, left or right, moves nothing). The same slots are
read and written: the new memory is the last hidden states at the memory positions, then the update rule
(`replace`, or `gated`, as for causal LMs: `memory.MemorySlots`). The final segment (the document's unfinished
tail and the question, built by `segments.build_final_segment` as for causal LMs) writes nothing: a linear
classifier over the task's answer set (the six places, say) reads the model's pooled [CLS] state (BERT's pooler,
where the model has one, as BertForSequenceClassification uses it; else the [CLS] hidden state) and gives one
logit per answer.

The wrapped model is an `AutoModel` (e.g. BertModel): no LM head is needed, and none is run.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..errors import UsageError
from .memory import MemorySlots, UnsupportedModelError, real_positions
from .rules import GATE_FLOOR, has_matrices

HEAD_INIT_STD = 0.02  # BERT's initializer_range: a fresh classifier starts near uniform over the answers


class EncoderMemoryCell(MemorySlots):
    """A BERT-style encoder with `num_mem_tokens` memory slots after [CLS], read and written in every segment, and
    a classifier over `answers` on the final segment."""

    kind = "encoder"

    def __init__(self, model: nn.Module, num_mem_tokens: int, answers: list[str], cls_token_id: int,
                 sep_token_id: int, update: str = "replace", gate_floor: float = GATE_FLOOR):
        if has_matrices(update):
            raise UsageError(f"memory.update {update}: the associative matrices hook into decoder layers; an "
                             f"encoder takes replace or gated")
        super().__init__(model, num_mem_tokens, update, gate_floor)
        config = getattr(model, "config", None)
        family = getattr(config, "model_type", type(model).__name__)
        if "position_ids" not in inspect.signature(model.forward).parameters:
            raise UnsupportedModelError(f"{family}: the model's forward takes no position_ids; rmt's encoder cell "
                                        f"numbers the positions of [CLS] memory [SEP] segment [SEP] itself")
        embeddings = model.get_input_embeddings()
        hidden = getattr(config, "hidden_size", embeddings.embedding_dim)
        if embeddings.embedding_dim != hidden:  # ALBERT, small ELECTRA: the memory (hidden states) could not be read
            raise UnsupportedModelError(f"{family}: token embeddings of {embeddings.embedding_dim} dimensions, hidden "
                                        f"states of {hidden}; the memory is both, so they must agree")
        if getattr(getattr(model, "embeddings", None), "padding_idx", None) is not None:
            # RoBERTa and its kin number positions from the padding index + 1, not from 0: not reproduced here.
            raise UnsupportedModelError(f"{family}: positions numbered from the padding index (the RoBERTa family) "
                                        f"are not supported; BERT-style encoders are")
        if not answers:
            raise ValueError("an encoder cell needs the task's answers for its classifier")
        self.answers = list(answers)
        self.cls_token_id, self.sep_token_id = cls_token_id, sep_token_id
        self._init_memory()
        self.head = nn.Linear(hidden, len(self.answers))
        with torch.no_grad():  # a private generator: building a cell draws nothing from the global RNG
            self.head.weight.normal_(0.0, HEAD_INIT_STD, generator=torch.Generator().manual_seed(0))
            self.head.bias.zero_()

    @staticmethod
    def positions_needed(num_mem_tokens: int, segment_size: int) -> int:
        return num_mem_tokens + segment_size + 3  # [CLS] memory [SEP] segment [SEP]

    def _encode(self, memory, input_ids, attention_mask):
        batch = input_ids.shape[0]
        embed = self.model.get_input_embeddings()
        token_embeds = embed(input_ids)
        special = embed(torch.tensor([self.cls_token_id, self.sep_token_id], device=input_ids.device))
        cls, sep = (special[i].expand(batch, 1, -1) for i in range(2))
        # The memory sits where token embeddings do; the model adds positions and token types to both alike.
        inputs_embeds = torch.cat([cls, memory.to(token_embeds.dtype), sep, token_embeds, sep], dim=1)
        full_mask = None
        if attention_mask is not None:
            head = attention_mask.new_ones(batch, self.num_mem_tokens + 2)
            full_mask = torch.cat([head, attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        positions = real_positions(full_mask, batch, inputs_embeds.shape[1], input_ids.device)
        return self.model(inputs_embeds=inputs_embeds, attention_mask=full_mask, position_ids=positions)

    def forward_segment(self, memory, input_ids, attention_mask=None, write=True, logits=False):
        """Run one segment. Returns (new memory or None, answer logits [batch, answers] or None, gate or None)."""
        out = self._encode(memory, input_ids, attention_mask)
        hidden = out.last_hidden_state
        new_memory, gate = (self.update_memory(memory, hidden[:, 1 : 1 + self.num_mem_tokens]) if write
                            else (None, None))
        answer_logits = None
        if logits:
            pooled = getattr(out, "pooler_output", None)
            answer_logits = self.head(hidden[:, 0] if pooled is None else pooled)
        return new_memory, answer_logits, gate
