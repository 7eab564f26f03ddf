"""Gate relaxations: Hard-Concrete gates (Louizos, Welling & Kingma 2018), as Adaptive Retention
(Rafiuddin & Khan, EMNLP 2025 Findings, arXiv 2510.08798) uses them, and the ablations' gates.

A Hard-Concrete variable is a stretched and clipped binary-Concrete variable. It has
point mass at exactly 0 and at exactly 1 and a reparameterised sample, so a gate can be
trained by back-propagation and still switch a token fully off. Every relaxation is a
:class:`Relaxation`: a training sample, P(gate open) and a deterministic test-time gate from log α.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

__all__ = ["Relaxation", "HardConcrete", "SigmoidGate", "StraightThroughGate", "RELAXATIONS", "make_relaxation"]


class Relaxation(ABC):
    """A gate distribution over z ∈ [0, 1] parameterised by each token's log α."""

    @abstractmethod
    def sample(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The gate in training (differentiable in log α)."""

    @abstractmethod
    def prob_nonzero(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(z > 0): the probability the token is kept, whose mean is the expected retention ĝ."""

    @abstractmethod
    def deterministic(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Louizos et al.'s noise-free gate (the median gate, u = ½)."""

    @abstractmethod
    def open_mean(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """E[z | z > 0]: the mean value of the gate when it is open, in (0, 1]. Soft evaluation scales
        each token it keeps (the hard path's top-M) by this value."""

    @abstractmethod
    def log_alpha_at(self, p: float) -> float:
        """The inverse of :meth:`prob_nonzero`: the log α at which P(z > 0) = ``p``, ``p`` clipped to
        [1e-4, 1 − 1e-4] (so a gate asked to keep everything starts open but still trainable)."""


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1.0 - 1e-4)
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class HardConcrete(Relaxation):
    """Hard-Concrete distribution with temperature ``beta`` and stretch interval (``gamma``, ``zeta``).

    Defaults are Louizos et al.'s: β = 2/3, γ = −0.1, ζ = 1.1. ``eps`` bounds the uniform noise
    away from 0 and 1 so the logit of ``u`` stays finite.
    """

    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.gamma < 0:
            raise ValueError(f"gamma must be < 0, got {self.gamma}")
        if not self.zeta > 1:
            raise ValueError(f"zeta must be > 1, got {self.zeta}")

    def sample(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Reparameterised sample, one independent noise draw per element (per token):

            u ~ U(ε, 1−ε)
            s = σ((log u − log(1−u) + log α) / β)
            z̃ = clamp(s·(ζ − γ) + γ, 0, 1)
        """
        u = torch.empty_like(log_alpha).uniform_(self.eps, 1.0 - self.eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def prob_nonzero(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Probability that the gate is open, the expected retention of the token:

            P(z̃ > 0) = σ(log α − β·log(−γ/ζ))
        """
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def log_alpha_at(self, p: float) -> float:
        """log α = logit(p) + β·log(−γ/ζ), the inverse of :meth:`prob_nonzero` (β = 2/3, γ = −0.1, ζ = 1.1:
        logit(p) − 1.599, so P(kept) = 0.3 at log α = −2.446)."""
        return _logit(p) + self.beta * math.log(-self.gamma / self.zeta)

    def deterministic(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Noise-free gate for soft evaluation (Louizos et al.'s test-time estimator):

            ẑ = clamp(σ(log α)·(ζ − γ) + γ, 0, 1)

        It is 0 for every token with σ(log α) < −γ/(ζ − γ) (1/12 by default), although such a token
        has P(z̃ > 0) up to σ((1 − β)·log(−γ/ζ)) (0.31 by default): evaluated with it, a gate closes far more
        tokens than its budget says. Soft evaluation therefore uses :meth:`open_mean` on the top-M
        tokens; hard inference ranks tokens by log α and keeps exactly top-M.
        """
        return (torch.sigmoid(log_alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    # midpoints of (0, 1) for the quadrature of open_mean: error O(1/N²), below 1e-4 for N = 64
    QUADRATURE_POINTS = 64

    def open_mean(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """E[z̃ | z̃ > 0]. z̃ is a non-decreasing function of the noise u, z̃(u) =
        clamp((ζ − γ)·σ((logit u + log α)/β) + γ, 0, 1), positive exactly for u > u₀ with

            u₀ = σ(β·logit(−γ/(ζ − γ)) − log α),

        so E[z̃ | z̃ > 0] = ∫₀¹ z̃(u₀ + (1 − u₀)·v) dv, computed by the midpoint rule on N points.
        The noise enters through 1 − u = P(z̃ > 0)·(1 − v), so the result stays exact however small
        P(z̃ > 0) = 1 − u₀ is."""
        a = -self.gamma / (self.zeta - self.gamma)
        p_open = torch.sigmoid(log_alpha - self.beta * math.log(a / (1.0 - a))).unsqueeze(-1)
        n = self.QUADRATURE_POINTS
        v = (torch.arange(n, device=log_alpha.device, dtype=log_alpha.dtype) + 0.5) / n
        w = p_open * (1.0 - v)  # 1 − u
        s = torch.sigmoid((torch.log1p(-w) - torch.log(w) + log_alpha.unsqueeze(-1)) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0).mean(-1)


# ---------------------------------------------------------------------------- ablations
@dataclass(frozen=True)
class SigmoidGate(Relaxation):
    """Ablation "no relaxation": a plain sigmoid gate, no noise and no stretch.

        z = σ(log α),  P(kept) = σ(log α)

    Same interface as :class:`HardConcrete`; a token is never switched fully off in training.
    """

    def sample(self, log_alpha: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(log_alpha)

    def prob_nonzero(self, log_alpha: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(log_alpha)

    def deterministic(self, log_alpha: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(log_alpha)

    def open_mean(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """No noise: the gate itself, σ(log α) (never 0)."""
        return torch.sigmoid(log_alpha)

    def log_alpha_at(self, p: float) -> float:
        """log α = logit(p)."""
        return _logit(p)


@dataclass(frozen=True)
class StraightThroughGate(SigmoidGate):
    """Ablation "straight-through estimator": a binary gate in the forward pass, the sigmoid's
    gradient in the backward pass.

        z = 1[σ(log α) > ½] + σ(log α) − stopgrad(σ(log α)),  P(kept) = σ(log α)
    """

    def sample(self, log_alpha: torch.Tensor) -> torch.Tensor:
        soft = torch.sigmoid(log_alpha)
        return (soft > 0.5).to(soft.dtype) + soft - soft.detach()

    deterministic = sample

    def open_mean(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """An open binary gate is 1."""
        return torch.ones_like(log_alpha)


RELAXATIONS = {"hard_concrete": HardConcrete, "sigmoid": SigmoidGate, "straight_through": StraightThroughGate}


def make_relaxation(name: str, beta: float = 2.0 / 3.0, gamma: float = -0.1, zeta: float = 1.1) -> Relaxation:
    """The gate distribution by config name (``gate.relaxation``)."""
    if name not in RELAXATIONS:
        raise ValueError(f"unknown relaxation {name!r}; valid: {', '.join(RELAXATIONS)}")
    return HardConcrete(beta, gamma, zeta) if name == "hard_concrete" else RELAXATIONS[name]()
