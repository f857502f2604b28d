"""Forward FLOPs of reading a document: RMT against full attention, from 1k to 2M tokens (analytic counts).

Counted: the matmuls of every decoder layer, forward, for the model's own shapes: 2 FLOPs per multiply-add of
every linear layer (attention projections and MLP, whatever the family: the weights are counted on a weightless
model built from the config) plus the attention matrices, QK^T and AV, 4 * (heads * head_dim) per (query, key)
pair, over the causal triangle (--dense-attention: the full square, as a kernel without causal skipping runs
it). Not counted: embeddings, LM head, norms, softmax, activations (the same per token on both sides).

- full attention: one pass over all L tokens (L(L+1)/2 pairs).
- RMT: ceil(L / S) segments of [read memory m][S tokens][write memory m], each a causal pass of S + 2m.

The ratio full / RMT grows linearly with L: RMT's cost per token is constant. Two models by default: the
embedded default model and a GPT-2-sized one (12 layers x 768, segment 512, 10 memory tokens, the seed's).

    python benchmarks/flops.py
    python benchmarks/flops.py --lengths 1k,4k,16k,128k,1M,2M --plot docs/flops.png
    python benchmarks/flops.py --model "qa1=runs/qa1/final"        # add a checkpoint's shapes

--measure CKPT runs that checkpoint's `MemoryCell.write_segment` over K segments (as `rmt ingest` does), counts
the FLOPs of what it ran the same way, and prints the achieved FLOP/s and its fraction of a given matmul peak
(--peak-gflops; default 190 GFLOP/s for float32 and 850 for bfloat16, the project brief's figures for its CPU),
with a large square torch.mm for reference:

    python benchmarks/flops.py --measure rmt_cli/assets/default-model --segments 256 --dtype float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rmt_cli.commands.longeval import format_length, parse_lengths  # noqa: E402
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR  # noqa: E402

PEAK_GFLOPS = {"float32": 190.0, "bfloat16": 850.0}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Shapes:
    label: str
    layers: int
    linear_weights: int  # multiply-adds per token of one decoder layer's linear layers
    attention_width: int  # heads * head_dim of the queries (and of the values)
    segment_size: int
    memory_tokens: int

    def pass_flops(self, length: int, dense: bool = False) -> int:
        """Forward matmul FLOPs of one causal pass over `length` positions, all layers."""
        pairs = length * length if dense else length * (length + 1) // 2
        return self.layers * (2 * length * self.linear_weights + 4 * self.attention_width * pairs)

    def full_flops(self, tokens: int, dense: bool = False) -> int:
        return self.pass_flops(tokens, dense)

    def rmt_flops(self, tokens: int, dense: bool = False) -> int:
        return math.ceil(tokens / self.segment_size) * self.segment_flops(dense)

    def segment_flops(self, dense: bool = False) -> int:
        return self.pass_flops(self.segment_size + 2 * self.memory_tokens, dense)


def layer_shapes(model: nn.Module) -> tuple[int, int, int]:
    """(layers, linear weights of one layer, heads * head_dim) of a causal LM, from its modules and config."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    linear = 0
    for module in model.base_model.modules():
        # nn.Linear, and GPT-2's Conv1D (a linear layer with its weight transposed)
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            linear += module.weight.numel()
    return layers, linear // layers, heads * head_dim


def checkpoint_shapes(label: str, path: str) -> Shapes:
    from transformers import AutoModelForCausalLM

    from rmt_cli.storage.checkpoint import read_config, read_info, refuse_remote_code

    rmt = read_info(path)["memory"]
    refuse_remote_code(Path(path))  # the checkpoint's own code never runs, as in every rmt command
    config = read_config(Path(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers, linear, width = layer_shapes(model)
    return Shapes(label, layers, linear, width, rmt["segment_size"], rmt["num_mem_tokens"])


def gpt2_shapes() -> Shapes:
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024))
    layers, linear, width = layer_shapes(model)
    return Shapes("GPT-2 size (12 x 768, segment 512, 10 memory tokens)", layers, linear, width, 512, 10)


def si(x: float) -> str:
    """FLOPs with an SI prefix, 3 significant figures: 3.13 G, 17.0 T, 1.03 P."""
    for prefix, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= size:
            return f"{x / size:.3g} {prefix}"
    return f"{x:.3g}"


def print_table(shapes: Shapes, lengths: list[int], dense: bool) -> None:
    print(f"### {shapes.label}\n")
    print(f"{shapes.layers} layers, {shapes.linear_weights:,} linear weights per layer, attention width "
          f"{shapes.attention_width}, segment {shapes.segment_size} + 2 x {shapes.memory_tokens} memory tokens; "
          f"RMT: {shapes.segment_flops(dense) / shapes.segment_size / 1e6:,.2f} MFLOP per token at any length\n")
    print("| tokens | full attention FLOPs | RMT FLOPs | full / RMT |")
    print("|---:|---:|---:|---:|")
    for n in lengths:
        full, rmt = shapes.full_flops(n, dense), shapes.rmt_flops(n, dense)
        print(f"| {format_length(n)} | {si(full)} | {si(rmt)} | **{full / rmt:,.1f}** |")
    print()


def plot(path: str, all_shapes: list[Shapes], lengths: list[int], dense: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib (pip install -e '.[plot]')")
    xs = sorted(set(lengths) | {int(x) for x in torch.logspace(math.log10(min(lengths)), math.log10(max(lengths)),
                                                                    40).tolist()})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, s in enumerate(all_shapes):
        color = f"C{i}"
        ax.plot(xs, [s.full_flops(x, dense) for x in xs], color=color, linestyle="--",
                label=f"{s.label}: full attention")
        ax.plot(xs, [s.rmt_flops(x, dense) for x in xs], color=color, label=f"{s.label}: RMT")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("forward FLOPs (matmuls)")
    ax.set_title("Reading a document: RMT against full attention")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def measure(args) -> int:
    from transformers.utils import logging as hf_logging

    from rmt_cli.storage.checkpoint import load_checkpoint

    hf_logging.disable_progress_bar()
    shapes = checkpoint_shapes(args.measure, args.measure)
    S, K, B = shapes.segment_size, args.segments, args.batch
    print(f"write_segment over {K} segments of {S} tokens (+ 2 x {shapes.memory_tokens} memory), batch {B}, "
          f"{torch.get_num_threads()} threads, {args.measure}\n")
    print("| dtype | what | seconds | GFLOP | GFLOP/s | peak GFLOP/s | of peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.dtypes:
        dtype = DTYPES[name]
        peak = args.peak_gflops or PEAK_GFLOPS[name]
        model = load_checkpoint(args.measure, dtype=dtype)
        cell = model.cell
        vocab = cell.model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (K, B, S), generator=torch.Generator().manual_seed(0))

        def run(count):
            memory = cell.initial_memory(B)
            for k in range(count):
                memory = cell.write_segment(memory, ids[k])
            return memory

        with torch.inference_mode():
            run(min(K, 2))  # warm-up
            best = math.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run(K)
                best = min(best, time.perf_counter() - t0)
        flops = K * B * shapes.segment_flops()
        rate = flops / best / 1e9
        print(f"| {name} | write_segment | {best:.4f} | {flops / 1e9:,.2f} | {rate:,.1f} | {peak:,.0f} | "
              f"{rate / peak:.1%} |")
        n = args.mm_size
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        best = math.inf
        for _ in range(max(args.repeats, 3)):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        rate = 2 * n**3 / best / 1e9
        print(f"| {name} | torch.mm {n} x {n} (reference) | {best:.4f} | {2 * n**3 / 1e9:,.2f} | {rate:,.1f} | "
              f"{peak:,.0f} | {rate / peak:.1%} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1k,4k,16k,128k,1M,2M")
    p.add_argument("--model", action="append", default=[], help="LABEL=CHECKPOINT: add a checkpoint's shapes")
    p.add_argument("--no-defaults", action="store_true", help="only the --model checkpoints")
    p.add_argument("--dense-attention", action="store_true", help="count the full L x L square, not the triangle")
    p.add_argument("--plot", help="FILE.png: FLOPs against length (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="also print the counts as JSON")
    m = p.add_argument_group("--measure: achieved FLOP/s")
    m.add_argument("--measure", metavar="CKPT", help="run CKPT's write_segment and report achieved FLOP/s")
    m.add_argument("--segments", type=int, default=256, help="K segments to run")
    m.add_argument("--batch", type=int, default=1, help="documents side by side")
    m.add_argument("--dtype", default="float32,bfloat16")
    m.add_argument("--peak-gflops", type=float, help="matmul peak (default 190 for float32, 850 for bfloat16)")
    m.add_argument("--mm-size", type=int, default=2048, help="side of the reference torch.mm")
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure:
        args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
        bad = [d for d in args.dtypes if d not in DTYPES]
        if bad:
            p.error(f"--dtype {bad[0]!r}: choose float32 or bfloat16")
        return measure(args)
    lengths = parse_lengths(args.lengths)
    shapes = [] if args.no_defaults else [
        checkpoint_shapes("default model (4 x 128 Llama, segment 128, 8 memory tokens)", str(DEFAULT_MODEL_DIR)),
        gpt2_shapes()]
    for spec in args.model:
        label, _, path = spec.rpartition("=")
        shapes.append(checkpoint_shapes(label or path, path))
    if not shapes:
        p.error("nothing to count: --no-defaults without --model")
    print(f"Forward matmul FLOPs of reading a document ({'dense' if args.dense_attention else 'causal'} attention "
          f"counted)\n")
    for s in shapes:
        print_table(s, lengths, args.dense_attention)
    if args.json:
        print(json.dumps([{"model": s.label, "rows": [{"tokens": n, "full": s.full_flops(n, args.dense_attention),
                                                       "rmt": s.rmt_flops(n, args.dense_attention)}
                                                      for n in lengths]} for s in shapes], indent=1))
    if args.plot:
        plot(args.plot, shapes, lengths, args.dense_attention)
    return 0


if __name__ == "__main__":
    sys.exit(main())
