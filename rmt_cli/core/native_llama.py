"""A native Llama decoder for inference: the same numbers as transformers' Llama, without its machinery.

Why: rmt's inference paths (ingest, ask, eval) run one small model many times. Loading it through transformers
imports its modeling stack (torch._dynamo, torch.distributed.tensor, sympy, accelerate: seconds before the first
token), and each forward goes through its mask factories, output capturing and cache classes, which cost more
than the arithmetic of a 128-wide model. This module is the whole model, top to bottom, in plain PyTorch:

    token embedding -> N x [RMSNorm -> attention (rotary, grouped-query, causal + padding mask) -> residual
                            RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head (tied or not)

It is a drop-in for what `memory.MemoryCell` calls on a transformers model (`base_model(inputs_embeds=...,
attention_mask=..., position_ids=..., use_cache=False).last_hidden_state`, `get_input_embeddings()`,
`get_output_embeddings()`, `config`), with transformers' parameter names, so a state dict, and so a fingerprint,
is the same under both. Each operation is done as transformers 5 does it (float32 RMSNorm, rotary frequencies from
a buffer that follows the model's dtype, `scaled_dot_product_attention` with the same mask and kernel choices), so
float32 results agree to float rounding (tests/test_native_engine.py checks it against transformers).

Only configs that mean exactly this model are run (`unsupported`); any other falls back to transformers
(`storage.engine` decides). Training never runs here: transformers' model is the one that learns and saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# LlamaConfig's defaults for the keys a native config.json may set, as transformers 5 holds them (to_dict). The
# fingerprint counts a setting by how it differs from the family's defaults, so these must be transformers' own:
# tests/test_native_engine.py checks them against the installed LlamaConfig.
DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
    "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-06, "use_cache": True,
    "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "pretraining_tp": 1, "tie_word_embeddings": False,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "attention_bias": False,
    "attention_dropout": 0.0, "mlp_bias": False,
}
# Keys that say nothing about the computation (where the file came from, which dtype wrote it, runtime switches at
# their defaults), with what they may hold (`matches`): allowed, and kept out of the model.
_DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")
BOOKKEEPING = {"_name_or_path": (str,), "transformers_version": (str,), "torch_dtype": _DTYPE_NAMES,
               "dtype": _DTYPE_NAMES,
               "architectures": (list,), "output_attentions": (False,), "output_hidden_states": (False,),
               "return_dict": (True,)}
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "max_position_embeddings")
_OPTIONAL_POSITIVE_INTS = ("num_key_value_heads", "head_dim")
_TOKEN_IDS = ("pad_token_id", "bos_token_id")
_FIXED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}


def unsupported(config: dict) -> str | None:
    """Why the native engine cannot run a config.json (read as plain JSON), or None when it runs it exactly.

    Strict on purpose: a key it does not know, a value of another type (an int where transformers keeps a float
    would print differently in the fingerprint), rope scaling, biases, another activation: each is a reason, and the
    checkpoint runs on transformers instead.
    """
    if config.get("model_type") != "llama":
        return f"model_type is {config.get('model_type')!r}, not 'llama'"
    for key, value in config.items():
        if key == "model_type":
            continue
        if key in BOOKKEEPING:
            if not matches(value, BOOKKEEPING[key]):
                return f"{key} is {value!r}"
            continue
        if key not in DEFAULTS:
            return f"{key} is a setting the native engine does not know"
        if not _plain_value(key, value):
            return f"{key} is {value!r}"
    settings = {**DEFAULTS, **config}
    # A padding id past the vocabulary is one transformers refuses (its embedding's padding_idx): the checkpoint goes
    # there to be refused, in transformers' words (a native load had run it)
    if settings["pad_token_id"] is not None and settings["pad_token_id"] >= settings["vocab_size"]:
        return f"pad_token_id {settings['pad_token_id']} is past the vocabulary of {settings['vocab_size']}"
    heads = settings["num_attention_heads"]
    kv_heads = settings["num_key_value_heads"] or heads
    if settings["hidden_size"] % heads or heads % kv_heads:
        return (f"{heads} attention heads do not divide hidden_size {settings['hidden_size']}, or are not a multiple "
                f"of {kv_heads} key-value heads")
    if (settings["head_dim"] or settings["hidden_size"] // heads) % 2:
        return "head_dim is odd (rotary embeddings rotate pairs)"
    return None


def matches(value, allowed: tuple) -> bool:
    """Whether a value read from JSON is one of `allowed`: a type (any value of it), or a value of its very type
    (0 is not False, nor 1.0 a 1)."""
    return any(isinstance(value, a) if isinstance(a, type) else type(value) is type(a) and value == a
               for a in allowed)


def _plain_value(key: str, value) -> bool:
    """Whether `value` is one the native engine reproduces for `key`, in the JSON type transformers keeps."""
    def integer(v) -> bool:
        return type(v) is int

    if key in _FIXED:
        return matches(value, (_FIXED[key],))
    if key in _POSITIVE_INTS:
        return integer(value) and value > 0
    if key in _OPTIONAL_POSITIVE_INTS:
        return value is None or integer(value) and value > 0
    if key in _TOKEN_IDS:
        return value is None or integer(value) and value >= 0
    if key == "eos_token_id":
        return value is None or integer(value) and value >= 0 or \
            isinstance(value, list) and all(integer(v) and v >= 0 for v in value)
    if key == "rms_norm_eps":
        return type(value) is float and math.isfinite(value) and value > 0
    if key == "initializer_range":  # unused at inference
        return type(value) is float and 0 <= value <= 1
    if key == "attention_dropout":  # unused at inference; any rate transformers would take
        return type(value) in (int, float) and 0 <= value <= 1
    if key in ("use_cache", "tie_word_embeddings"):
        return type(value) is bool
    if key == "rope_parameters":  # plain rotary embeddings: a base (kept as written, int or float), no scaling
        return value is None or isinstance(value, dict) and set(value) == {"rope_theta", "rope_type"} and \
            value["rope_type"] == "default" and type(value["rope_theta"]) in (int, float) and \
            math.isfinite(value["rope_theta"]) and value["rope_theta"] > 0
    return False


class LlamaSettings:
    """config.json of a qualifying checkpoint, as transformers' LlamaConfig would hold it: attributes for the
    model, `to_dict()` for the fingerprint, and `LlamaSettings()` the family's defaults (what
    `fingerprint.architecture_settings` compares against)."""

    model_type = "llama"

    def __init__(self, **config):
        values = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
        # What LlamaConfig fills in when a value is left out (or null)
        values["rope_parameters"] = values["rope_parameters"] or dict(DEFAULTS["rope_parameters"])
        values["num_key_value_heads"] = values["num_key_value_heads"] or values["num_attention_heads"]
        values["head_dim"] = values["head_dim"] or values["hidden_size"] // values["num_attention_heads"]
        self._values = values
        for key, value in values.items():
            setattr(self, key, value)

    def to_dict(self) -> dict:
        return {**self._values, "model_type": self.model_type}


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 whatever the model's dtype."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        normed = x.to(torch.float32)
        normed = normed * torch.rsqrt(normed.square().mean(-1, keepdim=True).add_(self.eps))
        if self.weight.dtype != dtype or torch.is_grad_enabled():  # the wider dtype, as transformers'; autograd
            return self.weight * normed.to(dtype)
        # In place on the fresh product: the same numbers as `weight * x`, one allocation fewer (ingest's hot path)
        return normed.to(dtype).mul_(self.weight)


class Rotary(nn.Module):
    """Rotary position embeddings: the cosines and sines of position x frequency. The frequencies are a buffer (not
    saved), so casting the model casts them, as it does transformers' (a bf16 model rotates by bf16 frequencies)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        # On the CPU always (the model moves later): the meta device's arange would import torch._dynamo
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim
        self.inv_freq = nn.Buffer(1.0 / (base ** exponents), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Attention(nn.Module):
    """Grouped-query self-attention: `heads` query heads share `kv_heads` key-value heads."""

    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(s.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, s.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask: torch.Tensor | None, cache: list | None = None,
                queries: int | None = None) -> torch.Tensor:
        """`mask` None: causal over the whole sequence (or a single new token attending to all of `cache`);
        else a boolean [batch, 1, query, key] mask of what each query may attend to. `cache`, when given, is this
        layer's [keys, values] so far, extended in place. `queries`: only the last `queries` positions ask (keys
        and values still come from all), and the output holds just those rows; `mask` is then theirs."""
        batch, length, _ = x.shape
        asking = length if queries is None else queries
        q = self.q_proj(x[:, length - asking :]).view(batch, asking, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = _rotate(q, cos[..., length - asking :, :], sin[..., length - asking :, :]), _rotate(k, cos, sin)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=-2), torch.cat([cache[1], v], dim=-2)
            cache[:] = [k, v]
        groups = self.heads // self.kv_heads
        options = {}
        if groups > 1:
            if mask is None:  # SDPA shares the key-value heads itself (transformers' choice without a mask)
                options["enable_gqa"] = True
            else:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5,
                                             is_causal=mask is None and asking > 1, **options)
        return self.o_proj(out.transpose(1, 2).reshape(batch, asking, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # autograd needs the activations as they were
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # In place on the projections' fresh outputs: the same numbers, two allocations fewer (~8% of ingest)
        return self.down_proj(F.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.self_attn = Attention(s)
        self.mlp = MLP(s)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache=None, queries: int | None = None):
        """`queries`: the output is only for the last `queries` positions (see Attention)."""
        kept = x if queries is None else x[:, x.shape[1] - queries :]
        x = kept + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, queries)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class DecoderOutput:
    last_hidden_state: torch.Tensor


class Decoder(nn.Module):
    """The model without its head (transformers' LlamaModel): what `base_model` is."""

    def __init__(self, s: LlamaSettings):
        super().__init__()
        # Left uninitialised (the weights come from model.safetensors): a normal_ on the meta device, where the
        # model is built to be measured, would import torch._dynamo (seconds)
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size, _weight=torch.empty(s.vocab_size, s.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(s) for _ in range(s.num_hidden_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.rotary_emb = Rotary(s.head_dim, s.rope_parameters["rope_theta"])

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, use_cache: bool = False,
                cache: list[list] | None = None, last: int | None = None) -> DecoderOutput:
        """Hidden states after the final norm. `attention_mask` [batch, length]: 0 marks padding, which no token
        attends to. `cache` (one list per layer, empty at first): keys and values kept for decoding (`generate`);
        `use_cache` is accepted for transformers' call surface and means nothing here. `last`: the hidden states
        of only the last `last` positions are wanted (a memory write): the final layer computes queries,
        attention output and MLP for those rows alone, since no other row's output is read."""
        batch, length, _ = inputs_embeds.shape
        past = cache[0][0].shape[-2] if cache and cache[0] else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=inputs_embeds.device).unsqueeze(0)
        cos, sin = self.rotary_emb(position_ids, inputs_embeds.dtype)
        mask = _mask(attention_mask, length)
        x = inputs_embeds
        rows_only = last is not None and last < length and cache is None
        for i, layer in enumerate(self.layers[:-1] if rows_only else self.layers):
            x = layer(x, cos, sin, mask, None if cache is None else cache[i])
        if rows_only:
            x = self.layers[-1](x, cos, sin, _last_rows_mask(mask, last, length, x.device), queries=last)
        return DecoderOutput(self.norm(x))


def _mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The boolean attention mask: None (plain causal, the fast kernel) unless some entry is padding; then causal
    and not padding, [batch, 1, length, length]. A query that may attend to nothing (left padding at position 0)
    gets zeros from SDPA, as under transformers."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


def _last_rows_mask(mask: torch.Tensor | None, last: int, length: int, device) -> torch.Tensor:
    """The mask of the last `last` queries over all `length` keys: the rows of the full mask (causal, so each sees
    every key up to its own position). A boolean mask even without padding, since SDPA's `is_causal` aligns a short
    query block with the first keys, not the last."""
    if mask is not None:
        return mask[:, :, length - last :]
    return torch.ones(last, length, dtype=torch.bool, device=device).tril(length - last)[None, None]


class NativeLlama(nn.Module):
    """A Llama causal LM (transformers' LlamaForCausalLM, for inference): `model` the decoder, `lm_head` the head
    (sharing the embedding's weight when tied)."""

    engine = "native"  # what `ask` checks to decode with `generate` below rather than transformers' own

    def __init__(self, settings: LlamaSettings):
        super().__init__()
        self.config = settings
        self.model = Decoder(settings)
        self.lm_head = nn.Linear(settings.hidden_size, settings.vocab_size, bias=False)
        if settings.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def base_model(self) -> Decoder:
        return self.model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def weight_names(self) -> set[str]:
        """The tensors model.safetensors holds for this model (a tied head is stored once, as the embedding)."""
        names = set(self.state_dict())
        return names - {"lm_head.weight"} if self.config.tie_word_embeddings else names

    @torch.inference_mode()
    def generate(self, inputs_embeds: torch.Tensor, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
                 choose=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode after `inputs_embeds` with a key-value cache, as transformers' `generate()` does greedily:
        (tokens [batch, steps], the float32 logits of each step). `choose(None, scores)`, where given, replaces
        each step's scores (a logits processor; `ask` samples with one), and is called on every row while any row
        is unfinished, as transformers calls it. A finished row (it gave `eos_token_id`) continues with
        `pad_token_id`; decoding stops when every row has finished, or after `max_new_tokens` steps."""
        batch = inputs_embeds.shape[0]
        cache = [[] for _ in self.model.layers]
        unfinished = torch.ones(batch, dtype=torch.long, device=inputs_embeds.device)
        tokens, logits = [], []
        step_input = inputs_embeds
        for _ in range(max_new_tokens):
            hidden = self.model(step_input, cache=cache).last_hidden_state
            step_logits = self.lm_head(hidden[:, -1:]).squeeze(1).to(dtype=torch.float32, copy=True)
            logits.append(step_logits)
            scores = choose(None, step_logits) if choose is not None else step_logits
            token = scores.argmax(-1) * unfinished + pad_token_id * (1 - unfinished)
            tokens.append(token)
            unfinished = unfinished & (token != eos_token_id).long()
            if not bool(unfinished.any()):
                break
            step_input = self.model.embed_tokens(token[:, None])
        return torch.stack(tokens, dim=1), logits


def load_weights(model: NativeLlama, tensors: dict[str, torch.Tensor]) -> dict:
    """Copy model.safetensors' tensors (as float32) into `model`; the report transformers' `from_pretrained` gives
    (missing, mismatched and unexpected weights), which the caller turns into its one-line errors."""
    expected = model.weight_names()
    params = model.state_dict()
    mismatched = [(name, tuple(tensors[name].shape), tuple(params[name].shape))
                  for name in sorted(expected & set(tensors)) if tensors[name].shape != params[name].shape]
    report = {"missing_keys": expected - set(tensors), "unexpected_keys": set(tensors) - expected,
              "mismatched_keys": mismatched}
    if not any(report.values()):
        with torch.no_grad():
            for name in expected:
                params[name].copy_(tensors[name].to(torch.float32))
    return report
