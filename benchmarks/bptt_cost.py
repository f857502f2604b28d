"""Training step time against the number of segments, with full and truncated back-propagation through time.

With `memory.bptt_depth: D` the graph is cut D segments before the end, so backward costs the same however
many segments came before: step time should grow with the forward alone. Ratios are measured in one run.

    python benchmarks/bptt_cost.py --depth 2 --segments 4,8,16,32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from rmt_cli.core.memory import IGNORE_INDEX, MemoryCell, RecurrentMemoryModel  # noqa: E402
from rmt_cli.core.segments import DocumentSample, collate  # noqa: E402


def step_seconds(rmt, batch, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        rmt(batch).loss.backward()
        best = min(best, time.perf_counter() - t0)
        rmt.zero_grad(set_to_none=True)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--segments", default="4,8,16,32")
    p.add_argument("--segment-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    S, m = args.segment_size, 8
    model = GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=S + 2 * m, n_embd=128, n_layer=4, n_head=4,
                                      bos_token_id=0, eos_token_id=0))
    cell = MemoryCell(model, m, "gated", 0.001)
    rows = []
    for n in (int(x) for x in args.segments.split(",")):
        g = torch.Generator().manual_seed(n)
        docs = [DocumentSample([torch.randint(2, 1024, (S,), generator=g).tolist() for _ in range(n)],
                               [5, 6, 7], [IGNORE_INDEX, 6, 7]) for _ in range(args.batch)]
        batch = collate(docs, 0)
        full = step_seconds(RecurrentMemoryModel(cell, S).train(), batch, args.repeats)
        cut = step_seconds(RecurrentMemoryModel(cell, S, bptt_depth=args.depth).train(), batch, args.repeats)
        rows.append({"segments": n, "full_bptt_s": round(full, 4), f"depth_{args.depth}_s": round(cut, 4),
                     "truncated_over_full": round(cut / full, 3)})
        print(json.dumps(rows[-1]), flush=True)
    first = rows[0]
    for r in rows[1:]:
        growth = r[f"depth_{args.depth}_s"] / first[f"depth_{args.depth}_s"]
        print(json.dumps({"segments": r["segments"], "vs_segments": first["segments"],
                          "truncated_step_time_ratio": round(growth, 3),
                          "full_step_time_ratio": round(r["full_bptt_s"] / first["full_bptt_s"], 3),
                          "segment_ratio": r["segments"] / first["segments"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
