"""rmt against the official RMT implementation, on the same weights, as time ratios measured in one run.

The official code is booydar/recurrent-memory-transformer, branch `babilong-release` (commit 5a3d072 of
2024-02-22 was the one checked), file `modeling_rmt/language_modeling.py`: its `MemoryCell` (layout
[memory][segment][memory], memory = the last hidden states at the write positions) and `RecurrentWrapper`
(splits the input into segments, carries the memory, loss over all tokens). Get it outside this repository:

    git clone -b babilong-release https://github.com/booydar/recurrent-memory-transformer /work/official-rmt

Both sides run the same base model (a copy of the checkpoint's Hugging Face model, same weights, same number of
memory tokens, same segment size, same initial memory) on the same tokens, in each dtype asked for:

1. ingest: N segments of one document, no gradients (`torch.inference_mode` on both sides). Ours:
   `MemoryCell.write_segment` per segment, on the engine `rmt ingest` runs (the native one for the embedded
   model; `RMT_ENGINE=transformers` for transformers'). Theirs: `RecurrentWrapper.forward` on the
   whole input, the way their code reads a long input (it runs the LM head on every token and keeps every
   layer's hidden states, which is part of what is measured).
2. training step: forward + backward on one batch of B rows of N segments with a language-model loss on every
   token. Ours: `RecurrentMemoryModel` (full BPTT, N-1 write segments and a final read segment carrying the
   loss too). Theirs: `RecurrentWrapper(input_ids, labels=input_ids)` (full BPTT: k2=-1).

Each timing is the best of --repeats after a warm-up, ours and theirs interleaved. The ratio is their time over
ours: above 1 means rmt is faster. The goal (the issue's): ingest >= 1.2x, training step >= 1.0x. The
memories after ingest and the outputs of a training step are checked to have the same shapes (the layouts
differ, so values need not match) and to be finite.

    python benchmarks/official_rmt.py --official /work/official-rmt
    python benchmarks/official_rmt.py --official /work/official-rmt --model runs/qa1/final --dtype bfloat16

Their file needed no shim with torch 2.x and transformers 5.x: it is imported by path (their package's
`__init__` imports modules this benchmark does not need) and run unmodified.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from rmt_cli.core.memory import RecurrentMemoryModel  # noqa: E402
from rmt_cli.core.segments import DocumentSample, collate  # noqa: E402
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR, DEFAULT_NOISE_TEXT  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OFFICIAL_FILE = Path("modeling_rmt") / "language_modeling.py"


def import_official(path: str):
    """Their language_modeling.py, from a checkout (or the file itself), without their package __init__."""
    file = Path(path)
    if file.is_dir():
        file = file / OFFICIAL_FILE
    if not file.is_file():
        sys.exit(f"--official {path}: no {OFFICIAL_FILE} there (a checkout of booydar/recurrent-memory-transformer, "
                 f"branch babilong-release)")
    spec = importlib.util.spec_from_file_location("official_rmt_language_modeling", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each function, after one warm-up each; the functions take turns."""
    for fn in fns.values():
        fn()
    best = {name: math.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def document_ids(tokenizer, text: str, count: int) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        sys.exit("--text: no tokens")
    return (ids * (count // len(ids) + 1))[:count]


def run_dtype(args, official, dtype_name: str, text: str) -> dict:
    dtype = DTYPES[dtype_name]
    loaded = load_checkpoint(args.model, dtype=dtype)
    ours = loaded.cell
    S, m = loaded.segment_size, ours.num_mem_tokens
    theirs = official.MemoryCell(copy.deepcopy(ours.model), m)
    with torch.no_grad():
        theirs.memory.copy_(ours.memory.float())  # the same initial memory on both sides
    theirs.to(dtype)

    # 1. ingest: one document, N segments, no gradients. Ours on the engine `rmt ingest` runs (the native one
    # where the checkpoint qualifies: the same weights, the same fingerprint).
    reader = load_checkpoint(args.model, dtype=dtype, engine="auto").cell
    n = args.ingest_segments
    ids = torch.tensor([document_ids(loaded.tokenizer, text, n * S)])
    wrapper = official.RecurrentWrapper(theirs, segment_size=S, max_n_segments=n, k2=-1,
                                        segment_alignment="left").eval()
    ours.eval()

    def ours_ingest():
        with torch.inference_mode():
            memory = reader.initial_memory(1)
            for i in range(n):
                memory = reader.write_segment(memory, ids[:, i * S:(i + 1) * S])
        return memory

    def theirs_ingest():
        with torch.inference_mode():
            return wrapper(input_ids=ids)

    ingest_t = best_of({"ours": ours_ingest, "theirs": theirs_ingest}, args.repeats)
    # Shapes: the memory after the document on both sides (their wrapper does not return it: their cell is
    # stepped by hand here, as their wrapper steps it).
    our_memory = ours_ingest()
    with torch.inference_mode():
        their_memory = None
        for i in range(n):
            _, their_memory = theirs(input_ids=ids[:, i * S:(i + 1) * S], memory_state=their_memory)

    # 2. training step: B rows of N segments, LM loss on every token, full BPTT.
    n, B = args.train_segments, args.batch
    rows = [document_ids(loaded.tokenizer, text[r * 997:] or text, n * S) for r in range(B)]
    batch_ids = torch.tensor(rows)
    samples = [DocumentSample([row[i * S:(i + 1) * S] for i in range(n - 1)], row[(n - 1) * S:],
                              row[(n - 1) * S:], write_labels=[row[i * S:(i + 1) * S] for i in range(n - 1)])
               for row in rows]
    batch = collate(samples, loaded.tokenizer.pad_token_id or 0)
    rmt = RecurrentMemoryModel(ours, S).train()
    train_wrapper = official.RecurrentWrapper(theirs, segment_size=S, max_n_segments=n, k2=-1,
                                              segment_alignment="left").train()
    outputs = {}

    def ours_step():
        out = rmt(batch)
        out.loss.backward()
        rmt.zero_grad(set_to_none=True)
        outputs["ours"] = out

    def theirs_step():
        out = train_wrapper(input_ids=batch_ids, labels=batch_ids)
        out.loss.backward()
        train_wrapper.zero_grad(set_to_none=True)
        outputs["theirs"] = out

    train_t = best_of({"ours": ours_step, "theirs": theirs_step}, args.repeats)
    o, t = outputs["ours"], outputs["theirs"]
    finite = lambda *xs: all(bool(torch.isfinite(x).all()) for x in xs)  # noqa: E731
    # name: (ours, theirs, must have the same shape, finite)
    checks = {
        "memory after ingest": (tuple(our_memory.shape), tuple(their_memory.shape), True,
                                finite(our_memory, their_memory)),
        "final memory of a training step": (tuple(o.memory.shape), (B, m, ours.hidden_size), True, finite(o.memory)),
        "logits of the last segment": (tuple(o.final_logits.shape), tuple(t.logits[:, -S:].shape), True,
                                       finite(o.final_logits, t.logits)),
        # ours scores tokens within a segment (the first token of a segment is not a target); theirs across segments
        "tokens in the loss": (o.num_loss_tokens, B * (n * S - 1), False, True),
        "loss": (f"{o.loss.item():.3f}", f"{t.loss.item():.3f}", False, finite(o.loss, t.loss)),
    }
    return {"dtype": dtype_name, "S": S, "m": m, "ingest": ingest_t, "train": train_t, "checks": checks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="checkout of booydar/recurrent-memory-transformer "
                   "(babilong-release), or its modeling_rmt/language_modeling.py")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint (default: the embedded model)")
    p.add_argument("--dtype", default="float32,bfloat16", help="float32, bfloat16 or both, comma-separated")
    p.add_argument("--text", default=str(DEFAULT_NOISE_TEXT), help="text to feed (repeated as needed)")
    p.add_argument("--ingest-segments", type=int, default=64)
    p.add_argument("--train-segments", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="rows of a training batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.train_segments < 2:
        p.error("--train-segments: at least 2 (ours reads the last one as its final segment)")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            p.error(f"--dtype {d!r}: choose float32 or bfloat16")
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    official = import_official(args.official)
    text = Path(args.text).read_text(encoding="utf-8", errors="replace")
    results = [run_dtype(args, official, d, text) for d in dtypes]

    r0 = results[0]
    print(f"rmt vs official RMT (babilong-release), model {args.model}: segment {r0['S']}, {r0['m']} memory tokens, "
          f"{torch.get_num_threads()} threads\n")
    print("| dtype | what | rmt s | official s | official / rmt | goal |")
    print("|---|---|---:|---:|---:|---|")
    for r in results:
        for key, label, goal in (("ingest", f"ingest {args.ingest_segments} segments, batch 1", 1.2),
                                 ("train", f"training step, {args.batch} x {args.train_segments} segments", 1.0)):
            ours, theirs = r[key]["ours"], r[key]["theirs"]
            ratio = theirs / ours
            print(f"| {r['dtype']} | {label} | {ours:.4f} | {theirs:.4f} | **{ratio:.2f}x** | "
                  f">= {goal}x: {'yes' if ratio >= goal else 'NO'} |")
    print("\n| dtype | check | rmt | official | ok |")
    print("|---|---|---|---|---|")
    ok = True
    for r in results:
        for name, (a, b, same_shape, finite) in r["checks"].items():
            good = finite and (a == b or not same_shape)
            ok &= good
            what = ("same shape, finite" if same_shape else "finite") if good else "NO"
            print(f"| {r['dtype']} | {name} | {a} | {b} | {what} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
