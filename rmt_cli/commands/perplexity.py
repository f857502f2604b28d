"""`rmt perplexity`: how well an RMT predicts a text, and how much of that it owes to its memory.

One streaming pass (flat memory however long the text) scores every segment three ways: the RMT carrying its
memory, the same weights with the memory reset every segment, and optionally a baseline model (e.g. the same
architecture trained without memory). Reported: perplexity, loss by position within a segment, loss by
segment along the document, and a flatness figure (mean loss over the first 10% of positions in a segment
minus the last 10%): a model that starts each segment blind has a large one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..atomic import plain_pyplot, save_figure
from ..storage.checkpoint import LoadedModel, check_usable, in_eval_mode
from ..errors import NON_FINITE_SCORES, RMTError, UsageError, callback_argument, shown, whole_number_argument
from ..core.segments import SegmentStream
from ..data.sources import open_document
from ..data.tokenstream import DocumentTokens


@dataclass
class Scores:
    """Loss sums by position within a segment (position i scores the prediction of token i from tokens < i)."""

    segment_size: int
    loss_by_position: list[float] = field(default_factory=list)
    count_by_position: list[int] = field(default_factory=list)
    loss_by_segment: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.loss_by_position = [0.0] * self.segment_size
        self.count_by_position = [0] * self.segment_size

    def add(self, token_losses: torch.Tensor) -> None:
        """token_losses[j]: loss of predicting token j + 1 of the segment."""
        values = token_losses.tolist()
        for j, v in enumerate(values):
            self.loss_by_position[j + 1] += v
            self.count_by_position[j + 1] += 1
        self.loss_by_segment.append(sum(values) / max(len(values), 1))

    @property
    def tokens(self) -> int:
        return sum(self.count_by_position)

    @property
    def mean_loss(self) -> float:
        return sum(self.loss_by_position) / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mean_loss, 50.0))

    def position_curve(self) -> list[float | None]:
        return [s / c if c else None for s, c in zip(self.loss_by_position, self.count_by_position)]

    def tenths(self) -> tuple[float, float] | None:
        """Mean loss over the first and the last tenth of the positions scored; None for fewer than
        MIN_FLATNESS_POSITIONS (a two-token text gave a "flatness" of one token's loss against another's)."""
        curve = [v for v in self.position_curve() if v is not None]
        if len(curve) < MIN_FLATNESS_POSITIONS:
            return None
        k = len(curve) // 10
        return sum(curve[:k]) / k, sum(curve[-k:]) / k

    @property
    def flatness(self) -> float | None:
        tenths = self.tenths()
        return None if tenths is None else tenths[0] - tenths[1]

    def report(self) -> dict:
        tenths = self.tenths() or (None, None)
        return {"perplexity": self.perplexity, "loss": self.mean_loss, "tokens": self.tokens,
                "flatness": self.flatness, "first_tenth": tenths[0], "last_tenth": tenths[1],
                "loss_by_position": self.position_curve(), "loss_by_segment": self.loss_by_segment}


MIN_FLATNESS_POSITIONS = 10  # a tenth of the positions is then at least one


def _segment_losses(model: LoadedModel, memory, ids: torch.Tensor):
    new_memory, logits, _ = model.cell.forward_segment(memory, ids, write=True, logits=True)
    losses = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")
    return new_memory, losses


@torch.inference_mode()
@in_eval_mode
def perplexity(paths: list[str], model: LoadedModel, baseline: LoadedModel | None = None,
               max_tokens: int | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Score the text of `paths` (files, folders, `-`) segment by segment. Returns every series."""
    if max_tokens is not None:  # at least 2: the first token is only read, scored by none before it
        whole_number_argument(max_tokens, "max_tokens", 2)
    callback_argument(on_progress, "on_progress")
    for loaded, role in ((model, "model"), (baseline, "baseline")):
        if loaded is None and role == "baseline":  # the one that is optional
            continue
        check_usable(loaded, role)
        if loaded.cell.kind == "encoder":
            raise UsageError(f"the {role} {shown(loaded.path)} is an encoder: its classifier picks answers and "
                             f"predicts no next token, so it has no perplexity; rmt perplexity needs a causal language "
                             f"model")
    if baseline is not None and baseline.segment_size != model.segment_size:
        raise UsageError(f"--baseline has segments of {baseline.segment_size} tokens, the model "
                         f"{model.segment_size}: compare models with the same segment size")
    if baseline is not None and baseline.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise UsageError("--baseline uses another tokenizer: perplexities would not be comparable")
    S = model.segment_size
    text = DocumentTokens(open_document(paths), model.tokenizer)
    device = model.cell.memory.device
    memory = model.cell.initial_memory(1)
    reset = model.cell.initial_memory(1)
    base_memory = baseline.cell.initial_memory(1) if baseline is not None else None
    rmt, without, base = Scores(S), Scores(S), Scores(S) if baseline is not None else None
    started = time.perf_counter()
    done = 0

    def score(segment: list[int]):
        nonlocal memory, base_memory
        ids = torch.tensor([segment], device=device)
        memory, losses = _segment_losses(model, memory, ids)
        rmt.add(losses)
        without.add(_segment_losses(model, reset, ids)[1])
        if baseline is not None:
            base_memory, base_losses = _segment_losses(baseline, base_memory, ids.to(baseline.cell.memory.device))
            base.add(base_losses)

    def chunks_and_rest():  # the carried text is scored too: here the input really ends
        yield from text.chunks()
        yield text.rest()

    tokens = SegmentStream(S, chunks_and_rest())
    # Whole segments as they come; at the end, the last partial one too (it needs two tokens to score).
    while tokens.fill() or len(tokens.tail) > 1:
        limit = S if max_tokens is None else min(S, max_tokens - done)
        if limit < 2:
            break
        segment = tokens.take(limit)
        score(segment)
        done += len(segment)
        if on_progress:
            on_progress(done, len(rmt.loss_by_segment))
    if rmt.tokens == 0:
        raise UsageError("the text is too short to score: it needs at least two tokens")
    seconds = time.perf_counter() - started
    result = {"tokens": done, "segments": len(rmt.loss_by_segment), "seconds": seconds,
              "segment_size": S, "memory": rmt.report(), "memory_reset": without.report()}
    if base is not None:
        result["baseline"] = base.report()
    # A model whose numbers broke: an error whatever the output (it printed `nan` and exited 0 but for --json).
    if not all(math.isfinite(result[key][value]) for key in ("memory", "memory_reset", "baseline") if key in result
               for value in ("loss", "perplexity")):
        raise RMTError(NON_FINITE_SCORES)
    return result


def plot(result: dict, path: str) -> None:
    with plain_pyplot() as plt:
        _draw(plt, result, path)


def _draw(plt, result: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    series = [("memory", "RMT, with memory"), ("memory_reset", "same model, memory reset"),
              ("baseline", "baseline (no memory)")]
    for key, label in series:
        if key in result:
            curve = result[key]["loss_by_position"]
            xs = [i for i, v in enumerate(curve) if v is not None]
            ax.plot(xs, [curve[i] for i in xs], label=f"{label}: ppl {result[key]['perplexity']:.1f}")
    ax.set_xlabel("position within segment")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"loss by position, {result['tokens']:,} tokens in segments of {result['segment_size']}")
    ax.legend()
    fig.tight_layout()
    try:
        save_figure(fig, path)  # never a half-written picture; errors name `path`, not the temporary
    finally:
        plt.close(fig)
