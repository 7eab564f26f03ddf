"""Analytic FLOPs of the retained forward, and the per-layer kept lengths M_ℓ for a FLOPs budget
``budget.flops = F``: the retained forward may cost at most F times the dense forward (ToP, Li et
al., KDD 2023, states its budget the same way and enforces it with a Lagrangian).

Convention (that of ``torch.utils.flop_counter.FlopCounterMode``): only matrix products count, a
(m × k)·(k × n) product being 2·m·k·n FLOPs; elementwise work (softmax, LayerNorm, GELU, biases, the
gates' relaxation) and the top-M selection are not counted. Counts are per sequence, on its own
valid length (padding is an implementation matter, not the sequence's compute).

With d the hidden size, d_a = heads × head size the attention width (d for BERT), d_ff the FFN size
and m_ff its number of d × d_ff matrices (2; 3 for a gated FFN), a transformer layer on n tokens costs

    layer(n) = projections(n) + attention(n)
    projections(n) = 8·n·d·d_a + 2·m_ff·n·d·d_ff            (Q, K, V, output; the FFN)   — linear in n
    attention(n)   = 4·n²·d_a                               (QKᵀ and A·V)                — quadratic in n

and a gate (:class:`retention.gate.ContextScorer`, hidden h) scoring the n tokens that enter it

    gate(n) = 2·n·d·h + 2·n·h + context(n),   context = 2·d·h (mean), 2·n·d·h + 2·n²·d (running), 0 (none).

The retained forward with gates at layers ℓ_1 < … < ℓ_K keeping M_1 ≥ … ≥ M_K tokens (cumulative)
runs layer ℓ on n_ℓ = M_k for the last gate ℓ_k ≤ ℓ (T_valid before the first gate):

    forward(M) = Σ_ℓ layer(n_ℓ) + Σ_k gate(M_{k−1})   (M_0 = T_valid),    dense = L·layer(T_valid),

so the budget counts the gates' scoring too: it bounds everything the retained forward multiplies.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .budget import Budget, keep_counts

__all__ = ["EncoderShape", "encoder_shape", "projection_flops", "attention_flops", "layer_flops", "gate_flops",
           "layer_lengths", "forward_flops", "dense_flops", "flops_fraction", "flops_keep_counts",
           "host_flops_counts", "kept_lengths_for_flops"]

# Bisection steps over the schedule's scale factor c: c is found to 2^-24 of its range, finer
# than one token's step of M_ℓ = ⌈c·r_ℓ·T⌉ below T = 10^6 (the fill makes the integers exact anyway).
_SCALE_STEPS = 24


@dataclass(frozen=True)
class EncoderShape:
    """The sizes the FLOPs depend on. ``gate_hidden`` 0: the gates' scoring is not counted."""

    num_layers: int
    hidden: int
    intermediate: int
    attention_dim: int
    ffn_matrices: int = 2
    gate_layers: tuple[int, ...] = ()
    gate_hidden: int = 0
    gate_context: str = "mean"


def encoder_shape(config, gate_layers: Sequence[int] = (), gate_hidden: int = 0, gate_context: str = "mean") -> EncoderShape:
    """The :class:`EncoderShape` of a Hugging Face encoder config (BERT family, DistilBERT, BART's
    and T5's encoder stacks); a ``ValueError`` for another model type."""
    kind = getattr(config, "model_type", None)
    if kind in ("bert", "roberta", "xlm-roberta"):
        d, layers, ff, attn, mats = (config.hidden_size, config.num_hidden_layers, config.intermediate_size,
                                     config.hidden_size, 2)
    elif kind == "distilbert":
        d, layers, ff, attn, mats = config.dim, config.n_layers, config.hidden_dim, config.dim, 2
    elif kind == "bart":
        d, layers, ff, attn, mats = config.d_model, config.encoder_layers, config.encoder_ffn_dim, config.d_model, 2
    elif kind == "t5":
        gated = bool(getattr(config, "is_gated_act", False))
        d, layers, ff, attn, mats = config.d_model, config.num_layers, config.d_ff, config.num_heads * config.d_kv, 3 if gated else 2
    else:
        raise ValueError(f"FLOPs of model type {kind!r} are not known; known: bert, roberta, xlm-roberta, distilbert, bart, t5")
    return EncoderShape(int(layers), int(d), int(ff), int(attn), mats, tuple(int(g) for g in gate_layers),
                        int(gate_hidden), str(gate_context))


def projection_flops(n, shape: EncoderShape):
    """projections(n) = 8·n·d·d_a + 2·m_ff·n·d·d_ff: the Q, K, V and output projections and the FFN
    on n tokens (linear in n). ``n``: a number or a tensor of lengths (float for expected lengths)."""
    return n * (8 * shape.hidden * shape.attention_dim + 2 * shape.ffn_matrices * shape.hidden * shape.intermediate)


def attention_flops(n, shape: EncoderShape):
    """attention(n) = 4·n²·d_a: the scores QKᵀ (2·n²·d_a) and their product with V (2·n²·d_a)."""
    return 4 * shape.attention_dim * n * n


def layer_flops(n, shape: EncoderShape):
    """layer(n) = projections(n) + attention(n): one transformer layer on n tokens."""
    return projection_flops(n, shape) + attention_flops(n, shape)


def gate_flops(n, shape: EncoderShape):
    """gate(n) = 2·n·d·h + 2·n·h + context(n): a :class:`retention.gate.ContextScorer` scoring n tokens
    (W, v, and U on the context: once per sequence for the mean context, per token for the running
    one, whose decay-matrix product adds 2·n²·d). 0 when ``gate_hidden`` is 0."""
    d, h = shape.hidden, shape.gate_hidden
    if h == 0:
        return 0 * n
    scoring = 2 * n * d * h + 2 * n * h
    if shape.gate_context == "mean":
        return scoring + 2 * d * h
    if shape.gate_context == "running":
        return scoring + 2 * n * d * h + 2 * n * n * d
    return scoring


def layer_lengths(counts: torch.Tensor, n_valid: torch.Tensor, shape: EncoderShape) -> torch.Tensor:
    """(L, B) the length each layer runs on: n_ℓ = M_k for the last gate ℓ_k ≤ ℓ, T_valid before the
    first gate. ``counts`` (K, B): M_k per gate (cumulative); ``n_valid`` (B,)."""
    rows, k = [], -1
    for layer in range(shape.num_layers):
        while k + 1 < len(shape.gate_layers) and shape.gate_layers[k + 1] <= layer:
            k += 1
        rows.append(n_valid.to(counts.dtype) if k < 0 else counts[k])
    return torch.stack(rows)


def forward_flops(counts: torch.Tensor, n_valid: torch.Tensor, shape: EncoderShape) -> torch.Tensor:
    """(B,) forward(M) = Σ_ℓ layer(n_ℓ) + Σ_k gate(M_{k−1}), M_0 = T_valid, in float64 (exact
    integers up to 2^53). ``counts`` (K, B) may be fractional (expected lengths), and differentiable."""
    counts = counts.to(torch.float64)
    n = n_valid.to(torch.float64)
    entering = torch.cat([n.unsqueeze(0), counts[:-1]]) if len(counts) else counts
    return layer_flops(layer_lengths(counts, n, shape), shape).sum(0) + gate_flops(entering, shape).sum(0)


def dense_flops(n_valid: torch.Tensor, shape: EncoderShape) -> torch.Tensor:
    """(B,) dense = L·layer(T_valid): the stock forward, no gates, in float64."""
    return shape.num_layers * layer_flops(n_valid.to(torch.float64), shape)


def flops_fraction(counts: torch.Tensor, n_valid: torch.Tensor, shape: EncoderShape) -> torch.Tensor:
    """(B,) forward(M) / dense per sequence (float64; differentiable in ``counts``)."""
    return forward_flops(counts, n_valid, shape) / dense_flops(n_valid, shape).clamp_min(1.0)


def _scaled_counts(scale: torch.Tensor, ratios: torch.Tensor, n_valid: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """(K, B) M_k(c) = min_{j ≤ k} clamp(⌈c·r_j·T_valid⌉, floor, T_valid): the schedule scaled by c."""
    m = torch.stack([keep_counts(scale * r, n_valid, floor) for r in ratios])
    return torch.cummin(m, dim=0).values


def flops_keep_counts(budget: Budget, shape: EncoderShape, n_valid: torch.Tensor, n_protected: torch.Tensor,
                      max_length: int | None = None) -> torch.Tensor:
    """(K, B) the integer kept counts M_k per gate and sequence for ``budget.flops = F``:

    1. the schedule's shape: r_k = ``budget.layer_ratio(k)`` (the ratio budget's per-gate ρ_k), scaled
       by one factor c per sequence, M_k(c) = min_{j ≤ k} clamp(⌈c·r_j·T_valid⌉, m, T_valid), with the
       floor m = max(n_protected, 1) (protected tokens are always kept, a sequence never empties);
    2. c = the largest value in [0, 1/max_k r_k] with forward(M(c)) ≤ F·dense (bisection: forward is
       non-decreasing in c);
    3. the integers filled up, gate by gate from the first: M_k grows by the largest Δ with
       forward ≤ F·dense and M_k + Δ ≤ M_{k−1} (T_valid for the first gate). Afterwards no single
       M_k can grow by one token without exceeding F·dense or M_{k−1} (a later fill only spends
       budget, and an earlier gate's cap is final when it is filled).

    So forward(M) ≤ F·dense exactly, within one token of it where the integers allow; where even
    the floor exceeds F·dense (very short sequences, or dense layers before the first gate that
    already cost more than F) every gate keeps the floor, the cheapest forward there is.
    ``max_length`` bounds T_valid (the padded length; default: read from ``n_valid``) and sets the
    fill's bisection steps, so a device caller passes it and nothing is read back."""
    if budget.flops is None:
        raise ValueError("flops_keep_counts needs a budget with flops set")
    n = n_valid.to(torch.long)
    floor = torch.minimum(torch.clamp(n_protected.to(torch.long), min=1), n)
    ratios = torch.stack([budget.layer_ratio(k, n) for k in range(budget.num_layers)])  # (K, B) float64
    limit = budget.flops * dense_flops(n, shape)
    lo = torch.zeros_like(ratios[0])
    hi = 1.0 / ratios.amax(0)
    for _ in range(_SCALE_STEPS):
        mid = (lo + hi) / 2
        fits = forward_flops(_scaled_counts(mid, ratios, n, floor), n, shape) <= limit
        lo, hi = torch.where(fits, mid, lo), torch.where(fits, hi, mid)
    top_fits = forward_flops(_scaled_counts(hi, ratios, n, floor), n, shape) <= limit
    counts = _scaled_counts(torch.where(top_fits, hi, lo), ratios, n, floor)
    fits_at_all = forward_flops(counts, n, shape) <= limit
    t = int(n.max()) if max_length is None else int(max_length)
    steps = max(1, math.ceil(math.log2(t + 1)) + 1)
    for k in range(len(counts)):
        cap = n if k == 0 else counts[k - 1]
        lo_d, hi_d = torch.zeros_like(n), torch.where(fits_at_all, cap - counts[k], 0)
        for _ in range(steps):
            mid = (lo_d + hi_d + 1) // 2
            trial = counts.clone()
            trial[k] = counts[k] + mid
            ok = forward_flops(trial, n, shape) <= limit
            lo_d, hi_d = torch.where(ok, mid, lo_d), torch.where(ok, hi_d, mid - 1)
        counts[k] = counts[k] + lo_d
    return counts


@functools.lru_cache(maxsize=1 << 16)
def _sequence_counts(budget: Budget, shape: EncoderShape, length: int, n_protected: int) -> tuple[int, ...]:
    counts = flops_keep_counts(budget, shape, torch.tensor([length]), torch.tensor([n_protected]))
    return tuple(int(c) for c in counts[:, 0])


def host_flops_counts(budget: Budget, shape: EncoderShape, n_valid: torch.Tensor, n_protected: torch.Tensor) -> torch.Tensor:
    """:func:`flops_keep_counts` for host-side (CPU) lengths, memoised per (budget, shape, T_valid,
    n_protected): the bisection costs ~10 ms of small tensor operations whatever the batch size, and
    a stream of batches repeats lengths, so the host plan of a batch is then a few dictionary look-ups."""
    pairs = list(zip(n_valid.tolist(), n_protected.tolist()))
    if not pairs:
        return torch.zeros(budget.num_layers, 0, dtype=torch.long)
    return torch.tensor([_sequence_counts(budget, shape, n, p) for n, p in pairs], dtype=torch.long).reshape(len(pairs), -1).T


def kept_lengths_for_flops(flops: float, length: int, shape: EncoderShape, ratio: float = 0.3,
                           schedule: str = "linear", n_protected: int = 2) -> list[int]:
    """The length every transformer layer runs on (L values) for one sequence of ``length`` valid
    tokens under a FLOPs budget F = ``flops`` (:func:`flops_keep_counts`), the schedule's shape set
    by ``ratio`` and ``schedule``, gates at ``shape.gate_layers``: what a Pareto plot or a benchmark
    needs for a FLOPs target, without building a model."""
    budget = Budget(ratio=ratio, schedule=schedule, num_layers=len(shape.gate_layers), flops=flops)
    n, prot = torch.tensor([length]), torch.tensor([n_protected])
    counts = flops_keep_counts(budget, shape, n, prot)
    return [int(v) for v in layer_lengths(counts, n, shape)[:, 0]]
