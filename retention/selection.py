"""Exact top-M token selection and the gather/scatter that physically removes and restores tokens.

Everything is batched: no Python loop over sequences or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Selection", "select_top_m", "gather_tokens", "scatter_tokens"]


@dataclass
class Selection:
    """Result of :func:`select_top_m` for a batch.

    ``index`` (B, M_max): selected positions in the *input* sequence, ascending (original order);
    slots past a sequence's own M hold a valid dummy index and are marked False in ``filled``.
    ``filled`` (B, M_max) bool: which slots hold a selected token. ``counts`` (B,): M per sequence.
    """

    index: torch.Tensor
    filled: torch.Tensor
    counts: torch.Tensor


def select_top_m(
    scores: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor, counts: torch.Tensor
) -> Selection:
    """Keep exactly ``counts[b]`` tokens of sequence b: all protected tokens, then the highest scores.

    Padding (``valid`` False) is never kept; ``counts`` must satisfy n_protected ≤ M ≤ T_valid
    (:func:`retention.budget.keep_counts` guarantees it). Ties are broken by ``torch.topk``.
    The kept positions are sorted so the shorter sequence preserves the original token order.
    """
    b, t = scores.shape
    ranked = scores.detach().float().masked_fill(~valid, float("-inf"))
    ranked = ranked.masked_fill(protected & valid, float("inf"))
    m_max = int(counts.max())
    top = ranked.topk(m_max, dim=1, sorted=True).indices  # best first
    slot = torch.arange(m_max, device=scores.device).expand(b, m_max)
    filled = slot < counts.unsqueeze(1)
    # Unused slots sort to the end (index t), then point at a harmless real index.
    index = torch.where(filled, top, torch.full_like(top, t)).sort(dim=1).values
    index = torch.where(filled, index, torch.zeros_like(index))
    return Selection(index=index, filled=filled, counts=counts)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, j], ...] for x of shape (B, T, ...) and index (B, M): a shorter tensor."""
    if x.dim() == 2:
        return x.gather(1, index)
    expanded = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, expanded)


def scatter_tokens(dest: torch.Tensor, index: torch.Tensor, src: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Write ``src`` (B, M, ...) back into a copy of ``dest`` (B, T, ...) at positions ``index`` where ``filled``.

    Used for drop-and-restore: dropped tokens keep the state they had when they were dropped.
    """
    t = dest.shape[1]
    # Unused slots write into an extra trash position T, which is cut off again: no duplicate writes.
    target = torch.where(filled, index, torch.full_like(index, t))
    padded = torch.cat([dest, dest[:, :1]], dim=1)
    expanded = target.view(*target.shape, *([1] * (src.dim() - 2))).expand_as(src)
    return padded.scatter(1, expanded, src)[:, :t]
