"""The associative memory of the `associative` update rule (ARMT: "Associative Recurrent Memory Transformer",
Rodkin et al., 2024).

Every decoder layer l of the wrapped model gets an associative matrix A_l [F, hidden] and a normaliser z_l [F],
written by the memory tokens with a delta rule and read by every token:

    read  (every position, before layer l):  q = phi(W_Q h);   h <- h + (q A_l) / max(q . z_l, eps)
    write (each write-memory token's output w of layer l, after the segment):
          k = phi(W_K w),  v = W_V w,  beta = sigmoid(W_beta w + b)
          A_l <- A_l + beta k^T (v - k A_l)        the value k held is erased as v is written
          z_l <- z_l + beta k (1 - k . z_l)        the same rule for the constant value 1

phi is DPFP (deterministic parameter-free projection, nu = 3: 6 x key_size features, all >= 0) scaled to unit
length, which makes beta a step size: with beta = 1, k holds v alone afterwards and the normalised read of k gives
v back; a beta near 0 writes nothing at all. A segment's memory tokens write in parallel (each computes its error
against the matrix as the segment found it). W_V starts at zero, so a fresh memory never writes (A stays 0) and
its reads add exactly 0: a fresh associative cell is the replace-rule RMT bit for bit until training moves W_V.

The state travels as rows of the width of the memory vectors, after them in the one memory tensor
[batch, rows, width] (so batching, truncated BPTT and the callers of the streaming calls handle it like any
memory): per layer, A_l's entries row by row and then z_l's, zero-padded to whole rows (`join_state`,
`split_state`). The memory file stores the matrices and normalisers as tensors of their own.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as functional
from torch import nn

DPFP_NU = 3  # DPFP's products of each feature with its nu right-hand neighbours: 2 x nu x key_size features
READ_EPS = 1e-5  # the smallest normaliser a read divides by (one no key has touched reads A's zeros)
KEY_SIZE = 16  # W_Q and W_K project a hidden state to this many numbers before DPFP: 96 features


def feature_map(x: torch.Tensor, nu: int = DPFP_NU) -> torch.Tensor:
    """DPFP of the last dimension (2 x nu x its size features, none negative), scaled to unit length."""
    r = torch.cat([functional.relu(x), functional.relu(-x)], dim=-1)
    phi = torch.cat([r * r.roll(shift, dims=-1) for shift in range(1, nu + 1)], dim=-1)
    return phi / phi.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(phi.dtype).tiny)


def feature_count(key_size: int) -> int:
    return 2 * DPFP_NU * key_size


def rows_per_layer(features: int, hidden: int, width: int) -> int:
    """Rows of `width` numbers that hold one layer's A [features, hidden] and z [features]."""
    return -(-(features * hidden + features) // width)


def join_state(matrices: torch.Tensor, norms: torch.Tensor, width: int) -> torch.Tensor:
    """Matrices [..., L, F, H] and normalisers [..., L, F] as rows [..., L x rows_per_layer, width]."""
    *lead, layers, count, hidden = matrices.shape
    rows = rows_per_layer(count, hidden, width)
    flat = torch.cat([matrices.reshape(*lead, layers, count * hidden), norms.to(matrices.dtype)], dim=-1)
    flat = functional.pad(flat, (0, rows * width - flat.shape[-1]))
    return flat.reshape(*lead, layers * rows, width)


def split_state(state: torch.Tensor, layers: int, features: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of join_state: rows [..., R, width] -> matrices [..., L, F, H], normalisers [..., L, F]."""
    *lead, _, width = state.shape
    flat = state.reshape(*lead, layers, rows_per_layer(features, hidden, width) * width)
    size = features * hidden
    return flat[..., :size].reshape(*lead, layers, features, hidden), flat[..., size : size + features]


class AssociativeLayer(nn.Module):
    """The projections with which one decoder layer reads and writes its associative matrix."""

    def __init__(self, hidden: int, key_size: int, generator: torch.Generator):
        super().__init__()
        # Parameters rather than nn.Linear: nn.Linear would draw its initial weights from the global RNG.
        self.query = nn.Parameter(torch.randn(key_size, hidden, generator=generator) / math.sqrt(hidden))
        self.key = nn.Parameter(torch.randn(key_size, hidden, generator=generator) / math.sqrt(hidden))
        self.value = nn.Parameter(torch.zeros(hidden, hidden))  # zero: a fresh memory writes nothing
        self.beta = nn.Parameter(torch.zeros(1, hidden))
        self.beta_bias = nn.Parameter(torch.zeros(1))  # a fresh write strength of sigmoid(0) = 0.5

    def read(self, hidden: torch.Tensor, matrix: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """What every position reads: (q A) / max(q . z, eps), [batch, T, hidden] in the hidden states' dtype."""
        q = feature_map(functional.linear(hidden, self.query))
        numerator = q @ matrix.to(q.dtype)
        denominator = (q @ norm.to(q.dtype).unsqueeze(-1)).clamp(min=READ_EPS)
        return (numerator / denominator).to(hidden.dtype)

    def write(self, matrix: torch.Tensor, norm: torch.Tensor,
              written: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The delta rule for the memory tokens' outputs `written` [batch, m, hidden]: the new (A, z)."""
        dtype = matrix.dtype
        k = feature_map(functional.linear(written, self.key)).to(dtype)
        v = functional.linear(written, self.value).to(dtype)
        beta = torch.sigmoid(functional.linear(written, self.beta, self.beta_bias)).to(dtype)
        step = beta * k  # [batch, m, F]
        matrix = matrix + step.transpose(-1, -2) @ (v - k @ matrix)
        norm = norm + (step * (1 - k @ norm.unsqueeze(-1))).sum(-2)
        return matrix, norm


@dataclass
class _Pass:
    """One run of the base model: the state its layers read, and what its write-memory tokens put out."""

    matrices: torch.Tensor  # [batch, L, F, hidden]
    norms: torch.Tensor  # [batch, L, F]
    write_slots: int  # the last `write_slots` positions are the write memory (0: nothing is written)
    written: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [batch, write_slots, hidden]


class AssociativeMemory(nn.Module):
    """Per-layer associative matrices, hooked into the decoder layers of the wrapped model.

    The hooks act only inside `reading(...)`: outside it (the model run on its own, saved or exported) the
    layers are untouched."""

    def __init__(self, decoder_layers: nn.ModuleList, hidden: int, width: int, key_size: int = KEY_SIZE):
        super().__init__()
        self.hidden, self.width, self.key_size = hidden, width, key_size
        self.features = feature_count(key_size)
        generator = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(AssociativeLayer(hidden, key_size, generator) for _ in decoder_layers)
        self._pass: _Pass | None = None
        # Hooks, not wrappers: the decoder layers stay the wrapped model's own, under their own names (its
        # save_pretrained and state_dict are unchanged). Partials of methods, so a deep copy hooks to its copy.
        for index, layer in enumerate(decoder_layers):
            layer.register_forward_pre_hook(partial(self._before_layer, index), with_kwargs=True)
            layer.register_forward_hook(partial(self._after_layer, index))

    @property
    def rows(self) -> int:
        """Rows of the memory tensor the state takes."""
        return len(self.layers) * rows_per_layer(self.features, self.hidden, self.width)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(layers, features, hidden): the shape of the matrices."""
        return len(self.layers), self.features, self.hidden

    def empty_state(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """No associations yet: zero matrices and normalisers, [batch, rows, width]."""
        return torch.zeros(batch_size, self.rows, self.width, dtype=dtype, device=self.layers[0].value.device)

    @contextmanager
    def reading(self, state: torch.Tensor, write_slots: int):
        """Inside, every decoder layer reads its matrix from `state` [batch, rows, width] and, when
        `write_slots`, records its last `write_slots` outputs for `write`. Yields the pass."""
        matrices, norms = split_state(state, *self.shape)
        self._pass = _Pass(matrices, norms, write_slots)
        try:
            yield self._pass
        finally:
            self._pass = None

    def write(self, done: _Pass) -> torch.Tensor:
        """The state after the memory tokens of a finished pass wrote to every layer's matrix."""
        new = [layer.write(done.matrices[:, i], done.norms[:, i], done.written[i])
               for i, layer in enumerate(self.layers)]
        matrices, norms = torch.stack([a for a, _ in new], dim=1), torch.stack([z for _, z in new], dim=1)
        return join_state(matrices, norms, self.width)

    def _before_layer(self, index: int, module, args, kwargs):
        """Adds the layer's read to its input hidden states (positional in every family; by name, else)."""
        if self._pass is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden = hidden + self.layers[index].read(hidden, self._pass.matrices[:, index], self._pass.norms[:, index])
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _after_layer(self, index: int, module, args, output):
        """Keeps the layer's outputs at the write-memory positions (a tensor, or a tuple's first item)."""
        if self._pass is not None and self._pass.write_slots:
            hidden = output[0] if isinstance(output, tuple) else output
            self._pass.written[index] = hidden[:, hidden.shape[1] - self._pass.write_slots :]
