"""Adaptive Retention: learned per-token Hard-Concrete gates under an exact token budget.

Framework-free (plain torch + transformers); the Lightning system lives in ``lightning_modules``.
Where each equation of the method lives:

* Hard-Concrete sample, P(z > 0), deterministic gate — :mod:`retention.hard_concrete`
* scorer s_t = vᵀ tanh(W h_t + U c_t) + b and its contexts — :mod:`retention.gate`
* M = ⌈ρ·T_valid⌉, expected retention ĝ, Lagrangian Σ λ(ĝ − ρ), schedules — :mod:`retention.budget`
* exact top-M selection, gather / scatter (drop-and-restore) — :mod:`retention.selection`
* soft gating and physical removal on a stock HF encoder — :mod:`retention.encoder`
"""

from .budget import Budget, annealed_targets, expected_retention, keep_counts, lagrangian_term
from .encoder import SUPPORTED_MODEL_TYPES, RetentionEncoder, RetentionOutput, transformer_layers
from .gate import ContextScorer
from .hard_concrete import HardConcrete
from .selection import Selection, gather_tokens, scatter_tokens, select_top_m

__all__ = [
    "Budget",
    "annealed_targets",
    "ContextScorer",
    "HardConcrete",
    "RetentionEncoder",
    "RetentionOutput",
    "SUPPORTED_MODEL_TYPES",
    "Selection",
    "expected_retention",
    "gather_tokens",
    "keep_counts",
    "lagrangian_term",
    "scatter_tokens",
    "select_top_m",
    "transformer_layers",
]
