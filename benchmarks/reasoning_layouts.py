"""Where a reasoning model's memory fails: accuracy by where the two facts stand and how many segments are written.

`rmt eval` hides the facts at random sentence boundaries, which mixes four situations; this script makes 100
documents of each (book sentences, the facts at sentence boundaries, a short unfinished tail and the question):

- apart: the facts in two different write segments, each whole (what binding_supervision.py trains on);
- same: both in one write segment;
- split: at least one fact cut by a segment boundary;
- final: the second fact in the question's segment (read in context, the first through the memory).

at 3, 8 and 15 write segments (4, 9 and 16 segments with the question's).

    python benchmarks/reasoning_layouts.py --model runs/minilm-reasoning-extend/final \\
        --noise ../shared/data/books/austen-sense.txt

A share of 100 documents is about ±10 points (95%). One thread unless --threads; bfloat16 autocast.
"""

import argparse
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from binding_supervision import sentences_of  # noqa: E402  (this folder is on sys.path when run as a script)

from rmt_cli.core.segments import build_final_segment, pad_rows, question_ids  # noqa: E402
from rmt_cli.data.tasks import reasoning_story  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint  # noqa: E402

MODES = ("apart", "same", "split", "final")


def make_document(tokenizer, S, sentences, rng, writes, mode):
    """Write segments, final segment ids and the story, drawn until the facts fall as `mode` asks."""
    story = reasoning_story(rng)
    facts = [tokenizer.encode(" " + f, add_special_tokens=False) for f in story.facts]
    for _ in range(1000):
        tail = 0 if mode == "final" else rng.randint(0, 12)
        noise = []
        while sum(map(len, noise)) < writes * S + tail:
            noise.append(rng.choice(sentences))
        # A fact goes before sentence slots[k]; in "final" the second is the tail itself.
        slots = sorted(rng.randint(0, len(noise) - 1) for _ in facts[: 1 if mode == "final" else 2])
        ids, spans = [], []
        for i, sentence in enumerate(noise):
            for k, slot in enumerate(slots):
                if slot == i:
                    spans.append((len(ids), len(ids) + len(facts[k])))
                    ids += facts[k]
            ids += sentence
        ids = ids[: writes * S + tail]
        if mode == "final":
            spans.append((len(ids), len(ids) + len(facts[1])))
            ids += facts[1]
        if any(end > len(ids) for _, end in spans):
            continue
        segments = [(start // S, (end - 1) // S) for start, end in spans]
        split = any(a != b for a, b in segments)
        last = any(b >= writes for _, b in segments)
        same = segments[0][1] == segments[1][0]
        wanted = {"apart": not (split or last or same), "same": same and not (split or last),
                  "split": split and not last, "final": last}[mode]
        if wanted:
            final = build_final_segment(ids[writes * S:], question_ids(tokenizer, story.question), [], S)
            if final.flush is None:
                return [ids[k * S:(k + 1) * S] for k in range(writes)], final.input_ids, story
    raise RuntimeError(f"could not place the facts as {mode!r}")


@torch.no_grad()
def accuracy(model, documents, batch_size: int = 50) -> float:
    cell, tokenizer = model.cell, model.tokenizer
    right = 0
    for start in range(0, len(documents), batch_size):
        batch = documents[start:start + batch_size]
        memory = cell.initial_memory(len(batch))
        for k in range(len(batch[0][0])):
            memory = cell.forward_segment(memory, torch.tensor([d[0][k] for d in batch]))[0]
        ids, mask = pad_rows([d[1] for d in batch], tokenizer.pad_token_id)
        _, logits, _ = cell.forward_segment(memory, ids, mask, write=False, logits=True)
        right += sum(cell.answers[p] == d[2].answer for p, d in zip(logits.argmax(-1).tolist(), batch))
    return right / len(documents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, nargs="+", help="encoder checkpoints trained on reasoning")
    parser.add_argument("--noise", required=True, nargs="+", help="held-out text to hide the facts in")
    parser.add_argument("--writes", default="3,8,15", help="numbers of write segments (default 3,8,15)")
    parser.add_argument("--documents", type=int, default=100, help="per mode and number of writes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.model:
        model = load_checkpoint(path)
        model.cell.eval()
        sentences = sentences_of(args.noise, model.tokenizer)
        for writes in (int(w) for w in args.writes.split(",")):
            row = []
            for m, mode in enumerate(MODES):
                rng = random.Random(args.seed * 1000 + writes * 10 + m)
                docs = [make_document(model.tokenizer, model.segment_size, sentences, rng, writes, mode)
                        for _ in range(args.documents)]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    row.append(f"{mode} {accuracy(model, docs):.0%}")
            print(f"{path}: {writes} write segments: {', '.join(row)}", flush=True)


if __name__ == "__main__":
    main()
