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
  ``attention``  attention *received* (PoWER-BERT / H2O): Σ over heads and queries of the softmax
                 attention paid to token t, accumulated over the layers since the previous gate
                 (needs attention probabilities, so the backbone runs eager attention inside the block).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["SELECTORS", "RandomScorer", "FirstMScorer", "L2NormScorer", "AttentionReceivedScorer", "use_selector"]


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
    """score_t = Σ_layers Σ_heads Σ_queries A[q → t]: the attention token t received in the layers
    run since the previous gate (reset at every gate). Filled by forward hooks that
    :func:`use_selector` puts on the attention modules; a gate at layer 0 has no attention before it."""

    def __init__(self) -> None:
        super().__init__()
        self.received: torch.Tensor | None = None

    def accumulate(self, probs: torch.Tensor) -> None:
        r = probs.float().sum(dim=(1, 2))  # (B, T_keys)
        self.received = r if self.received is None or self.received.shape != r.shape else self.received + r

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.received is None:
            raise ValueError("the attention-received baseline needs attention from a layer before the gate; "
                             "gate layer 0 has none (use gate.layers >= 1)")
        if self.received.shape != h.shape[:2]:
            raise RuntimeError(f"attention scores for {tuple(self.received.shape)} tokens, hidden states {tuple(h.shape[:2])}")
        scores, self.received = self.received, None
        return scores


SELECTORS: dict[str, type[nn.Module] | None] = {
    "gate": None,
    "random": RandomScorer,
    "first": FirstMScorer,
    "l2": L2NormScorer,
    "attention": AttentionReceivedScorer,
}


def _attention_probs(output) -> torch.Tensor | None:
    """The (B, H, T, T) probabilities in an attention module's output tuple, if any."""
    if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor) and output[1].dim() == 4:
        return output[1]
    return None


@contextlib.contextmanager
def use_selector(encoder, method: str, seed: int = 0) -> Iterator[None]:
    """Within the block, ``encoder`` (a :class:`retention.RetentionEncoder`) selects tokens with
    ``method`` instead of its learned gates; budgets, protection and physical removal unchanged."""
    if method not in SELECTORS:
        raise ValueError(f"unknown selection method {method!r}; valid: {', '.join(SELECTORS)}")
    if method == "gate":
        yield
        return
    from .encoder import transformer_layers

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
            layers = transformer_layers(backbone)
            gate_of = {layer: k for k, layer in enumerate(encoder.gate_layers)}
            # Layer i's attention feeds the next gate at or after i + 1.
            for i, layer in enumerate(layers):
                nxt = next((gate_of[j] for j in sorted(gate_of) if j > i), None)
                if nxt is None:
                    continue
                attn = next(m for m in layer.modules() if m is not layer and type(m).__name__.endswith(("SelfAttention", "Attention")))

                def hook(module, args, output, _k=nxt):
                    probs = _attention_probs(output)
                    if probs is None:
                        raise RuntimeError("attention module returned no probabilities; eager attention is required")
                    scorers[_k].accumulate(probs)

                handles.append(attn.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
        encoder.gates = saved
        if method == "attention" and attn_before and attn_before != "eager":
            backbone.set_attn_implementation(attn_before)
