"""The context-aware scorer that gives every token its log α (Adaptive Retention, Rafiuddin & Khan,
EMNLP 2025 Findings, arXiv 2510.08798: the scorer and its context vector, Eq. 3 for the causal one)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["ContextScorer", "CONTEXT_MODES", "masked_mean_context", "running_average_context"]

ContextMode = Literal["mean", "running", "none"]
CONTEXT_MODES = ("mean", "running", "none")


def masked_mean_context(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Bidirectional context: c = Σ_t w_t·h_t / Σ_t w_t, the same vector for every token.

    ``weight`` (B, T) is 1 for valid tokens and 0 for padding (in the soft path it is the token's
    cumulative gate, so a dropped token stops contributing to the context of later gates).
    Returns (B, 1, d), broadcast over tokens.
    """
    w = weight.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-6)


def running_average_context(h: torch.Tensor, weight: torch.Tensor, decay: float) -> torch.Tensor:
    """Causal context, the paper's Eq. 3: m_t = γ_c·m_{t−1} + (1 − γ_c)·h_t, m_0 = 0.

    Unrolled, m_t = (1 − γ_c)·Σ_{k≤t} γ_c^{t−k}·w_k·h_k, computed as one (T × T) lower-triangular
    decay matrix product (no Python loop over time). Padding (w = 0) does not enter the average.
    Returns (B, T, d).
    """
    t = h.shape[1]
    idx = torch.arange(t, device=h.device)
    lag = (idx[:, None] - idx[None, :]).to(h.dtype)
    decay_matrix = torch.where(lag >= 0, (1.0 - decay) * decay ** lag.clamp_min(0), torch.zeros_like(lag))
    return torch.einsum("ts,bsd->btd", decay_matrix, h * weight.to(h.dtype).unsqueeze(-1))


class ContextScorer(nn.Module):
    """s_t = vᵀ tanh(W h_t + U c_t) + b, and log α_t = s_t.

    ``hidden`` defaults to d/2, which keeps one gate near 0.6 % of a BERT layer's size.
    ``context``: ``"mean"`` (bidirectional encoders), ``"running"`` (causal models, decay γ_c) or
    ``"none"`` (the ablation without a context vector: s_t = vᵀ tanh(W h_t) + b).
    ``init_log_alpha`` is the initial bias b: with v initialised near zero (std 0.02) every token starts near
    log α = b, so training starts from a known expected retention.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int | None = None,
        context: ContextMode = "mean",
        running_decay: float = 0.9,
        init_log_alpha: float = 2.0,
    ) -> None:
        super().__init__()
        if context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
        hidden = hidden or max(1, d_model // 2)
        self.context = context
        self.running_decay = running_decay
        self.W = nn.Linear(d_model, hidden)
        self.U = nn.Linear(d_model, hidden, bias=False) if context != "none" else None
        self.v = nn.Linear(hidden, 1)
        nn.init.normal_(self.v.weight, std=0.02)
        nn.init.constant_(self.v.bias, init_log_alpha)

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Scores (B, T) for hidden states ``h`` (B, T, d); ``weight`` (B, T) masks padding."""
        pre = self.W(h)
        if self.U is not None:
            if self.context == "mean":
                c = masked_mean_context(h, weight)
            else:
                c = running_average_context(h, weight, self.running_decay)
            pre = pre + self.U(c)
        return self.v(torch.tanh(pre)).squeeze(-1)
