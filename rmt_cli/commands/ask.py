"""`rmt ask`: answer questions from a memory file.

The final segment is built by `segments.build_final_segment`, the same function training used: the memory,
the document's unfinished tail, the question prompt. Then a causal LM generates the answer until the end token,
and an encoder's classifier picks one of its answers (`respond`, the one place the two kinds part ways; `rmt eval`
answers through it too). The memory file is only read. Questions are independent of each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..storage.checkpoint import LoadedModel
from ..errors import UsageError
from ..storage.memfile import MemoryState
from ..core.segments import build_final_segment, question_ids, split_document
from ..data.tokenstream import TokenStream


@dataclass
class Reply:
    """What a model says to one final segment."""

    answer: str
    logprob: float  # of the whole answer
    tokens: int  # generated tokens (0 for a classifier)
    runner_up: str | None = None  # a classifier's next most likely answer, and its log-probability
    runner_up_logprob: float | None = None


@dataclass
class Answer(Reply):
    """A reply to a question asked of a memory file."""

    question: str = ""


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
def generate(model: LoadedModel, memory: torch.Tensor, prompts: list[list[int]], max_new_tokens: int = 16,
             temperature: float = 0.0, top_p: float = 1.0,
             generator: torch.Generator | None = None) -> list[tuple[list[int], float]]:
    """Answer tokens (without the end token) and their log-probability, for a batch of final segments.

    Each row reads its memory and its prompt; a row stops at the end token, after `max_new_tokens` tokens, or
    when its final segment would outgrow a segment's positions. Rows are right-padded: a shorter prompt does not
    move the memory or the others' positions.
    """
    S, eos = model.segment_size, model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id
    rows = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in rows]
    logprobs = [0.0] * len(rows)
    live = list(range(len(rows)))
    device = memory.device
    while live:
        width = max(len(rows[r]) for r in live)
        ids = torch.full((len(live), width), pad, dtype=torch.long)
        mask = torch.zeros((len(live), width), dtype=torch.long)
        for i, r in enumerate(live):
            ids[i, : len(rows[r])] = torch.tensor(rows[r])
            mask[i, : len(rows[r])] = 1
        logits = model.cell.read_segment(memory[live], ids.to(device), mask.to(device) if len(live) > 1 else None)
        last = torch.tensor([len(rows[r]) - 1 for r in live], device=device)
        step_logits = logits[torch.arange(len(live), device=device), last].float()
        still = []
        for i, r in enumerate(live):
            token = _choose(step_logits[i], temperature, top_p, generator)
            logprobs[r] += float(torch.log_softmax(step_logits[i], -1)[token])
            if token == eos:
                continue
            out[r].append(token)
            rows[r].append(token)
            if len(out[r]) < max_new_tokens and len(rows[r]) < S:
                still.append(r)
        live = still
    return list(zip(out, logprobs))


@torch.inference_mode()
def classify(model: LoadedModel, memory: torch.Tensor, prompts: list[list[int]], temperature: float = 0.0,
             top_p: float = 1.0, generator: torch.Generator | None = None) -> list[Reply]:
    """An encoder's answers to a batch of final segments: its classifier's most likely answer (or one sampled at
    `temperature`), and the most likely of the others. Rows are right-padded, as `generate`'s are."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[row, : len(prompt)] = 1
    device = memory.device
    logits = model.cell.read_segment(memory, ids.to(device), mask.to(device) if len(prompts) > 1 else None).float()
    answers = model.cell.answers
    replies = []
    for row in logits:
        logprobs = torch.log_softmax(row, -1)
        chosen = _choose(row, temperature, top_p, generator)
        others = logprobs.clone()
        others[chosen] = -math.inf
        second = int(others.argmax()) if len(answers) > 1 else None
        replies.append(Reply(answers[chosen], float(logprobs[chosen]), 0,
                             None if second is None else answers[second],
                             None if second is None else float(logprobs[second])))
    return replies


def respond(model: LoadedModel, memory: torch.Tensor, prompts: list[list[int]], max_new_tokens: int = 16,
            temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> list[Reply]:
    """What the model says to each final segment: a causal LM generates its answer, an encoder's classifier picks
    one of its answers."""
    if model.cell.kind == "encoder":
        return classify(model, memory, prompts, temperature, top_p, generator)
    generated = generate(model, memory, prompts, max_new_tokens, temperature, top_p, generator)
    return [Reply(answer_text(model.tokenizer, tokens), logprob, len(tokens)) for tokens, logprob in generated]


@torch.inference_mode()
def ask(model: LoadedModel, state: MemoryState, question: str, max_new_tokens: int = 16, temperature: float = 0.0,
        top_p: float = 1.0, generator: torch.Generator | None = None) -> Answer:
    if not question.strip():
        raise UsageError("empty question")
    q = question_ids(model.tokenizer, question)
    memory, prompt = prepare_memory(model, state, q)
    [reply] = respond(model, memory, [prompt], max_new_tokens, temperature, top_p, generator)
    return Answer(**vars(reply), question=question)


def answer_text(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, -1)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
        # So small a temperature that logits / temperature overflow: sampling at it is greedy.
        return int(logits.argmax())
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        keep[0] = True  # the most likely token always stays (top_p = 0 is greedy)
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
