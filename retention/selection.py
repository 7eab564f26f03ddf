"""Exact top-M token selection and the gather/scatter that physically removes and restores tokens.

Everything is batched: no Python loop over sequences or tokens. The one value the host needs is the
retained width M_max (a tensor shape): read from the device it is a device-to-host copy that waits
for every queued kernel (``int(counts.max())``), so a caller that knows the lengths on the host
passes it instead (:class:`HostPlan`) and the retained forward never waits on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .budget import Budget, keep_counts

__all__ = ["HostPlan", "Selection", "host_plan", "select_top_m", "gather_tokens", "scatter_tokens"]


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


@dataclass(frozen=True, eq=False)
class HostPlan:
    """The hard path's shapes for one batch, worked out on the host before the forward runs.

    ``widths[k]``: the retained length after the k-th gate, M_max = max_b M_k,b — what
    :func:`select_top_m` would otherwise read back with ``int(counts.max())``.
    ``full[k]``: every sequence keeps exactly ``widths[k]`` tokens, so the later layers need no key
    mask (SDPA then picks its fastest kernel) — otherwise read back with ``bool(valid.all())``.
    ``full_input``: no padding in the input, the same for the layers before the first gate.
    The inputs are kept so the forward can check the plan is for its batch and budget:
    ``budget``, ``threshold``, the padded length ``t`` and the CPU tensors ``lengths`` and
    ``n_protected`` (B,) (T_valid and n_protected of each sequence). ``counts`` (K, B): the kept
    counts M_k themselves when the host chose them (a FLOPs budget, :mod:`retention.flops`), so the
    device does not work them out again; None: the device computes them from the budget.
    """

    widths: tuple[int, ...]
    full: tuple[bool, ...]
    full_input: bool
    budget: Budget
    threshold: bool
    t: int
    lengths: torch.Tensor
    n_protected: torch.Tensor
    counts: torch.Tensor | None = None


def host_plan(budget: Budget, lengths: torch.Tensor, n_protected: torch.Tensor, t: int, threshold: bool = False,
              counts: torch.Tensor | None = None) -> HostPlan:
    """A :class:`HostPlan` from host-side (CPU) valid lengths and protected counts (B,) of a batch
    padded to ``t``. Each gate's counts M_k = min(clamp(⌈ρ_k·T_valid⌉, n_protected, T_valid), M_{k−1})
    come from the same :func:`keep_counts` (float64 on both sides, so the same integers) as the
    device's. ``threshold`` (the ablation, whose counts depend on the scores): every width stays
    ``t``, an upper bound of the counts, and no gate is ``full``. ``counts`` (K, B), when given: the
    counts M_k already chosen on the host (cumulative, e.g. :func:`retention.flops.flops_keep_counts`),
    used instead of the ratio schedule's."""
    widths, full, alive = [], [], lengths
    for k in range(budget.num_layers):
        if threshold or not lengths.numel():
            widths.append(t)
            full.append(False)
            continue
        chosen = keep_counts(budget.layer_ratio(k, lengths), lengths, n_protected) if counts is None else counts[k]
        alive = torch.minimum(chosen, alive)
        widths.append(int(alive.max()))
        full.append(bool((alive == widths[-1]).all()))
    return HostPlan(tuple(widths), tuple(full), bool((lengths == t).all()), budget, threshold, t, lengths, n_protected, counts)


def select_top_m(
    scores: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor, counts: torch.Tensor, width: int | None = None
) -> Selection:
    """Keep exactly ``counts[b]`` tokens of sequence b: all protected tokens, then the highest scores.

    Padding (``valid`` False) is never kept; ``counts`` must satisfy n_protected ≤ M ≤ T_valid
    (:func:`retention.budget.keep_counts` guarantees it). Ties are broken by ``torch.topk``.
    The kept positions are sorted so the shorter sequence preserves the original token order.
    ``width``: M_max, the number of slots, from a :class:`HostPlan` (it must be ≥ every count; slots
    past a sequence's count are unfilled); None reads max(counts) from the device, a host sync.
    """
    b, t = scores.shape
    ranked = scores.detach().float().masked_fill(~valid, float("-inf"))
    ranked = ranked.masked_fill(protected & valid, float("inf"))
    m_max = int(counts.max()) if width is None else width
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
