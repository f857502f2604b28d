"""Can the reasoning memory learn to bind a direction to its place when told to? An experiment, not a feature.

`probe_reasoning.py --decode` found that a MiniLM reasoning model's memory holds both facts' places (linear probes:
100%) but not which of them lies east (or north) of the other (52%, a coin toss between the two): the write keeps a
bag of places, and no reading can answer from that. Training on (more steps, qa4 first through the memory) did not
change it. This script continues a checkpoint on documents of three write segments (book sentences, the two facts
at two different segments) and a final one with the question, with the classifier's loss as in training, plus
(`--weight W`) a linear head on the memory trained to name the place east (or north) of the other and the place west
(or south): a direct gradient for the binding. `--weight 0` is the control: the same steps without the head's loss.
`--writes 2-8` draws the number of write segments per batch (held-out stories then use the largest). The recipe
setting `memory.binding_supervision` is this head inside `rmt train`, for every story whose facts are written.

Reported every `--every` steps, on held-out stories and book sentences: accuracy through the memory when the
question is about the earlier and about the later fact, and the head's own held-out accuracy (is the binding
in the memory?).

    python benchmarks/binding_supervision.py --model runs/minilm-reasoning/final \\
        --train-noise ../shared/data/books/austen-emma.txt --test-noise ../shared/data/books/austen-sense.txt \\
        --weight 1 --steps 300

One thread unless --threads; bfloat16 autocast, as the recipes train.
"""

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rmt_cli.core.segments import build_final_segment, pad_rows, question_ids  # noqa: E402
from rmt_cli.data.sources import read_texts  # noqa: E402
from rmt_cli.data.tasks import reasoning_story, split_sentences  # noqa: E402
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

def sentences_of(paths, tokenizer) -> list[list[int]]:
    ids = [tokenizer.encode(" " + s, add_special_tokens=False)
           for _, text in read_texts(paths) for s in split_sentences(text)]
    return [s for s in ids if 3 < len(s) < 40]


def make_batch(model, sentences, rng: random.Random, size: int, writes_count: int = 3):
    """`size` documents: the facts at two different write segments, book sentences around them, a short tail and
    the question. Returns write segments [writes_count][size, S], the final segment, the answers, the binding targets
    (place east/north of the other, place west/south), and whether the question is about the earlier fact."""
    tok, S, answers = model.tokenizer, model.segment_size, model.cell.answers
    writes, finals, labels, targets, earlier = [[] for _ in range(writes_count)], [], [], [], []
    for _ in range(size):
        story = reasoning_story(rng)
        layout = sorted(rng.sample(range(writes_count), 2))
        facts = [tok.encode(" " + f, add_special_tokens=False) for f in story.facts]
        for k in range(writes_count):
            ids = [t for j, f in enumerate(facts) if layout[j] == k for t in f]
            while len(ids) < S:
                ids += rng.choice(sentences)
            writes[k].append(ids[:S])
        final = build_final_segment(rng.choice(sentences)[:10], question_ids(tok, story.question), [], S)
        finals.append(final.input_ids)
        labels.append(answers.index(story.answer))
        pointing = next(f for f in story.facts if f.split()[3] in ("east", "north"))
        other = next(f for f in story.facts if f is not pointing)
        targets.append([answers.index(pointing.split()[1]), answers.index(other.split()[1])])
        earlier.append(story.facts[0].startswith(f"The {story.answer} "))
    final_ids, final_mask = pad_rows(finals, tok.pad_token_id)
    return ([torch.tensor(w) for w in writes], final_ids, final_mask, torch.tensor(labels), torch.tensor(targets),
            torch.tensor(earlier))


def run(model, head, batch, head_trains_memory: bool = True):
    """The answer logits, and the head's [batch, 2, answers] logits on the memory (detached for the control: the
    head then learns to read the memory, and the memory learns nothing from it)."""
    writes, final_ids, final_mask, labels, targets, _ = batch
    cell = model.cell
    memory = cell.initial_memory(len(labels))
    for ids in writes:
        memory = cell.forward_segment(memory, ids)[0]
    _, logits, _ = cell.forward_segment(memory, final_ids, final_mask, write=False, logits=True)
    read = memory if head_trains_memory else memory.detach()
    bound = head(read.float().flatten(1)).view(len(labels), 2, -1)
    return logits.float(), bound


def evaluate(model, head, batches) -> str:
    right = {True: [0, 0], False: [0, 0]}
    bound_right = bound_all = 0
    model.cell.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in batches:
            logits, bound = run(model, head, batch)
            labels, targets, earlier = batch[3], batch[4], batch[5]
            for ok, first in zip((logits.argmax(-1) == labels).tolist(), earlier.tolist()):
                right[first][0] += ok
                right[first][1] += 1
            bound_right += int((bound.argmax(-1) == targets).sum())
            bound_all += targets.numel()
    model.cell.train()
    share = {k: v[0] / max(v[1], 1) for k, v in right.items()}
    return (f"about the earlier fact {share[True]:.0%}, the later {share[False]:.0%}; the head names the bound "
            f"places {bound_right / bound_all:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an encoder checkpoint trained on reasoning")
    parser.add_argument("--train-noise", required=True, nargs="+")
    parser.add_argument("--test-noise", required=True, nargs="+")
    parser.add_argument("--weight", type=float, default=1.0, help="the binding head's loss weight (0: control)")
    parser.add_argument("--writes", default="3", help="write segments per document: N, or LOW-HIGH drawn per batch "
                        "(held-out stories use HIGH)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--test-stories", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--save", help="write the trained model here at the end (a checkpoint for rmt eval)")
    args = parser.parse_args()
    low, _, high = args.writes.partition("-")
    low, high = int(low), int(high or low)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_checkpoint(args.model)
    if model.cell.kind != "encoder":
        raise SystemExit(f"{args.model}: not an encoder checkpoint")
    model.cell.train()
    hidden = model.cell.memory.shape[-1]
    head = torch.nn.Linear(model.cell.num_mem_tokens * hidden, 2 * len(model.cell.answers))
    train_sentences = sentences_of(args.train_noise, model.tokenizer)
    test_sentences = sentences_of(args.test_noise, model.tokenizer)
    test_rng = random.Random(args.seed + 1)
    tests = [make_batch(model, test_sentences, test_rng, 50, high) for _ in range(args.test_stories // 50)]
    params = list(model.cell.parameters()) + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    print(f"step 0: {evaluate(model, head, tests)}", flush=True)
    for step in range(1, args.steps + 1):
        batch = make_batch(model, train_sentences, rng, args.batch_size, rng.randint(low, high))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, bound = run(model, head, batch, head_trains_memory=args.weight > 0)
        answer_loss = F.cross_entropy(logits, batch[3])
        head_loss = F.cross_entropy(bound.reshape(-1, bound.shape[-1]), batch[4].reshape(-1))
        # The control still fits the head, on a detached memory: its accuracy is then a probe's, not a guess.
        loss = answer_loss + (args.weight or 1.0) * head_loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        if step % args.every == 0:
            print(f"step {step}: loss {float(answer_loss.detach()):.3f}, head {float(head_loss.detach()):.3f}; "
                  f"{evaluate(model, head, tests)}", flush=True)
    if args.save:  # the model alone (the head is this experiment's), with the checkpoint's recipe
        recipe = Path(args.model, "recipe.yaml")
        save_checkpoint(args.save, model.cell, model.tokenizer, model.memory_settings,
                        model.info.get("source", "binding_supervision"),
                        recipe.read_text() if recipe.is_file() else None)
        print(f"saved {args.save}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
