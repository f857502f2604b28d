"""The associative memory of the `associative` update rule (ARMT: "Associative Recurrent Memory Transformer",
Rodkin et al., 2024).

Every decoder layer l of the wrapped model gets an associative matrix A_l [F, hidden] and a normaliser z_l [F],
written by the memory tokens with a delta rule and read by every token:

    read  (every position, before layer l):  q = phi(W_Q h);   h <- h + s_l (q A_l) / max(q . z_l, 1)
    write (the write-memory tokens' outputs w_1 .. w_m of layer l, after the segment, one after another):
          k = phi(W_K w_i),  v = W_V w_i,  beta = sigmoid(W_beta w_i + b)
          A_l <- A_l + beta k^T (v - k A_l)        the value k held is erased as v is written
          z_l <- z_l + beta k (1 - k . z_l)        the same rule for the constant value 1

phi is DPFP (deterministic parameter-free projection, nu = 3: 6 x key_size features, all >= 0) scaled to unit
length, which makes beta a step size: with beta = 1, k holds v alone afterwards (k A = v, k . z = 1); a beta near
0 writes nothing at all.

The writes are sequential: token i's error (v - k A) is measured against the matrix as tokens 1 .. i-1 left it,
so writing one key twice with beta = 1 leaves exactly the second value. (Written in parallel, each token measured
its error against the matrix as the segment found it; the memory tokens' keys are strongly correlated, so their
corrections added up to several times the error, and z overshot, doubling per segment with alternating sign on a
real model.) Sequentially, each step is a relaxed projection (Kaczmarz) onto {k A = v, k . z = 1}: its linear
part I - beta k^T k has norm <= 1 for a unit k and beta in [0, 1], so a step never amplifies what the matrix
holds, and z moves towards the keys' common solution instead of away from it. The m steps are computed at once
per segment by forward substitution over the tokens' errors (`delta_write`): u_i = beta_i (e_i - sum_{j<i}
(k_i . k_j) u_j) with e_i = [v_i, 1] - k_i [A, z], then [A, z] += sum_i k_i^T u_i (the same numbers as m rank-one
updates, without m copies of the matrices).

The read divides by max(q . z, 1), not by q . z as linear attention does. Under the delta rule k A is already
the value stored under k (k . z = 1 there), so a query on a stored key reads v either way; the division is needed
only where a query overlaps several stored keys whose values add up (q . z > 1), and there it averages them. A
query that overlaps stored keys only weakly (q . z << 1) reads the little they hold, q A, instead of dividing it
by the small overlap: dividing by q . z (ARMT's code adds 1e-5; we clamped at 1e-5) turns a key overlap of 1e-4
into a full-strength read, and makes the read's gradient, and W_V's through it, up to 1 / eps times larger
(W_V's gradient norm was ~1e6 times the rest of the model's on a real model, and one Adam step broke it). With
the denominator >= 1, |read| <= |q| |A| = |A| (q has unit length) and d read / dA is at most q: bounded whatever
z holds, including zero or negative.

Each layer's read is multiplied by a learned scale s that starts at zero, so a fresh memory's reads add exactly
0: a fresh associative cell is the replace-rule RMT (and a fresh gated-associative one the gated RMT) bit for bit
until training moves s. (W_V used to start at zero instead. That fails the moment training starts: Adam's first
step moves every entry of W_V by about the learning rate whatever its gradient, so every value v = W_V w, and with
it every position's read, jumps to ~lr x |w| x hidden in a direction no gradient chose; a C5 upgraded this way
fell from 72% to 9% in two steps. With s = 0 and a random W_V, Adam's first steps move s by ~lr: the reads start
at a thousandth of their size and grow as the loss asks.)

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
READ_FLOOR = 1.0  # the smallest normaliser a read divides by: weak key overlaps read weakly (see above)
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
        self.value = nn.Parameter(torch.randn(hidden, hidden, generator=generator) / math.sqrt(hidden))
        self.beta = nn.Parameter(torch.zeros(1, hidden))
        self.beta_bias = nn.Parameter(torch.zeros(1))  # a fresh write strength of sigmoid(0) = 0.5
        # Zero: a fresh layer reads nothing (see the module's docstring), and the read grows from 0 as it learns.
        self.read_scale = nn.Parameter(torch.zeros(1))

    def read(self, hidden: torch.Tensor, matrix: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """What every position reads: s (q A) / max(q . z, 1), [batch, T, hidden] in the hidden states' dtype."""
        q = feature_map(functional.linear(hidden, self.query))
        numerator = q @ matrix.to(q.dtype)
        denominator = (q @ norm.to(q.dtype).unsqueeze(-1)).clamp(min=READ_FLOOR)
        return (self.read_scale.to(q.dtype) * numerator / denominator).to(hidden.dtype)

    def write_inputs(self, written: torch.Tensor,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys [batch, m, F], values [batch, m, hidden] and strengths [batch, m, 1] of the outputs `written`."""
        k = feature_map(functional.linear(written, self.key)).to(dtype)
        v = functional.linear(written, self.value).to(dtype)
        beta = torch.sigmoid(functional.linear(written, self.beta, self.beta_bias)).to(dtype)
        return k, v, beta

    def write(self, matrix: torch.Tensor, norm: torch.Tensor,
              written: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The delta rule for the memory tokens' outputs `written` [batch, m, hidden], token after token: the new
        (A, z)."""
        return delta_write(matrix, norm, *self.write_inputs(written, matrix.dtype))


def delta_write(matrix: torch.Tensor, norm: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential delta rule over m writes: matrix [..., F, H], norm [..., F], keys [..., m, F], values
    [..., m, H], beta [..., m, 1] (any leading dimensions: batch, layers). The new (matrix, norm).

    Token i writes u_i = beta_i (e_i - sum_{j<i} (k_i . k_j) u_j), where e_i = [v_i, 1] - k_i [A, z] is its error
    against the matrix as the segment found it and the sum is what tokens 1 .. i-1 already wrote under k_i: exactly
    the error against the matrix as they left it. Then [A, z] += sum_i k_i^T u_i. Computed in float32 at least
    (a bfloat16 state is rounded once per segment, not once per token), returned in the matrix's dtype."""
    dtype = matrix.dtype
    work = torch.promote_types(dtype, torch.float32)
    matrix, norm, keys, values, beta = (t.to(work) for t in (matrix, norm, keys, values, beta))
    joint = torch.cat([matrix, norm.unsqueeze(-1)], dim=-1)  # z is A's column for the constant value 1
    targets = torch.cat([values, torch.ones_like(values[..., :1])], dim=-1)
    errors = targets - keys @ joint  # [..., m, H + 1]
    overlaps = keys @ keys.transpose(-1, -2)  # [..., m, m]
    steps: list[torch.Tensor] = []
    for i in range(keys.shape[-2]):
        error = errors[..., i : i + 1, :]
        if steps:
            error = error - overlaps[..., i : i + 1, :i] @ torch.cat(steps, dim=-2)
        steps.append(beta[..., i : i + 1, :] * error)
    joint = (joint + keys.transpose(-1, -2) @ torch.cat(steps, dim=-2)).to(dtype)
    return joint[..., :-1], joint[..., -1]


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
        """The state after the memory tokens of a finished pass wrote to every layer's matrix (one sequential
        delta rule over the tokens for all layers and the whole batch at once)."""
        dtype = done.matrices.dtype
        inputs = [layer.write_inputs(done.written[i], dtype) for i, layer in enumerate(self.layers)]
        keys, values, beta = (torch.stack(parts, dim=1) for parts in zip(*inputs, strict=True))  # [batch, L, m, .]
        matrices, norms = delta_write(done.matrices, done.norms, keys, values, beta)
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
