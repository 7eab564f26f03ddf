"""Token-selection baselines behind the same budget interface as the learned gate.

A *selector* is a small dataclass in the manner of kvpress's presses (``ScorerPress``,
``KnormPress``): the base :class:`Selector` applies it to a :class:`retention.encoder.RetentionEncoder`
through a context manager, and each subclass overrides one scoring method,
``score(h, weight) -> (B, T)``. Inside the block the encoder ranks tokens by those scores instead
of its trained gates and keeps exactly the top M_ℓ = ⌈ρ_ℓ·T_valid⌉ tokens per sequence (protected
tokens first), physically removing the rest, so every method runs at the same compute::

    with RandomSelector(seed=0)(encoder):
        out = encoder(input_ids, attention_mask, mode="hard")

Registry ``SELECTORS`` (keyed by :class:`retention.methods.Method`):
  ``gate``       :class:`TrainedScorer`: the encoder's own trained scorer (ours, or LTP's);
  ``random``     uniform random scores;
  ``first``      first-M truncation: score = −position;
  ``l2``         ‖h_t‖₂ of the hidden state entering the gated layer;
  ``attention``  attention *received* (PoWER-BERT / H2O): the softmax attention paid to token t,
                 averaged over heads, valid queries and the layers since the previous gate (needs
                 attention probabilities, so the backbone runs eager attention inside the block).

Trained baseline ``ltp``: :class:`LTPScorer`, learned thresholds on the attention-received score with
a fixed λ penalty; :func:`install_ltp` makes it the encoder's gates for good.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .encoder import transformer_layers
from .methods import Method

__all__ = ["Selector", "TrainedScorer", "RandomSelector", "FirstSelector", "L2NormSelector", "AttentionReceivedSelector",
           "SELECTORS", "selector_for", "AttentionFeed", "attention_received", "eager_attention", "feed_attention", "LTPScorer", "install_ltp"]


# ---------------------------------------------------------------------------- attention received
def attention_received(received: torch.Tensor, query_weight: torch.Tensor, layers: int = 1) -> torch.Tensor:
    """s_t = 1/(L·N) Σ_{q valid} R[q → t], R (B, T_q, T_k) the attention probabilities summed over L
    layers and averaged over heads, N the valid queries (``query_weight`` > 0): (B, T_k)."""
    q = (query_weight > 0).to(received.dtype)
    return torch.einsum("bqk,bq->bk", received, q) / (q.sum(1, keepdim=True).clamp_min(1) * layers)


class AttentionFeed:
    """Attention received, accumulated by forward hooks (:func:`feed_attention`) over the layers run
    since the previous gate and consumed by the next one (PoWER-BERT's significance score, LTP's
    importance score):

        s_t = 1/(L·H·N) Σ_layers Σ_h Σ_{q valid} A_h[q → t]        (N valid queries)

    A gate at layer 0 has no layer before it: there the scores are the attention that layer 0 itself
    gives on all tokens (``lookahead``, :func:`lookahead_probs`), as PoWER-BERT scores a layer's
    tokens by that layer's own attention."""

    def __init__(self) -> None:
        self.received: torch.Tensor | None = None  # (B, T_q, T_k), summed over layers, mean over heads
        self.layers = 0
        self.lookahead = None  # for a gate at layer 0: (h, weight) -> (B, H, T, T)

    def reset(self) -> None:
        self.received, self.layers = None, 0

    def accumulate(self, probs: torch.Tensor) -> None:
        r = probs.float().mean(dim=1)
        self.received = r if self.received is None else self.received + r
        self.layers += 1

    def importance(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """s_t (B, T) for the tokens entering this gate; resets the accumulator for the next gate."""
        if self.received is None and self.lookahead is not None:
            self.accumulate(self.lookahead(h, weight))
        if self.received is None:
            raise RuntimeError("no attention probabilities reached this gate (feed_attention was not installed)")
        if self.received.shape[-1] != h.shape[1]:
            raise RuntimeError(f"attention scores for {self.received.shape[-1]} tokens, hidden states {tuple(h.shape[:2])}")
        scores = attention_received(self.received, weight, self.layers)
        self.reset()
        return scores


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


def feed_attention(encoder, feed: AttentionFeed) -> list:
    """Forward hooks that hand the attention probabilities of every layer before the last gate to
    ``feed`` (each gate consumes what the layers since the previous gate gave), and reset it when a
    forward pass starts; a gate at layer 0 gets layer 0's own attention on all tokens
    (:func:`lookahead_probs`). Returns the hook handles. The backbone must run eager attention
    (SDPA returns no probabilities)."""
    if getattr(encoder.backbone.config, "_attn_implementation", None) != "eager":
        raise ValueError("attention-based scores need eager attention (model.attn_implementation=eager)")
    layers = transformer_layers(encoder.backbone)
    feed.reset()
    feed.lookahead = functools.partial(lookahead_probs, _attention_module(layers[0])) if 0 in encoder.gate_layers else None

    def hook(module, args, output):
        probs = _attention_probs(output)
        if probs is None:
            raise RuntimeError("attention module returned no probabilities; eager attention is required")
        feed.accumulate(probs)

    handles = [encoder.backbone.register_forward_pre_hook(lambda module, args: feed.reset())]
    handles += [_attention_module(layer).register_forward_hook(hook) for layer in layers[: max(encoder.gate_layers)]]
    return handles


@contextlib.contextmanager
def eager_attention(backbone: nn.Module) -> Iterator[None]:
    """Within the block the backbone runs eager attention (it returns probabilities); restored after."""
    before = getattr(backbone.config, "_attn_implementation", None)
    if before != "eager":
        backbone.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before and getattr(backbone.config, "_attn_implementation", None) != before:
            backbone.set_attn_implementation(before)


# ---------------------------------------------------------------------------- selectors
@dataclass
class Selector:
    """Base selector: ``with selector(encoder): ...`` makes ``encoder`` rank tokens by
    :meth:`score` at every gate; budgets, protection and physical removal are unchanged.
    A subclass overrides :meth:`score` (and :meth:`attach` if it needs set-up, as attention does)."""

    def score(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Scores (B, T) of the hidden states ``h`` (B, T, d) entering a gate; ``weight`` (B, T) > 0 marks
        valid tokens. Higher is kept first."""
        raise NotImplementedError

    def attach(self, encoder, stack: contextlib.ExitStack) -> None:
        """Set-up for one application to ``encoder``, its undo pushed on ``stack`` (none by default)."""

    @contextlib.contextmanager
    def __call__(self, encoder) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            self.attach(encoder, stack)
            previous = encoder.selector
            encoder.selector = self
            stack.callback(setattr, encoder, "selector", previous)
            yield


@dataclass
class TrainedScorer(Selector):
    """The encoder's own trained scorer at every gate — ours, or LTP's thresholds in an LTP run
    (``method=gate`` at evaluation). Applying it changes nothing."""

    @contextlib.contextmanager
    def __call__(self, encoder) -> Iterator[None]:
        yield


@dataclass
class RandomSelector(Selector):
    """Uniform random scores: random pruning at exactly M tokens. The generator is reseeded with
    ``seed`` every time the selector is applied, so each application draws the same scores."""

    seed: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator, init=False, repr=False, compare=False)

    def attach(self, encoder, stack: contextlib.ExitStack) -> None:
        self.generator.manual_seed(self.seed)

    def score(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.rand(h.shape[:2], generator=self.generator, device="cpu").to(h.device)


@dataclass
class FirstSelector(Selector):
    """score_t = −t: keeps the first M tokens (truncation). Order is preserved by every gather, so
    the current index orders tokens as the original positions do."""

    def score(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return -torch.arange(h.shape[1], device=h.device, dtype=torch.float32).expand(h.shape[:2])


@dataclass
class L2NormSelector(Selector):
    """score_t = ‖h_t‖₂ (kvpress's KnormPress scores keys by their norm; here the hidden state)."""

    def score(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return h.float().norm(dim=-1)


@dataclass
class AttentionReceivedSelector(Selector):
    """score_t = s_t, the attention token t received (:class:`AttentionFeed`). Inside the block the
    backbone runs eager attention and hooks feed its probabilities; both are undone after."""

    feed: AttentionFeed = field(default_factory=AttentionFeed, init=False, repr=False, compare=False)

    def attach(self, encoder, stack: contextlib.ExitStack) -> None:
        stack.enter_context(eager_attention(encoder.backbone))
        for handle in feed_attention(encoder, self.feed):
            stack.callback(handle.remove)

    def score(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.feed.importance(h, weight)


SELECTORS: dict[Method, type[Selector]] = {
    Method.gate: TrainedScorer,
    Method.random: RandomSelector,
    Method.first: FirstSelector,
    Method.l2: L2NormSelector,
    Method.attention: AttentionReceivedSelector,
}

def selector_for(method: Method | str, seed: int = 0) -> Selector:
    """The selector of ``method`` (a name of ``SELECTORS``); ``seed`` seeds the random one."""
    if method not in SELECTORS:
        raise ValueError(f"unknown selection method {method!r}; valid: {', '.join(SELECTORS)}")
    cls = SELECTORS[Method(method)]
    return cls(seed=seed) if cls is RandomSelector else cls()


# ---------------------------------------------------------------------------- LTP, a trained scorer
class LTPScorer(nn.Module):
    """LTP (Kim et al. 2022, Learned Token Pruning): a learned threshold θ_ℓ per gated layer on the
    attention-received importance s_t; the soft mask σ((s_t − θ_ℓ)/τ) is trained with a fixed
    λ penalty on the mean mask (our fixed-λ term with ``optim.dual_lr = 0``), not a constraint.

        log α_t = (N·s_t − θ_ℓ) / τ      (N·s_t: importance relative to the mean, 1 on average)

    At inference our encoder keeps the top-M by log α — the same exact budget as every method.
    ``feed`` (shared by the gates of one encoder) supplies s_t; it is not part of the state dict."""

    def __init__(self, feed: AttentionFeed, temperature: float = 0.1, init_threshold: float = 0.0) -> None:
        super().__init__()
        self.feed = feed
        self.temperature = temperature
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """log α = (s·N − θ)/τ: importance relative to the mean (N valid keys), so θ and τ do not
        depend on the sequence length."""
        n = (weight > 0).sum(1, keepdim=True).to(h.dtype)
        return (self.feed.importance(h, weight) * n - self.threshold) / self.temperature


def install_ltp(encoder, temperature: float = 0.1) -> list:
    """Replace ``encoder``'s gates by :class:`LTPScorer` modules, permanently, and feed them
    attention probabilities (eager attention is switched on). Returns the hook handles."""
    if getattr(encoder.backbone.config, "_attn_implementation", None) != "eager":
        encoder.backbone.set_attn_implementation("eager")
    feed = AttentionFeed()
    encoder.gates = nn.ModuleList(LTPScorer(feed, temperature) for _ in encoder.gate_layers)
    return feed_attention(encoder, feed)
