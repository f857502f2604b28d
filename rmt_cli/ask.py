"""`rmt ask`: answer questions from a memory file.

The final segment is built by `segments.build_final_segment`, the same function training used: the memory,
the document's unfinished tail, the question prompt; then the answer is generated until the end token.
The memory file is only read. Questions are independent of each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checkpoint import LoadedModel
from .errors import UsageError
from .memfile import MemoryState
from .segments import build_final_segment, question_ids, split_document
from .tokenstream import TokenStream


@dataclass
class Answer:
    question: str
    answer: str
    logprob: float
    tokens: int


def document_rest(state: MemoryState, tokenizer) -> list[int]:
    """Tokens of the document after the memory: the saved tail, then the carried text as if the input ended."""
    # An unfinished UTF-8 character at the very end reads as U+FFFD, as it would if the input ended there.
    carry = state.carry_text + state.pending_bytes.decode("utf-8", errors="replace")
    return list(state.tail_tokens) + TokenStream(tokenizer, carry).peek_rest()


@torch.inference_mode()
def prepare_memory(model: LoadedModel, state: MemoryState, question: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Memory after everything but the final segment, and the final segment's prompt tokens."""
    cell, S = model.cell, model.segment_size
    memory = state.memory.to(device=cell.memory.device, dtype=cell.dtype).unsqueeze(0)
    whole, tail = split_document(document_rest(state, model.tokenizer), S)
    try:
        final = build_final_segment(tail, question, [], S)
    except ValueError as e:
        raise UsageError(f"question too long: {e}") from None
    for segment in whole + ([final.flush] if final.flush else []):
        memory = cell.write_segment(memory, torch.tensor([segment], device=memory.device))
    return memory, final.input_ids


@torch.inference_mode()
def ask(model: LoadedModel, state: MemoryState, question: str, max_new_tokens: int = 16, temperature: float = 0.0,
        top_p: float = 1.0, generator: torch.Generator | None = None) -> Answer:
    if not question.strip():
        raise UsageError("empty question")
    q = question_ids(model.tokenizer, question)
    memory, prompt = prepare_memory(model, state, q)
    eos = model.tokenizer.eos_token_id
    room = model.segment_size - len(prompt)  # the final segment may not outgrow a segment's positions
    generated: list[int] = []
    logprob = 0.0
    ids = list(prompt)
    for _ in range(min(max_new_tokens + 1, room)):
        logits = model.cell.read_segment(memory, torch.tensor([ids], device=memory.device))[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        token = _choose(logits, temperature, top_p, generator)
        logprob += float(logp[token])
        if token == eos:
            break
        generated.append(token)
        ids.append(token)
    text = model.tokenizer.decode(generated, skip_special_tokens=True).strip()
    return Answer(question, text, logprob, len(generated))


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        keep[0] = True  # the most likely token always stays (top_p = 0 is greedy)
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
