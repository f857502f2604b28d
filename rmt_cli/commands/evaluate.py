"""Accuracy (and loss) by number of segments, with memory and with the memory reset every segment."""

from __future__ import annotations

import math

import torch

from .samples import TaskData
from ..core.memory import RecurrentMemoryModel, answer_correct
from ..core.segments import collate

EVAL_OFFSET = 1_000_000_000  # evaluation samples never share an index with training samples


@torch.no_grad()
def evaluate(rmt: RecurrentMemoryModel, data: TaskData, lengths: list[int], samples: int, batch_size: int,
             device) -> list[dict]:
    was_training = rmt.training
    rmt.eval()
    pad = data.tokenizer.pad_token_id
    rows = []
    for n in lengths:
        totals = {"memory": [0, 0.0, 0], "reset": [0, 0.0, 0]}  # correct, loss sum, loss tokens
        for start in range(0, samples, batch_size):
            batch = collate([data.sample(EVAL_OFFSET + i, n) for i in range(start, min(start + batch_size, samples))],
                            pad).to(device)
            for mode, reset in (("memory", False), ("reset", True)):
                out = rmt(batch, reset_memory=reset)
                t = totals[mode]
                t[0] += int(answer_correct(out.final_logits, batch.final_labels, batch.answers).sum())
                if out.loss is not None:
                    t[1] += float(out.loss) * out.num_loss_tokens
                    t[2] += out.num_loss_tokens
        row = {"segments": n, "samples": samples}
        for mode, (correct, loss_sum, tokens) in totals.items():
            suffix = "" if mode == "memory" else "_reset"
            row["accuracy" + suffix] = correct / samples
            row["loss" + suffix] = loss_sum / max(tokens, 1)
            row["perplexity" + suffix] = math.exp(min(row["loss" + suffix], 50))
        rows.append(row)
    rmt.train(was_training)
    return rows
