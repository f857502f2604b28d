"""Shared fixtures: a tiny BPE tokenizer and tiny GPT-2 / Llama models built from configs (no downloads)."""

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

ARCHITECTURES = ["gpt2", "llama"]


def _texts(count: int = 300) -> list[str]:
    from rmt_cli.segments import QUESTION_TEMPLATE
    from rmt_cli.tasks import qa1_story, rng_for, synthetic_sentence

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
    from rmt_cli.modeling import train_bpe

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


def tiny_model(architecture: str, tokenizer, seed: int = 0, **overrides):
    build = gpt2_model if architecture == "gpt2" else llama_model
    return build(tokenizer, seed, **overrides)


@pytest.fixture(scope="session")
def make_model(tokenizer):
    """make_model(architecture, seed=0, **config overrides) -> a fresh tiny causal LM (float32)."""

    def make(architecture: str, seed: int = 0, **overrides):
        return tiny_model(architecture, tokenizer, seed, **overrides)

    return make


@pytest.fixture(params=ARCHITECTURES)
def architecture(request):
    return request.param
