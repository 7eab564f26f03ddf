"""Token-selection baselines behind the same budget interface as the learned gate.

Every baseline is a *scorer*: a module with the gate's call signature ``scorer(h, weight) -> (B, T)``
scores. :meth:`RetentionEncoder.forward` ranks by the scores and keeps exactly the top
M_ℓ = ⌈ρ_ℓ·T_valid⌉ tokens per sequence (protected tokens first), physically removing the rest —
so every method runs at the same compute. :func:`use_selector` swaps the scorers of a trained
encoder for the duration of a ``with`` block (the kvpress idea, applied to the gate).

Methods (``SELECTORS``):
  ``gate``       the learned Adaptive Retention scorer (no swap);
  ``random``     uniform random scores;
  ``first``      first-M truncation: score = −position;
  ``l2``         ‖h_t‖₂ of the hidden state entering the gated layer;
  ``attention``  attention *received* (PoWER-BERT / H2O): the softmax attention paid to token t,
                 averaged over heads, valid queries and the layers since the previous gate (needs
                 attention probabilities, so the backbone runs eager attention inside the block).

Trained baseline (``TRAINED_METHODS``): ``ltp`` — :class:`LTPScorer`, learned thresholds on the
attention-received score with a fixed λ penalty (``install_ltp``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from torch import nn

__all__ = ["SELECTORS", "TRAINED_METHODS", "RandomScorer", "FirstMScorer", "L2NormScorer", "AttentionReceivedScorer",
           "LTPScorer", "attention_feed", "install_ltp", "use_selector"]


class RandomScorer(nn.Module):
    """Uniform random scores: random pruning at exactly M tokens."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.rand(h.shape[:2], generator=self.generator, device="cpu").to(h.device)


class FirstMScorer(nn.Module):
    """score_t = −t: keeps the first M tokens (truncation). Order is preserved by every gather, so
    the current index orders tokens as the original positions do."""

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return -torch.arange(h.shape[1], device=h.device, dtype=torch.float32).expand(h.shape[:2])


class L2NormScorer(nn.Module):
    """score_t = ‖h_t‖₂."""

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return h.float().norm(dim=-1)


class AttentionReceivedScorer(nn.Module):
    """The attention token t received from the valid queries, averaged over heads, queries and the
    layers run since the previous gate (PoWER-BERT's significance score, LTP's importance score):

        s_t = 1/(L·H·N) Σ_layers Σ_h Σ_{q valid} A_h[q → t]        (N valid queries)

    Filled by forward hooks on the attention modules (:func:`attention_feed`); reset at every gate.
    A gate at layer 0 has no layer before it: there the scores are the attention that layer 0 itself
    gives on all tokens (``lookahead``, :func:`lookahead_probs`), as PoWER-BERT scores a layer's
    tokens by that layer's own attention."""

    def __init__(self) -> None:
        super().__init__()
        self.received: torch.Tensor | None = None  # (B, T_q, T_k), summed over heads and layers
        self.layers = 0
        self.lookahead = None  # set by attention_feed for a gate at layer 0: h, weight -> (B, H, T, T)

    def accumulate(self, probs: torch.Tensor) -> None:
        r = probs.float().mean(dim=1)
        fresh = self.received is None or self.received.shape != r.shape
        self.received = r if fresh else self.received + r
        self.layers = 1 if fresh else self.layers + 1

    def importance(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.received is None and self.lookahead is not None:
            self.accumulate(self.lookahead(h, weight))
        if self.received is None:
            raise RuntimeError("no attention probabilities reached this scorer (attention_feed was not installed)")
        if self.received.shape[-1] != h.shape[1]:
            raise RuntimeError(f"attention scores for {self.received.shape[-1]} tokens, hidden states {tuple(h.shape[:2])}")
        q = (weight > 0).to(self.received.dtype)
        scores = torch.einsum("bqk,bq->bk", self.received, q) / (q.sum(1, keepdim=True).clamp_min(1) * self.layers)
        self.received, self.layers = None, 0
        return scores

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.importance(h, weight)


class LTPScorer(AttentionReceivedScorer):
    """LTP (Kim et al. 2022, Learned Token Pruning): a learned threshold θ_ℓ per gated layer on the
    attention-received importance s_t; the soft mask σ((s_t − θ_ℓ)/τ) is trained with a fixed
    λ penalty on the mean mask (our fixed-λ term with ``optim.dual_lr = 0``), not a constraint.

        log α_t = (N·s_t − θ_ℓ) / τ      (N·s_t: importance relative to the mean, 1 on average)

    At inference our encoder keeps the top-M by log α — the same exact budget as every method."""

    def __init__(self, temperature: float = 0.1, init_threshold: float = 0.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """log α = (s·N − θ)/τ: importance relative to the mean (N valid keys), so θ and τ do not
        depend on the sequence length."""
        n = (weight > 0).sum(1, keepdim=True).to(h.dtype)
        return (self.importance(h, weight) * n - self.threshold) / self.temperature


SELECTORS: dict[str, type[nn.Module] | None] = {
    "gate": None,
    "random": RandomScorer,
    "first": FirstMScorer,
    "l2": L2NormScorer,
    "attention": AttentionReceivedScorer,
}
# Methods that train their own scorer (selected at inference like the learned gate: method "gate").
TRAINED_METHODS = ("ltp",)


def _attention_probs(output) -> torch.Tensor | None:
    """The (B, H, T, T) probabilities in an attention module's output tuple, if any."""
    if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor) and output[1].dim() == 4:
        return output[1]
    return None


def _attention_module(layer: nn.Module) -> nn.Module:
    return next(m for m in layer.modules() if m is not layer and type(m).__name__.endswith("Attention"))


def lookahead_probs(attn: nn.Module, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The (B, H, T, T) attention probabilities that attention module ``attn`` (eager) computes on
    all of ``h``, padding (``weight`` ≤ 0) masked as keys: the scores of a gate with no layer before it."""
    mask = torch.zeros(weight.shape, dtype=h.dtype, device=h.device)
    mask = mask.masked_fill(weight <= 0, torch.finfo(h.dtype).min)[:, None, None, :]
    probs = _attention_probs(attn(h, attention_mask=mask))
    if probs is None:
        raise RuntimeError("attention module returned no probabilities; eager attention is required")
    return probs


def attention_feed(encoder, scorers) -> list:
    """Forward hooks that hand every layer's attention probabilities to the scorer of the next gate
    at or after it (``scorers[k]`` belongs to ``encoder.gate_layers[k]``); a gate at layer 0 gets
    layer 0's own attention on all tokens instead (:func:`lookahead_probs`). Returns the hook
    handles. The backbone must run eager attention (SDPA returns no probabilities)."""
    from .encoder import transformer_layers

    if getattr(encoder.backbone.config, "_attn_implementation", None) != "eager":
        raise ValueError("attention-based scores need eager attention (model.attn_implementation=eager)")
    layers = transformer_layers(encoder.backbone)
    for k, g in enumerate(encoder.gate_layers):
        if g == 0:  # a plain function, not a submodule: the scorer's state_dict stays its own
            scorers[k].lookahead = functools.partial(lookahead_probs, _attention_module(layers[0]))
    handles = []
    for i, layer in enumerate(layers):
        nxt = next((k for k, g in enumerate(encoder.gate_layers) if g > i), None)
        if nxt is None:
            continue
        attn = _attention_module(layer)

        def hook(module, args, output, _k=nxt):
            probs = _attention_probs(output)
            if probs is None:
                raise RuntimeError("attention module returned no probabilities; eager attention is required")
            scorers[_k].accumulate(probs)

        handles.append(attn.register_forward_hook(hook))
    return handles


@contextlib.contextmanager
def use_selector(encoder, method: str, seed: int = 0) -> Iterator[None]:
    """Within the block, ``encoder`` (a :class:`retention.RetentionEncoder`) selects tokens with
    ``method`` instead of its learned gates; budgets, protection and physical removal unchanged."""
    if method not in SELECTORS:
        raise ValueError(f"unknown selection method {method!r}; valid: {', '.join(SELECTORS)}")
    if method == "gate":
        yield
        return
    cls = SELECTORS[method]
    g = torch.Generator().manual_seed(seed)
    scorers = [cls(g) if cls is RandomScorer else cls() for _ in encoder.gate_layers]
    saved = encoder.gates
    handles = []
    backbone = encoder.backbone
    attn_before = getattr(backbone.config, "_attn_implementation", None)
    try:
        encoder.gates = nn.ModuleList(scorers)
        if method == "attention":
            if attn_before != "eager":
                backbone.set_attn_implementation("eager")
            handles = attention_feed(encoder, scorers)
        yield
    finally:
        for h in handles:
            h.remove()
        encoder.gates = saved
        if attn_before and getattr(backbone.config, "_attn_implementation", None) != attn_before:
            backbone.set_attn_implementation(attn_before)


def install_ltp(encoder, temperature: float = 0.1) -> list:
    """Replace ``encoder``'s gates by :class:`LTPScorer` modules, permanently, and feed them
    attention probabilities (eager attention is switched on). Returns the hook handles."""
    if getattr(encoder.backbone.config, "_attn_implementation", None) != "eager":
        encoder.backbone.set_attn_implementation("eager")
    encoder.gates = nn.ModuleList(LTPScorer(temperature) for _ in encoder.gate_layers)
    return attention_feed(encoder, list(encoder.gates))
