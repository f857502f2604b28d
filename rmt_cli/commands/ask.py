"""`rmt ask`: answer questions from a memory file.

The final segment is built by `segments.build_final_segment`, the same function training used: the memory,
the document's unfinished tail, the question prompt. Then a causal LM generates the answer until the end token,
with its engine's `generate()` (transformers', or the native Llama's) and a KV cache (an answer token costs one
token's forward, not the segment's), and an
encoder's classifier picks one of its answers (`respond`, the one place the two kinds part ways; `rmt eval`
answers through it too). The memory file is only read. Questions are independent of each other; asked
together, the document's rest is written to memory once and questions of one length are answered as a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..storage.checkpoint import LoadedModel, check_usable, in_eval_mode
from ..errors import NON_FINITE_SCORES, RMTError, UsageError, shown, whole_number_argument
from ..storage.memfile import MemoryState, check_compatible, check_state
from ..core.segments import (ANSWER_ROOM, FinalSegment, build_final_segment, pad_rows, question_ids, question_text,
                             split_document)
from ..data.tokenstream import TokenStream


@dataclass
class Reply:
    """What a model says to one final segment."""

    answer: str
    logprob: float  # of the whole answer
    tokens: int  # generated tokens (0 for a classifier)
    runner_up: str | None = None  # a classifier's most likely other answer (sampled: maybe the likelier), its logprob
    runner_up_logprob: float | None = None


class QuestionError(UsageError):
    """A question that cannot be asked; `index`: its place in the list asked (the CLI names its line)."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


@dataclass
class Answer(Reply):
    """A reply to a question asked of a memory file."""

    question: str = ""


def document_rest(state: MemoryState, tokenizer) -> list[int]:
    """Tokens of the document after the memory: the saved tail, then the carried text as if the input ended."""
    # An unfinished UTF-8 character at the very end reads as U+FFFD, as it would if the input ended there.
    carry = state.carry_text + state.pending_bytes.decode("utf-8", errors="replace")
    return list(state.tail_tokens) + TokenStream(tokenizer, carry).peek_rest()


class _DocumentEnd:
    """The memory after the document's rest, written once and shared by every question asked of it: after the
    whole segments, and (built when a question first needs it) after the unfinished tail too."""

    def __init__(self, model: LoadedModel, state: MemoryState):
        self.model = model
        cell = model.cell
        memory = state.memory.to(device=cell.memory.device, dtype=cell.dtype).unsqueeze(0)
        whole, self.tail = split_document(document_rest(state, model.tokenizer), model.segment_size)
        for segment in whole:
            memory = cell.write_segment(memory, torch.tensor([segment], device=memory.device))
        self.memory = memory
        self._flushed: torch.Tensor | None = None

    def final(self, question: list[int]) -> tuple[torch.Tensor, FinalSegment]:
        """The memory the question's final segment reads, and that segment."""
        try:
            final = build_final_segment(self.tail, question, [], self.model.segment_size)
        except ValueError as e:
            raise UsageError(f"question too long: {e}") from None
        if not final.flush:
            return self.memory, final
        if self._flushed is None:  # the tail did not fit beside this question: it is written to memory first
            self._flushed = self.model.cell.write_segment(self.memory, torch.tensor([final.flush],
                                                                                   device=self.memory.device))
        return self._flushed, final


@torch.inference_mode()
def generate(model: LoadedModel, memory: torch.Tensor, prompts: list[list[int]], max_new_tokens: int = 16,
             temperature: float = 0.0, top_p: float = 1.0,
             generator: torch.Generator | None = None) -> list[tuple[list[int], float]]:
    """Answer tokens (without the end token) and their log-probability, for a batch of final segments.

    Row r reads memory[r] and prompts[r]; it stops at the end token, after `max_new_tokens` tokens, or when its
    final segment would outgrow a segment's positions. Rows with prompts of one length run as one batch, so no
    row is padded and every row sees the positions it would see alone (and in training).
    """
    results: list[tuple[list[int], float] | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for r, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(r)
    for length, rows in by_length.items():
        room = min(max_new_tokens, model.segment_size - length)
        answers = _generate_rows(model, memory[rows], [prompts[r] for r in rows], room, temperature, top_p,
                                 generator)
        for r, answer in zip(rows, answers):
            results[r] = answer
    return results


def _generate_rows(model: LoadedModel, memory, prompts, max_new_tokens, temperature, top_p, generator):
    """One `generate()` call over rows whose prompts have the same length: the native engine's
    (`NativeLlama.generate`), or transformers'."""
    cell, tokenizer = model.cell, model.tokenizer
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.tensor(prompts, device=memory.device)
    choose = _Choose(temperature, top_p, generator) if temperature > 0 else None
    # The memory vectors go in before the prompt; associative matrices (after them) are read by every layer.
    with cell.reading_memory(memory) as vectors:
        inputs_embeds = torch.cat([vectors.to(cell.dtype), cell.model.get_input_embeddings()(ids)], dim=1)
        if getattr(cell.model, "engine", None) == "native":
            sequences, logits = cell.model.generate(inputs_embeds, max_new_tokens, eos, pad, choose)
        else:
            from transformers import LogitsProcessorList

            out = cell.model.generate(
                inputs_embeds=inputs_embeds, attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long,
                                                                       device=memory.device),
                logits_processor=LogitsProcessorList([choose]) if choose is not None else None,
                # generation_config.json may carry sampling or length settings of its own: only these apply
                generation_config=_plain_generation_config(cell.model, max_new_tokens=max_new_tokens,
                                                           eos_token_id=eos, pad_token_id=pad),
            )
            sequences, logits = out.sequences[:, -len(out.logits):], out.logits
    answers = []
    for row in range(len(prompts)):
        tokens, logprob = [], 0.0
        for step, token in enumerate(sequences[row].tolist()):
            logprob += float(torch.log_softmax(logits[step][row].float(), -1)[token])
            if token == eos:
                break
            tokens.append(token)
        answers.append((tokens, logprob))
    return answers


def _plain_generation_config(hf_model, **settings):
    """Greedy, one beam, logits kept: every setting in one object (transformers warns when a config and loose
    arguments are mixed)."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=getattr(hf_model.config, "bos_token_id", None), do_sample=False,
                            num_beams=1, output_logits=True, return_dict_in_generate=True, **settings)


class _Choose:
    """A logits processor that picks each row's next token with `_choose` (rmt's sampling: temperature, top-p, its
    own generator) and leaves generate()'s greedy step only that token to take (either engine's)."""

    def __init__(self, temperature: float, top_p: float, generator):
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, input_ids, scores):
        chosen = torch.full_like(scores, -float("inf"))
        for row in range(scores.shape[0]):
            chosen[row, _choose(scores[row].float(), self.temperature, self.top_p, self.generator)] = 0.0
        return chosen


MAX_TEMPERATURE = 1e4  # far past noise already; 10**30 overflowed a float inside the sampler


def check_sampling(temperature: float, top_p: float) -> None:
    """The sampling settings `ask` takes (`rmt ask` checks its options here, before anything is loaded): a
    temperature of infinity samples every token alike, noise for an answer; NaN is "a finite number" too."""
    for name, value, high in (("temperature", temperature, MAX_TEMPERATURE), ("top_p", top_p, 1.0)):
        if type(value) not in (int, float) or not (math.isfinite(value) and 0 <= value <= high):
            raise UsageError(f"{name} {shown(value, 40)}: a finite number from 0 to {high:g}")


def check_question(question: str) -> None:
    """UsageError for what cannot be asked whatever the model: not text, blank, or not UTF-8 (the bytes of a
    command line that are not arrive as lone surrogates, which no tokenizer takes)."""
    if not isinstance(question, str):
        raise UsageError(f"a question is text, not {type(question).__name__}")
    if not question.strip():
        raise UsageError("empty question")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = e.object[e.start:e.end].encode("utf-8", "surrogateescape")
        raise UsageError(f"the question {shown(question, 60)} is not UTF-8 text (byte {byte!r} at character "
                         f"{e.start})") from None


@in_eval_mode
def ask_many(model: LoadedModel, state: MemoryState, questions: list[str], max_new_tokens: int = 16,
             temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
             force: bool = False, name: str = "the memory") -> list[Answer]:
    """Answers to `questions`, in order, each as if asked alone (a sampled one draws from `generator` as it was when
    called; after the call the generator is where one question would have left it).
    A memory of another model is refused (UsageError, `name` saying which), but with `force` where only the
    fingerprint differs, as `rmt ask --force`."""
    check_usable(model)
    check_state(state)  # edited in Python, it may hold what no memory file may (a negative token id)
    check_compatible(state, model, force, name)
    whole_number_argument(max_new_tokens, "max_new_tokens")  # an answer has room for at least one token
    check_sampling(temperature, top_p)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise UsageError(f"generator: a torch.Generator or None, not {type(generator).__name__}")
    for index, question in enumerate(questions):
        try:
            check_question(question)
        except UsageError as e:
            raise QuestionError(str(e), index) from None
    with torch.inference_mode():
        end = _DocumentEnd(model, state)
        finals = []
        for index, question in enumerate(questions):
            try:
                finals.append(end.final(_question_tokens(model, question)))
            except UsageError as e:
                raise _question_error(e, question, index) from None
        if temperature > 0:  # one question after another, each from the generator as the call found it: a
            # question's sample depended on the questions drawn before it (the twenty-ninth review)
            source = generator or torch.default_generator
            start, replies = source.get_state(), []
            for memory, final in finals:
                drawn = torch.Generator(source.device).set_state(start)
                replies.append(respond(model, memory, [final.input_ids], max_new_tokens, temperature, top_p,
                                       drawn)[0])
                source.set_state(drawn.get_state())  # on, as after one question
        else:
            memory = torch.cat([memory for memory, _ in finals])
            replies = respond(model, memory, [final.input_ids for _, final in finals], max_new_tokens)
    return [Answer(**vars(reply), question=q) for q, reply in zip(questions, replies)]


def check_question_lengths(model: LoadedModel, questions: list[str]) -> None:
    """Each question fits the model's final segment beside the answer's room (QuestionError naming the first that
    does not): found before any is answered, so that a long --file does not print answers and then fail as bad
    input. Whether one fits depends on its tokens alone (an unfinished tail is written to memory first)."""
    for index, question in enumerate(questions):
        try:
            try:
                build_final_segment([], _question_tokens(model, question), [], model.segment_size)
            except ValueError as e:
                raise UsageError(f"question too long: {e}") from None
        except UsageError as e:
            raise _question_error(e, question, index) from None


def _question_error(error: UsageError, question: str, index: int) -> QuestionError:
    """The error, saying which question of a long list (the thirteenth review): its start, cut to 60 characters."""
    short = question if len(question) <= 60 else question[:59] + "…"
    return QuestionError(f"{error} (question {short!r})", index)


def _question_tokens(model: LoadedModel, question: str) -> list[int]:
    """The question's tokens. One that cannot fit a segment by its length alone is refused before it is
    tokenized: a line of 16 MB took 19 s and 3.4 GB to tokenize, only to be refused (the thirteenth review). No
    token of the vocabulary covers more characters than its longest one does, so a question of more characters
    than that many times the tokens a question may take never fits; no question that fits is refused (but for
    characters a tokenizer drops or folds into one unknown token, which no real question is made of)."""
    room = model.segment_size - ANSWER_ROOM
    if len(question) > room:  # most questions are short: the vocabulary is looked at only for a long one
        characters = len(question_text(question))
        longest = max(map(len, model.tokenizer.get_vocab()), default=1)
        if characters > room * longest:
            raise UsageError(f"question too long: {characters:,} characters; a question takes at most {room} tokens "
                             f"here (a {model.segment_size}-token segment keeps {ANSWER_ROOM} for the answer), and no "
                             f"token of this model spans more than {longest} characters")
    return question_ids(model.tokenizer, question)


@torch.inference_mode()
def classify(model: LoadedModel, memory: torch.Tensor, prompts: list[list[int]], temperature: float = 0.0,
             top_p: float = 1.0, generator: torch.Generator | None = None) -> list[Reply]:
    """An encoder's answers to a batch of final segments: its classifier's most likely answer (or one sampled at
    `temperature`), and the most likely of the others. Rows are right-padded (an encoder numbers positions over
    real entries only, so padding moves nothing)."""
    ids, mask = pad_rows(prompts, model.tokenizer.pad_token_id)
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
        replies = classify(model, memory, prompts, temperature, top_p, generator)
    else:
        generated = generate(model, memory, prompts, max_new_tokens, temperature, top_p, generator)
        replies = [Reply(answer_text(model.tokenizer, tokens), logprob, len(tokens)) for tokens, logprob in generated]
    # A model whose numbers broke answers "" (or its first answer) with a NaN score: an error, not an answer.
    if not all(math.isfinite(reply.logprob) for reply in replies):
        raise RMTError(NON_FINITE_SCORES)
    return replies


def ask(model: LoadedModel, state: MemoryState, question: str, max_new_tokens: int = 16, temperature: float = 0.0,
        top_p: float = 1.0, generator: torch.Generator | None = None, force: bool = False) -> Answer:
    """The answer to `question` from the memory `state` (load_memory) holds, as `rmt ask` gives it: greedy, or
    sampled at `temperature` > 0 within `top_p` (from `generator`, for a seeded draw); at most `max_new_tokens`
    tokens. An Answer: `answer` (the text), `logprob`, `tokens`, and an encoder's `runner_up`. A memory of another
    model is refused (UsageError), but with `force` where only the fingerprint differs, as `--force`."""
    [answer] = ask_many(model, state, [question], max_new_tokens, temperature, top_p, generator, force)
    return answer


def answer_text(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    # Drawn on the CPU, where `generator` lives: a seed then gives the same answer on a GPU as on the CPU
    probs = torch.softmax(logits.float().cpu() / temperature, -1)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
        # So small a temperature that logits / temperature overflow: sampling at it is greedy.
        return int(logits.argmax())
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        keep[0] = True  # the most likely token always stays (top_p = 0 is greedy)
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
