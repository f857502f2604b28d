"""Shared fixtures: a tiny BPE tokenizer and tiny causal LMs of seven families built from configs (no downloads)."""

import os

# Before anything imports transformers or datasets: never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

ARCHITECTURES = ["gpt2", "llama"]  # what most tests run on
# The model families the README lists as supported: tests/test_architectures.py runs the memory cell on each.
FAMILIES = ["gpt2", "llama", "qwen2", "mistral", "gemma2", "phi3", "opt"]


def _texts(count: int = 300) -> list[str]:
    from rmt_cli.core.segments import QUESTION_TEMPLATE
    from rmt_cli.data.tasks import qa1_story, rng_for, synthetic_sentence

    out = []
    for i in range(count):
        rng = rng_for(123, i, "conftest")
        story = qa1_story(rng)
        noise = " ".join(synthetic_sentence(rng) for _ in range(4))
        out.append(" ".join(story.facts) + " " + noise + QUESTION_TEMPLATE.format(question=story.question)
                   + " " + story.answer)
    return out


@pytest.fixture(scope="session")
def tokenizer():
    from rmt_cli.storage.modeling import train_bpe

    return train_bpe(_texts(), 400)


def gpt2_model(tokenizer, seed: int = 0, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = dict(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.update(overrides)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**config))


def llama_model(tokenizer, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    config.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**config))


# Tiny configs of the other families, in each family's own settings (hidden 32, 2 layers, dropout off). Each names
# (config class, model class, settings); anything the family would otherwise take from its large default
# (head_dim 256, a vocabulary of 32k, pad id 32000) is set here.
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=128)
_TINY = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_DECODER)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_DECODER, head_dim=16)),  # sliding window 4096 kept
    # Gemma-2: embeddings scaled by sqrt(hidden), alternating sliding / full attention, attention soft-capping and
    # the final logit soft-capping (30.0) all kept at the family's defaults.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_DECODER, head_dim=16, query_pre_attn_scalar=16)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_DECODER)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                                word_embed_proj_dim=32, max_position_embeddings=128, dropout=0.0,
                                                attention_dropout=0.0)),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(_DECODER)),  # logit_scale 0.0625: refused by the cell
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(_DECODER)),  # logits_scaling 1.0: neutral
}


def family_model(family: str, tokenizer, seed: int = 0, **overrides):
    """A tiny causal LM of `family` (any key of _TINY), with config overrides."""
    import transformers

    config_class, model_class, settings = _TINY[family]
    config = dict(settings, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.update(overrides)
    torch.manual_seed(seed)
    return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))


def tiny_model(architecture: str, tokenizer, seed: int = 0, **overrides):
    if architecture == "gpt2":
        return gpt2_model(tokenizer, seed, **overrides)
    if architecture == "llama":
        return llama_model(tokenizer, seed, **overrides)
    return family_model(architecture, tokenizer, seed, **overrides)


@pytest.fixture(scope="session")
def make_model(tokenizer):
    """make_model(architecture, seed=0, **config overrides) -> a fresh tiny causal LM (float32); `architecture` is
    one of FAMILIES (or cohere / granite)."""

    def make(architecture: str, seed: int = 0, **overrides):
        return tiny_model(architecture, tokenizer, seed, **overrides)

    return make


@pytest.fixture(params=ARCHITECTURES)
def architecture(request):
    return request.param


# --- the CLI, as tests drive it ------------------------------------------------------------------------------

# The smallest recipe `rmt train` accepts: validation and refusals are tested on it without real training.
TINY_RECIPE = {"tokenizer": {"kind": "bpe", "vocab_size": 300, "training_texts": 20},
               "model": {"architecture": "gpt2", "config": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
               "memory": {"num_mem_tokens": 2, "segment_size": 48},
               "curriculum": [{"segments": 1, "steps": 1}], "eval": {"samples": 1}}


def run_cli(args, input=None):
    """`rmt ARGS` in-process; whatever happens, never a traceback."""
    from typer.testing import CliRunner

    from rmt_cli.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert "Traceback" not in r.stderr + r.stdout
    return r


def one_error_line(r, code: int, *words: str) -> None:
    """Exit `code` with exactly one `error:` line on stderr, holding each of `words`."""
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code, (r.exit_code, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# --- a saved checkpoint ---------------------------------------------------------------------------------------

TINY_SEGMENT = 24  # the segment size of `checkpoint`: short, so a few sentences make several segments


def save_tiny_checkpoint(path, tokenizer, make_model, seed: int = 0):
    """A gpt2 RMT checkpoint folder (2 memory tokens, segments of TINY_SEGMENT) written by rmt itself."""
    from rmt_cli.core.memory import MemoryCell
    from rmt_cli.storage.checkpoint import save_checkpoint
    from rmt_cli.storage.recipe import MemorySpec

    cell = MemoryCell(make_model("gpt2", seed=seed), num_mem_tokens=2)
    save_checkpoint(path, cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=TINY_SEGMENT), "test")
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer, make_model):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", tokenizer, make_model)


def ctrl_c_as_under_a_terminal() -> None:
    """For `Popen(preexec_fn=...)` in the Ctrl-C tests: SIGINT at its default in the child, as under a terminal. A
    shell starts a background job (`pytest ... &` in a script) with SIGINT ignored, and rmt rightly keeps an
    ignored signal ignored: the child would then never stop, and the test wait in vain."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


MEMFILE_TEXT = "Mary went to the kitchen. Daniel moved to the garden. " * 4 + "Sandra"


@pytest.fixture(scope="module")
def memfile(tmp_path_factory, checkpoint):
    """A memory file of the tiny checkpoint, ingested from MEMFILE_TEXT."""
    from rmt_cli.commands.ingest import IngestJob, ingest
    from rmt_cli.storage.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("mem")
    (folder / "doc.txt").write_text(MEMFILE_TEXT)
    [result] = ingest([IngestJob([str(folder / "doc.txt")], folder / "m.st")], load_checkpoint(checkpoint))
    assert result.error is None
    return folder / "m.st"


def batched_and_single_ingests(tmp_path, model, texts):
    """Each text ingested in one batch with the others and alone: the pairs of memory states (batched, single)."""
    from rmt_cli.commands.ingest import IngestJob, ingest
    from rmt_cli.storage.memfile import load_memory

    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"d{i}.txt")
        paths[-1].write_text(text)
    ingest([IngestJob([str(p)], tmp_path / f"batch{i}.st") for i, p in enumerate(paths)], model,
           batch_size=len(paths))
    for i, p in enumerate(paths):
        ingest([IngestJob([str(p)], tmp_path / f"single{i}.st")], model, batch_size=1)
    return [(load_memory(tmp_path / f"batch{i}.st"), load_memory(tmp_path / f"single{i}.st"))
            for i in range(len(paths))]
