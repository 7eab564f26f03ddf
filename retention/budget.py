"""The retention budget and its Lagrangian (Adaptive Retention, Rafiuddin & Khan, EMNLP 2025
Findings, arXiv 2510.08798: the budget constraint ĝ_ℓ ≤ ρ_ℓ and its dual variables λ_ℓ)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

__all__ = ["AllReduceSum", "Budget", "SCHEDULES", "annealed_targets", "expected_retention", "global_batch_mean",
           "dual_ascent", "lagrangian_term", "keep_counts", "phase_steps", "retention_per_sequence", "threshold_counts"]

SCHEDULES = ("constant", "linear")

# ρ·T is computed in floating point: ceil(0.3 · 10) would give 4 without this guard.
_CEIL_TOLERANCE = 1e-6


def keep_counts(ratio: torch.Tensor | float, n_valid: torch.Tensor, n_protected: torch.Tensor) -> torch.Tensor:
    """Exact number of tokens kept per sequence:

        M = clamp(⌈ρ·T_valid⌉, n_protected, T_valid)

    ``ratio`` is a float or a per-sequence tensor (B,); ``n_valid``/``n_protected`` are (B,) integer tensors.
    """
    m = torch.ceil(n_valid.to(torch.float64) * ratio - _CEIL_TOLERANCE).to(torch.long)
    return torch.maximum(torch.minimum(m, n_valid), n_protected)


def threshold_counts(p_keep: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Ablation "threshold inference": keep every valid token whose gate is more likely open than
    closed, plus the protected ones — no exact budget:

        M = |{t valid : protected_t or P(z̃_t > 0) ≥ ½}|
    """
    return (valid & (protected | (p_keep >= 0.5))).sum(1)


def retention_per_sequence(p_keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each sequence's retention, (B,): Σ_t P_b,t(kept) / T_valid,b over its valid tokens."""
    valid = valid.to(p_keep.dtype)
    return (p_keep * valid).sum(1) / valid.sum(1).clamp_min(1.0)


def expected_retention(p_keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The batch's expected retention at one gated layer:

        ĝ = mean_b ( Σ_t P_b,t(kept) / T_valid,b )

    ``p_keep`` (B, T) is the probability that token t is still kept at this layer (cumulative over
    earlier gated layers; 1 for protected tokens); ``valid`` (B, T) excludes padding.
    """
    return retention_per_sequence(p_keep, valid).mean()


class AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum) over the default process group: every rank's output is
    y = Σ_r x_r, so with L = Σ_r L_r (what DDP's gradient average optimises, ÷ R) the gradient of
    each rank's input is ∂L/∂x_r = Σ_s ∂L_s/∂y, the all-reduced sum of the output gradients.
    (torch's own ``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated in
    favour of a private module.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def global_batch_mean(means: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Batch means over every process's sequences: with R processes (DDP ranks), rank r holding
    B_r sequences whose means are m_r (e.g. ĝ_ℓ,r of :func:`expected_retention`),

        m = Σ_r B_r·m_r / Σ_r B_r   (the mean over all Σ_r B_r sequences),

    summed with a differentiable all-reduce (:class:`AllReduceSum`), so the
    gradient reaches every rank's inputs: rank r's inputs get R·∂L/∂m·B_r/Σ B, and DDP's gradient
    average (÷ R) leaves exactly ∂L/∂m_r of the global mean. Every rank gets the same value; every
    rank must call it at the same step. Without an initialised process group (or with one process)
    it returns ``means`` itself. ``means``: a 1-d tensor."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return means
    count = torch.full((1,), float(batch_size), dtype=means.dtype, device=means.device)
    total = AllReduceSum.apply(torch.cat([means * batch_size, count]))
    return total[:-1] / total[-1]


def lagrangian_term(lam: torch.Tensor, achieved: torch.Tensor, target: torch.Tensor,
                    lam_quadratic: torch.Tensor | None = None, equality: bool = False) -> torch.Tensor:
    """Σ_ℓ λ_ℓ·(ĝ_ℓ − ρ_ℓ), one λ_ℓ per gated layer; with ``lam_quadratic`` = λ₂ the augmented
    Lagrangian of CoFiPruning (Xia et al., ACL 2022),

        Σ_ℓ λ_ℓ·(ĝ_ℓ − ρ_ℓ) + λ₂_ℓ·v_ℓ²,   v_ℓ = ĝ_ℓ − ρ_ℓ (``equality``) or max(0, ĝ_ℓ − ρ_ℓ) (inequality).

    The model and gates minimise it (it pushes ĝ_ℓ down while λ_ℓ > 0, up while λ_ℓ < 0); λ
    maximises it, so its gradient ĝ_ℓ − ρ_ℓ raises λ_ℓ while ĝ_ℓ > ρ_ℓ and lowers it while ĝ_ℓ < ρ_ℓ:
    to the projection at 0 for the inequality ĝ_ℓ ≤ ρ_ℓ (λ_ℓ ≥ 0), below 0 for the equality ĝ_ℓ = ρ_ℓ.
    λ₂ maximises it too: its gradient v_ℓ² ≥ 0, so λ₂_ℓ only grows, while the constraint is violated.
    The quadratic term's pull on ĝ_ℓ, 2·λ₂_ℓ·v_ℓ, is proportional to the violation and points back to
    ρ_ℓ (under the inequality only from above): a restoring force that, unlike λ_ℓ, needs no steps to
    change sign when ĝ_ℓ crosses ρ_ℓ, and so damps the overshoot of λ_ℓ's ascent.
    """
    violation = achieved - target
    term = (lam * violation).sum()
    if lam_quadratic is None:
        return term
    v = violation if equality else violation.clamp_min(0.0)
    return term + (lam_quadratic * v.square()).sum()


@torch.no_grad()
def dual_ascent(dual: list[torch.Tensor], eta: float) -> None:
    """The paper's dual step (Adaptive Retention, Rafiuddin & Khan, EMNLP 2025 Findings, arXiv
    2510.08798, the Lagrangian relaxation of the budget): plain gradient ascent on the Lagrangian,

        λ_ℓ ← λ_ℓ + η·∂L/∂λ_ℓ = λ_ℓ + η·(ĝ_ℓ − ρ_ℓ),   and for CoFiPruning's λ₂: λ₂_ℓ ← λ₂_ℓ + η·v_ℓ²,

    in place, on each tensor's ``.grad`` (which it then clears; a tensor without one, as in the dense
    phase, is left alone). The step is proportional to the violation, so λ settles where ĝ_ℓ meets
    ρ_ℓ; AdamW's normalised step moves λ about η a step whatever the violation, a bang-bang
    controller that overshoots. The projections (λ ≥ 0 under the inequality, λ₂ ≥ 0) are the caller's."""
    for p in dual:
        if p.grad is not None:
            p.add_(p.grad, alpha=eta)
            p.grad = None


def annealed_targets(targets: torch.Tensor, step: int, warmup_steps: int) -> torch.Tensor:
    """Budget warm-up (as CoFiPruning's Lagrangian warm-up): the training target moves linearly
    from 1 (keep everything) to ρ_ℓ over ``warmup_steps`` optimizer steps,

        ρ_ℓ(t) = 1 − (1 − ρ_ℓ)·min(1, t / warmup_steps),

    so the task is learned before the constraint bites; a step t < 0 counts as 0 (ρ_ℓ(t) ≤ 1 always).
    Hard inference always uses ρ_ℓ.
    """
    if warmup_steps <= 0:
        return targets
    return 1.0 - (1.0 - targets) * min(1.0, max(0, step) / warmup_steps)


def phase_steps(total_steps: int, dense_fraction: float, warmup_fraction: float,
                dense_steps: int | None = None, warmup_steps: int | None = None) -> tuple[int, int]:
    """(dense phase D, budget warm-up W) in optimizer steps for a fit of ``total_steps`` steps:

        D = round(dense_fraction · total),    W = round(warmup_fraction · total),

    each replaced by ``dense_steps`` / ``warmup_steps`` when given. The fractions scale the schedule
    with the run: a 189-step fit and a 5 000-step fit both reach ρ at the same point of training
    (the training target is ρ from step D + W on, :func:`annealed_targets`).
    """
    dense = round(dense_fraction * total_steps) if dense_steps is None else int(dense_steps)
    warmup = round(warmup_fraction * total_steps) if warmup_steps is None else int(warmup_steps)
    return dense, warmup


@dataclass(frozen=True)
class Budget:
    """Target retention per gated layer.

    Either ``ratio`` ρ ∈ (0, 1] or an absolute token count ``tokens`` M (then each sequence's
    target ratio is min(M, T_valid)/T_valid). ``flops`` F ∈ (0, 1] (with ``ratio``): the budget is
    the retained forward's FLOPs, at most F times the dense forward's; the ratio schedule below then
    only gives the *shape* of the per-gate ratios, scaled by one factor per sequence
    (:func:`retention.flops.flops_keep_counts`). ``schedule``:
      * ``"constant"``: ρ_ℓ = ρ at every gated layer (all the dropping happens at the first gate);
      * ``"linear"``: ρ_ℓ decreases linearly over the K gated layers, ρ_k = 1 − (1 − ρ)·(k+1)/K,
        reaching ρ at the last one.
    """

    ratio: float | None = 0.3
    tokens: int | None = None
    schedule: Literal["constant", "linear"] = "constant"
    num_layers: int = 1
    flops: float | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.tokens is None):
            raise ValueError("give exactly one of budget ratio or budget tokens")
        if self.flops is not None and not (self.ratio is not None and 0.0 < self.flops <= 1.0):
            raise ValueError(f"a FLOPs budget must lie in (0, 1] and come with a ratio (its schedule's shape), "
                             f"got flops={self.flops}, ratio={self.ratio}")
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"budget ratio must be in (0, 1], got {self.ratio}")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"budget tokens must be >= 1, got {self.tokens}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"budget schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def layer_fractions(self) -> list[float]:
        """Multipliers f_k ∈ (0, 1] so that ρ_k = 1 − (1 − ρ)·f_k (1.0 everywhere for 'constant')."""
        k = self.num_layers
        if self.schedule == "constant":
            return [1.0] * k
        return [(i + 1) / k for i in range(k)]

    def base_ratio(self, n_valid: torch.Tensor) -> torch.Tensor:
        """Per-sequence final target ratio ρ_b (B,), float64."""
        n = n_valid.to(torch.float64)
        if self.ratio is not None:
            return torch.full_like(n, self.ratio)
        return torch.clamp(self.tokens / n.clamp_min(1.0), max=1.0)

    def layer_ratio(self, layer: int, n_valid: torch.Tensor) -> torch.Tensor:
        """Per-sequence target ratio at the ``layer``-th gated layer (0-based among gated layers)."""
        f = self.layer_fractions()[layer]
        return 1.0 - (1.0 - self.base_ratio(n_valid)) * f

    def targets(self, n_valid: torch.Tensor) -> torch.Tensor:
        """(K,) batch targets ρ_ℓ (the mean of the per-sequence targets), the right-hand sides of the constraints."""
        return torch.stack([self.layer_ratio(k, n_valid).mean() for k in range(self.num_layers)]).float()



