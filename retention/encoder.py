"""Adaptive Retention on a stock Hugging Face encoder, through forward pre-hooks.

No model code is copied or edited. Like a kvpress "press", :class:`RetentionEncoder` registers
forward pre-hooks on the stock transformer layers for the duration of one forward pass
(a context manager), and each hook rewrites that layer's ``(hidden_states, attention_mask)``:

* at a **gated layer** ℓ the scorer gives every current token log α_t and
  - *soft path* (training, and soft evaluation): the sequence length is unchanged; the token is
    scaled by its cumulative gate, H ← H ⊙ z̃, and every later layer's keys get the additive bias
    log(z̃ + ε), so a zero gate removes the token from all later attention. In training z̃ is
    sampled; in evaluation the hard path's top-M tokens get E[z̃ | z̃ > 0] and the others 0;
  - *hard path* (inference): exactly M_ℓ = ⌈ρ_ℓ·T_valid⌉ tokens (protected ones included) are
    kept, in their original order, and the rest are **physically removed**: the hidden states
    are gathered into a shorter tensor, and every later layer runs on it. Position information
    is preserved because absolute position embeddings were already added at the embedding layer.
* at every later layer the hook substitutes the attention mask of the current (shorter or
  soft-gated) sequence for the one the stock model computed for the full sequence.

**Drop-and-restore** (``restore=True``; "Drop-and-Restore" of the Length-Adaptive Transformer, Kim &
Cho, ACL 2021), for heads that read every position (extractive QA). With h_{ℓ_k} the state *entering*
gated layer ℓ_k (k = 1..K), h_L the encoder's final state, and z̃_k the cumulative gate after gate k
(z̃_0 = 1), the restored state of a token is

    h_restored = z̃_K·h_L + Σ_k (z̃_{k−1} − z̃_k)·h_{ℓ_k}

* hard path: z̃ ∈ {0, 1}, so exactly one term is non-zero: a kept token gets its final state, a token
  dropped at gate k the state it entered that gate with (LAT's restored token), scattered back to its
  original position.
* soft path: the same formula with the soft gates, so training reads what inference restores: with
  one gate h_restored = z·h_L + (1 − z)·h_ℓ; a closed gate (z̃ = 0) gives exactly the hard path's
  restored state, an open one (z̃ = 1 everywhere) the dense path's final state, and the gates get
  a gradient through the mix (its direct part, h_L − h_ℓ per unit of z for one gate, beside the
  paths through the later layers' inputs and attention bias). z̃ is the gate value the soft path
  uses (sampled in training, the relaxation's deterministic value in soft evaluation).

**Host synchronisation.** Given a host plan (:meth:`RetentionEncoder.host_plan`, from the batch's
host-side valid lengths and protected counts), no path reads anything back from the device: the
retained widths M_max (hard path, and soft evaluation's top-M) and whether a key mask is needed come
from the host (:class:`retention.selection.HostPlan`), and the stock model gets the wrapper's own key
mask (from a 2-d mask it would ask ``padding_mask.all()``), so an accelerator's queue never drains
mid-forward.

**FLOPs budget** (``budget.flops = F``, :mod:`retention.flops`): the hard path and soft evaluation
keep the integer M_ℓ of :func:`retention.flops.flops_keep_counts` (the ratio schedule's shape
scaled so the sequence's retained forward costs at most F times its dense forward), the per-gate
targets ρ_ℓ are those M_ℓ / T_valid, and every path reports each sequence's FLOPs fraction
(``flops_fractions``; the soft path also ``expected_flops``, from the expected kept lengths).

(This file is about 500 lines, over the usual 400: the hooks, both gate paths, the host plan and the
forward share ``_State``, and splitting them would pass that state across modules.)

"Gate at layer ℓ" means the gate acts on the hidden states *entering* transformer layer ℓ
(ℓ = 0: the embeddings); layer ℓ and all later layers see only retained tokens. Gates are
cumulative: a token dropped at one gated layer stays dropped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

from .budget import Budget, expected_retention, keep_counts, retention_per_sequence, threshold_counts
from .fastpath import SOFT_GATE_ATTENTION, use_soft_gate_attention
from .flops import EncoderShape, encoder_shape, flops_fraction, flops_keep_counts, host_flops_counts
from .gate import ContextScorer
from .hard_concrete import HardConcrete, Relaxation
from .selection import HostPlan, gather_tokens, host_plan, scatter_tokens, select_top_m

__all__ = ["RetentionEncoder", "RetentionOutput", "SEQ2SEQ_MODEL_TYPES", "SUPPORTED_MODEL_TYPES", "transformer_layers"]

Mode = Literal["auto", "soft", "hard", "dense"]
# Hard-path rule: exactly M = ⌈ρ·T_valid⌉ (ours) or every token with P(kept) ≥ ½ (ablation).
INFERENCE_RULES = ("top_m", "threshold")

# model_type -> attribute path of the nn.ModuleList of transformer layers. Every layer here is
# called as layer(hidden_states, attention_mask, ...) by its stock encoder loop.
_LAYER_PATHS = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "distilbert": "transformer.layer",
    # Encoder–decoder models: the wrapper takes the model's *encoder stack* (``model.get_encoder()``,
    # a BartEncoder / T5Stack whose config carries the same model_type), not the whole model.
    "bart": "layers",
    "t5": "block",
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_LAYER_PATHS))
SEQ2SEQ_MODEL_TYPES = ("bart", "t5")
"""Model types whose gates sit in the encoder stack of an encoder–decoder model (summarization)."""
_SUPPORTED_ATTENTION = ("eager", "sdpa", SOFT_GATE_ATTENTION)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stock model's list of transformer layers, or a clear error for an unsupported model."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _LAYER_PATHS:
        raise ValueError(
            f"model type {model_type!r} is not supported by the retention wrapper; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    obj: object = model
    for name in _LAYER_PATHS[model_type].split("."):
        obj = getattr(obj, name)
    assert isinstance(obj, nn.ModuleList)
    return obj


@dataclass
class RetentionOutput:
    """What a retention forward returns.

    ``last_hidden_state`` (B, T_out, d): T_out = T on the soft and dense paths, the retained
    length M_max on the hard path. ``positions`` (B, T_out): original position of each row.
    ``valid`` (B, T_out): real (non-padding) rows.
    ``achieved_retention`` (K,): per gated layer, the achieved fraction of valid tokens still in
    play, mean over the batch of ``kept_fractions`` (K, B), each sequence's fraction — soft path:
    gate open (cumulative z̃ > 0); hard path: retained (M_ℓ / T_valid); dense path: 1.
    ``targets`` (K,): ρ_ℓ for this batch.
    ``expected_retention`` (K,): ĝ_ℓ, the mean of the cumulative P(z̃ > 0) over valid tokens,
    differentiable — the left-hand side of the budget constraint; soft path, and 1 on the dense
    path (every P(kept) = 1). None on the hard path, which samples nothing: its fraction is
    ``achieved_retention``.
    ``log_alpha``: per gated layer, the scores of the tokens that entered it (B, T_ℓ).
    ``retained_counts``, hard path: per gated layer, the tokens retained per sequence (B,).
    ``restored_hidden_state`` (B, T, d), only with ``restore=True`` on the soft and hard paths:
    h_restored of the module docstring (drop-and-restore) — hard path: every dropped token's state
    entering the gate that dropped it, scattered back to its original position; soft path: the
    gate-weighted mix of final and entering states.
    """

    last_hidden_state: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    achieved_retention: torch.Tensor
    targets: torch.Tensor
    expected_retention: torch.Tensor | None = None
    log_alpha: list[torch.Tensor] = field(default_factory=list)
    retained_counts: list[torch.Tensor] = field(default_factory=list)
    restored_hidden_state: torch.Tensor | None = None
    gate_values: torch.Tensor | None = None  # soft path: cumulative z̃ (B, T) after the last gate
    kept_fractions: torch.Tensor | None = None
    # FLOPs budgets only: each sequence's forward(M) / dense (B,) — hard: the kept counts; soft: the
    # open gates' lengths; dense: 1 — and, soft path, the same from the expected lengths ĝ_ℓ·T_valid
    # (differentiable: the left-hand side of the FLOPs constraint)
    flops_fractions: torch.Tensor | None = None
    expected_flops: torch.Tensor | None = None


@dataclass
class _State:
    """Per-forward bookkeeping shared by the hooks."""

    hard: bool
    sample: bool
    restore: bool
    valid: torch.Tensor  # (B, T_cur) bool
    protected: torch.Tensor  # (B, T_cur) bool
    positions: torch.Tensor  # (B, T_cur) long
    n_valid: torch.Tensor  # (B,) original valid counts
    n_protected: torch.Tensor  # (B,)
    z_cum: torch.Tensor | None = None  # soft: (B, T)
    p_cum: torch.Tensor | None = None  # soft: (B, T)
    mask: torch.Tensor | None = None
    expected: list[torch.Tensor] = field(default_factory=list)  # soft: ĝ_ℓ
    achieved: list[torch.Tensor] = field(default_factory=list)  # achieved retention per gate and sequence (B,)
    log_alpha: list[torch.Tensor] = field(default_factory=list)
    counts: list[torch.Tensor] = field(default_factory=list)
    restore_buffer: torch.Tensor | None = None  # hard: states entering the gates (B, T, d); soft: Σ_k (z̃_{k−1} − z̃_k)·h_{ℓ_k}
    plan: HostPlan | None = None  # host-side lengths: the retained widths, so nothing is read back
    flops_counts: torch.Tensor | None = None  # FLOPs budget: M_ℓ per gate and sequence (K, B)
    expected_seq: list[torch.Tensor] = field(default_factory=list)  # FLOPs budget, soft: per-sequence ĝ_ℓ (B,)


class RetentionEncoder(nn.Module):
    """A stock HF encoder with Adaptive Retention gates at ``gate_layers``.

    ``forward(mode=...)``: ``"auto"`` is the soft path with sampled gates in training mode and the
    hard top-M path in eval mode; ``"soft"`` forces the soft path (sampled in training mode; in
    eval mode the top-M tokens masked in place, scaled by E[z̃ | z̃ > 0]); ``"hard"`` forces top-M
    removal; ``"dense"`` runs the stock model untouched (the same weights, nothing dropped).

    ``relaxation`` is the gate distribution of the soft path (Hard-Concrete by default).
    ``selector``: None, or a :class:`retention.baselines.Selector` applied with ``with
    selector(encoder):``, whose ``score(h, weight)`` then replaces the trained gates' scores.
    """

    def __init__(self, backbone: nn.Module, gate_layers: Sequence[int], budget: Budget, relaxation: Relaxation | None = None,
                 protected_token_ids: Sequence[int] = (), scorer_hidden: int | None = None, context: str = "mean",
                 running_decay: float = 0.9, init_log_alpha: float = 2.0, bias_eps: float = 1e-6,
                 inference: str = "top_m") -> None:
        super().__init__()
        if inference not in INFERENCE_RULES:
            raise ValueError(f"inference must be one of {', '.join(INFERENCE_RULES)}, got {inference!r}")
        self.inference = inference
        layers = transformer_layers(backbone)
        attn = getattr(backbone.config, "_attn_implementation", None) or "eager"
        if attn not in _SUPPORTED_ATTENTION:
            raise ValueError(f"attention implementation {attn!r} is not supported; use one of {_SUPPORTED_ATTENTION}")
        gate_layers = sorted(set(int(i) for i in gate_layers))
        if not gate_layers:
            raise ValueError("gate_layers must name at least one layer")
        for i in gate_layers:
            if not 0 <= i < len(layers):
                raise ValueError(f"gate layer {i} is out of range; the model has layers 0..{len(layers) - 1}")
        if budget.num_layers != len(gate_layers):
            raise ValueError(f"budget has {budget.num_layers} layer targets for {len(gate_layers)} gated layers")
        use_soft_gate_attention(backbone)  # sdpa: keeps the soft path on the fused kernel (see fastpath.py)
        self.backbone = backbone
        self.gate_layers = gate_layers
        self.budget = budget
        self.relaxation = relaxation or HardConcrete()
        self.selector = None
        self.bias_eps = bias_eps
        self.register_buffer("protected_token_ids", torch.tensor(sorted(set(protected_token_ids)), dtype=torch.long), persistent=False)
        self.protected_ids = tuple(sorted(set(int(i) for i in protected_token_ids)))  # the host's copy (host plans)
        d = backbone.config.hidden_size
        self.gates = nn.ModuleList(
            ContextScorer(d, scorer_hidden, context, running_decay, init_log_alpha) for _ in gate_layers
        )
        self._state: _State | None = None
        # T5: block 0 computes a relative position bias from the (current) sequence length and
        # passes it to every later block; after a hard gate it must come from original positions.
        # (In transformers 5.x the attention mask is passed to every block separately, not folded into
        # the bias, so the soft path's key bias needs no T5-specific handling.)
        self._t5 = backbone.config.model_type == "t5"
        if budget.flops is not None:
            self.flops_shape  # a model type whose FLOPs are unknown fails here, not at the first forward

    @property
    def flops_shape(self) -> EncoderShape:
        """The sizes of this encoder's FLOPs (:mod:`retention.flops`), the gates' scoring included."""
        gate = self.gates[0]
        return encoder_shape(self.backbone.config, self.gate_layers, gate.W.out_features, gate.context)

    @property
    def num_gates(self) -> int:
        return len(self.gate_layers)

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def _hooked(self, state: _State) -> Iterator[None]:
        layers = transformer_layers(self.backbone)
        gate_of = {layer: k for k, layer in enumerate(self.gate_layers)}
        handles = []
        for idx in range(self.gate_layers[0], len(layers)):

            def hook(module, args, kwargs, _idx=idx):
                return self._pre_layer(gate_of.get(_idx), args, kwargs)

            handles.append(layers[idx].register_forward_pre_hook(hook, with_kwargs=True))
        self._state = state
        try:
            yield
        finally:
            self._state = None
            for h in handles:
                h.remove()

    def _pre_layer(self, gate: int | None, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        state = self._state
        assert state is not None
        hidden = args[0] if args else kwargs.pop("hidden_states")
        args = args[1:]
        if gate is not None:
            hidden = self._apply_gate(gate, hidden, state)
        if "attention_mask" in kwargs or not args:
            kwargs["attention_mask"] = state.mask
        else:
            args = (state.mask,) + args[1:]
        if gate is not None and state.hard and self._t5:
            # T5Stack passes position_bias positionally after the mask (or by keyword).
            bias = self._t5_position_bias(state.positions)
            if "position_bias" in kwargs or len(args) < 2:
                kwargs["position_bias"] = bias
            else:
                args = (args[0], bias) + args[2:]
        return (hidden,) + args, kwargs

    def _t5_position_bias(self, positions: torch.Tensor) -> torch.Tensor:
        """T5's bidirectional relative position bias (B, H, M, M) for the retained tokens, from their
        *original* positions: bias[b, :, i, j] = table(bucket(pos[b, j] − pos[b, i])), the same values
        the stock block 0 computes for the full sequence, restricted to the kept rows and columns."""
        attn = transformer_layers(self.backbone)[0].layer[0].SelfAttention  # the block that owns the bias table
        relative = positions[:, None, :] - positions[:, :, None]  # (B, M, M): key − query
        bucket = attn._relative_position_bucket(
            relative, bidirectional=True, num_buckets=attn.relative_attention_num_buckets,
            max_distance=attn.relative_attention_max_distance,
        )
        return attn.relative_attention_bias(bucket).permute(0, 3, 1, 2)

    # ------------------------------------------------------------------ gating
    def _additive_mask(self, valid: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                       full: bool | None = None) -> torch.Tensor | None:
        """(B, 1, 1, T) additive key mask: 0 (or the soft-gate bias) for valid keys, dtype-min for padding.
        ``full``: whether every key is valid, if the host knows (else read from ``valid``, a host sync)."""
        if bias is None:
            if bool(valid.all()) if full is None else full:
                return None  # nothing to mask: lets SDPA pick its fastest kernel
            bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
        return bias.to(dtype).masked_fill(~valid, torch.finfo(dtype).min)[:, None, None, :]

    def _apply_gate(self, k: int, h: torch.Tensor, st: _State) -> torch.Tensor:
        weight = st.valid if st.z_cum is None else st.valid * st.z_cum
        scorer = self.gates[k] if self.selector is None else self.selector.score
        log_alpha = scorer(h, weight).float()
        st.log_alpha.append(log_alpha)
        if st.hard:
            return self._hard_gate(k, h, log_alpha, st)
        keep_prot = st.protected & st.valid
        z = self.relaxation.sample(log_alpha) if st.sample else self._evaluation_gate(k, log_alpha, st)
        p = self.relaxation.prob_nonzero(log_alpha)
        one = torch.ones_like(z)
        z = torch.where(keep_prot, one, z)
        p = torch.where(keep_prot, one, p)
        z_prev = st.z_cum
        st.z_cum = z if st.z_cum is None else st.z_cum * z
        if st.restore:  # Σ_k (z̃_{k−1} − z̃_k)·h_{ℓ_k}: the share of each token that closes at this gate
            closing = (1.0 - st.z_cum) if z_prev is None else (z_prev - st.z_cum)
            share = h * closing.unsqueeze(-1).to(h.dtype)
            st.restore_buffer = share if st.restore_buffer is None else st.restore_buffer + share
        st.p_cum = p if st.p_cum is None else st.p_cum * p
        st.expected.append(expected_retention(st.p_cum, st.valid))
        if st.flops_counts is not None:
            st.expected_seq.append(retention_per_sequence(st.p_cum, st.valid))
        st.achieved.append(retention_per_sequence((st.z_cum > 0).float(), st.valid).detach())
        st.mask = self._additive_mask(st.valid, torch.log(st.z_cum + self.bias_eps), h.dtype)
        return h * st.z_cum.unsqueeze(-1).to(h.dtype)

    def _keep_counts(self, k: int, log_alpha: torch.Tensor, alive: torch.Tensor, protected: torch.Tensor, st: _State) -> torch.Tensor:
        """Tokens kept per sequence at the k-th gate: M_ℓ (or the threshold ablation's count), never
        more than the ``alive`` tokens that survived the earlier gates."""
        if self.inference == "threshold":  # ablation: no exact budget
            counts = threshold_counts(self.relaxation.prob_nonzero(log_alpha), alive, protected)
        elif st.flops_counts is not None:
            counts = st.flops_counts[k]
        else:
            counts = keep_counts(self.budget.layer_ratio(k, st.n_valid), st.n_valid, st.n_protected)
        return torch.minimum(counts, alive.sum(1))

    def _evaluation_gate(self, k: int, log_alpha: torch.Tensor, st: _State) -> torch.Tensor:
        """Soft evaluation's gate: the hard path's selection, masked instead of removed. The top-M_ℓ
        tokens (among those still open) get E[z̃ | z̃ > 0] (:meth:`Relaxation.open_mean`), every
        other token 0, so the soft path keeps what the budget says and scales what it keeps as an
        open training gate does on average (Louizos' deterministic gate would close every token
        with σ(log α) < 1/12, although it is open with probability up to 0.31)."""
        alive = st.valid if st.z_cum is None else st.valid & (st.z_cum > 0)
        protected = st.protected & alive
        width = None if st.plan is None else st.plan.widths[k]  # the hard path's M_max: the same counts
        sel = select_top_m(log_alpha, alive, protected, self._keep_counts(k, log_alpha, alive, protected, st), width)
        b, t = alive.shape  # unused slots write into an extra position T, cut off again
        slots = torch.where(sel.filled, sel.index, torch.full_like(sel.index, t))
        kept = torch.zeros(b, t + 1, dtype=torch.bool, device=alive.device).scatter(1, slots, True)[:, :t]
        return torch.where(kept, self.relaxation.open_mean(log_alpha), torch.zeros_like(log_alpha))

    def _hard_gate(self, k: int, h: torch.Tensor, log_alpha: torch.Tensor, st: _State) -> torch.Tensor:
        counts = self._keep_counts(k, log_alpha, st.valid, st.protected, st)
        sel = select_top_m(log_alpha, st.valid, st.protected, counts, None if st.plan is None else st.plan.widths[k])
        if st.restore:
            st.restore_buffer = (
                h.clone() if st.restore_buffer is None else scatter_tokens(st.restore_buffer, st.positions, h, st.valid)
            )
        h = gather_tokens(h, sel.index)
        st.positions = gather_tokens(st.positions, sel.index)
        st.protected = gather_tokens(st.protected, sel.index) & sel.filled
        st.valid = sel.filled
        st.counts.append(counts)
        st.achieved.append(counts.float() / st.n_valid.clamp_min(1).float())
        st.mask = self._additive_mask(st.valid, None, h.dtype, None if st.plan is None else st.plan.full[k])
        return h

    def start_at_budget(self, length: int) -> list[float]:
        """Start every gate at its share of the budget for a full sequence of ``length`` tokens: gate k's
        bias b (so every token's log α, while v ≈ 0) is set to where P(kept) = p_k = M_k / M_{k−1} (M_{−1} = T;
        the counts :meth:`host_plan` gives, FLOPs budgets included; :meth:`Relaxation.log_alpha_at`), so
        the expected retention ĝ_k = Π_{j≤k} p_j is M_k / T at the first step and the Lagrangian need not
        first close gates that start open. Returns the biases, one per gate."""
        plan = self.host_plan([length], [0] if self.protected_ids else None)
        kept = (length,) + plan.widths
        biases = [self.relaxation.log_alpha_at(kept[k + 1] / max(kept[k], 1)) for k in range(self.num_gates)]
        with torch.no_grad():
            for gate, bias in zip(self.gates, biases):
                gate.v.bias.fill_(bias)
        return biases

    # ------------------------------------------------------------------ forward
    def host_plan(self, lengths: Sequence[int] | torch.Tensor, protected_counts: Sequence[int] | torch.Tensor | None = None,
                  padded_length: int | None = None) -> HostPlan:
        """The hard path's shapes for a batch, from its host-side (Python or CPU) valid lengths
        T_valid and protected counts (:func:`retention.selection.host_plan`), for ``forward(plan=...)``.
        ``padded_length``: the batch's T (default max(lengths)); ``protected_counts`` may be left out
        only when nothing is protected. Built for the current budget; host work only."""
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        if protected_counts is None and self.protected_ids:
            raise ValueError("protected_counts must come with lengths: this encoder protects tokens")
        n_prot = torch.zeros_like(lengths) if protected_counts is None else torch.as_tensor(protected_counts, dtype=torch.long)
        if lengths.device.type != "cpu" or n_prot.device.type != "cpu" or lengths.dim() != 1 or n_prot.shape != lengths.shape:
            raise ValueError("lengths and protected_counts must be host-side, one count per sequence")
        t = int(lengths.max()) if padded_length is None else padded_length
        flops = self.budget.flops is not None and self.inference != "threshold"
        counts = host_flops_counts(self.budget, self.flops_shape, lengths, n_prot) if flops else None
        return host_plan(self.budget, lengths, n_prot, t, threshold=self.inference == "threshold", counts=counts)

    def _flops_counts(self, n_valid: torch.Tensor, n_protected: torch.Tensor, t: int) -> torch.Tensor | None:
        """Under a FLOPs budget (and top-M inference), M_ℓ per gate and sequence (K, B); else None. On
        the CPU from the memoised per-sequence counts; on an accelerator computed there (no read-back)."""
        if self.budget.flops is None or self.inference == "threshold":
            return None
        if n_valid.device.type == "cpu":
            return host_flops_counts(self.budget, self.flops_shape, n_valid, n_protected)
        return flops_keep_counts(self.budget, self.flops_shape, n_valid, n_protected, max_length=t)

    def batch_plan(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   protected: torch.Tensor | None = None) -> HostPlan:
        """:meth:`host_plan` of a batch from its host-side (CPU) tensors, before they move to the device:
        the ``input_ids``, ``attention_mask`` and ``protected`` that :meth:`forward` then gets."""
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        prot = self.protected_mask(input_ids) if protected is None else protected.bool()
        return self.host_plan(valid.sum(1), (prot & valid).sum(1), padded_length=input_ids.shape[1])

    def _check_plan(self, plan: HostPlan, valid: torch.Tensor, prot: torch.Tensor) -> torch.Tensor | None:
        """Check ``plan`` is for this batch and budget (the counts on CPU only: on an accelerator
        that would be the read-back the plan avoids), and return the mask to hand the stock model:
        ``None`` (no padding) or the wrapper's own 4-d additive mask, which transformers uses as
        given (from a 2-d mask it would ask ``padding_mask.all()``, a host sync)."""
        if (plan.t, plan.lengths.shape[0]) != (valid.shape[1], valid.shape[0]) or plan.budget != self.budget \
                or plan.threshold != (self.inference == "threshold"):
            raise ValueError("the host plan was made for another batch shape, budget or inference rule")
        if valid.device.type == "cpu" and not (torch.equal(plan.lengths, valid.sum(1)) and torch.equal(plan.n_protected, prot.sum(1))):
            raise ValueError("the host plan's lengths / protected counts disagree with attention_mask / the protected tokens")
        return None if plan.full_input else self._additive_mask(valid, None, self.backbone.dtype, full=False)

    def protected_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Tokens that are never dropped: those whose id is one of ``protected_token_ids`` (e.g. [CLS], [SEP]).
        A broadcast comparison, not ``torch.isin``: isin sorts and calls ``unique`` (whose output size the
        host reads back on CUDA) once the id list is long for the input, at ≥ 10·(B·T)^0.145 ids
        (34 ids at 4096 tokens: a tokenizer's ``all_special_ids`` can be that long)."""
        if not self.protected_ids:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        ids = self.protected_token_ids
        if ids.device != input_ids.device:  # a host-side batch while the model is on an accelerator
            ids = torch.tensor(self.protected_ids, device=input_ids.device)
        return (input_ids.unsqueeze(-1) == ids).any(-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        protected: torch.Tensor | None = None,
        mode: Mode = "auto",
        restore: bool = False,
        plan: HostPlan | None = None,
        **backbone_kwargs,
    ) -> RetentionOutput:
        """``plan``: the batch's :meth:`host_plan`. With it no path waits on the device (the hard path
        and soft evaluation take their widths from it, every path its key mask); its counts must equal
        ``attention_mask.sum(1)`` and ``(protected & valid).sum(1)`` (checked on CPU, trusted on an
        accelerator)."""
        b, t = input_ids.shape
        device = input_ids.device
        valid = torch.ones(b, t, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
        n_valid = valid.sum(1)
        prot = self.protected_mask(input_ids) if protected is None else protected.bool()
        prot = prot & valid
        if mode == "auto":
            mode = "soft" if self.training else "hard"
        flops_counts = None
        if plan is not None and plan.counts is not None:
            flops_counts = plan.counts.to(device, non_blocking=True)  # from the host: nothing read back
        elif self.budget.flops is not None:
            flops_counts = self._flops_counts(n_valid, prot.sum(1), t)
        targets = (self.budget.targets(n_valid) if flops_counts is None
                   else (flops_counts.double() / n_valid.clamp_min(1)).mean(1).float()).to(device)
        if plan is not None:
            attention_mask = self._check_plan(plan, valid, prot)
        if mode == "dense":
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **backbone_kwargs)
            full = torch.ones(self.num_gates, b, device=device)
            positions = torch.arange(t, device=device).expand(b, t)
            return RetentionOutput(out.last_hidden_state, positions, valid, achieved_retention=full[:, 0], targets=targets,
                                   expected_retention=full[:, 0], kept_fractions=full,
                                   flops_fractions=None if flops_counts is None else full[0].double())
        if mode not in ("soft", "hard"):
            raise ValueError(f"mode must be one of auto, soft, hard, dense; got {mode!r}")
        state = _State(
            plan=plan,
            hard=mode == "hard",
            sample=self.training,
            restore=restore,
            valid=valid,
            protected=prot,
            positions=torch.arange(t, device=device).expand(b, t),
            n_valid=n_valid,
            n_protected=prot.sum(1),
            flops_counts=flops_counts,
        )
        with self._hooked(state):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **backbone_kwargs)
        hidden = out.last_hidden_state
        restored = None
        if state.restore and state.hard:
            restored = scatter_tokens(state.restore_buffer, state.positions, hidden, state.valid)
        elif state.restore:
            restored = state.restore_buffer + hidden * state.z_cum.unsqueeze(-1).to(hidden.dtype)
        kept = torch.stack(state.achieved)
        achieved_flops = expected_flops = None
        if flops_counts is not None:
            shape = self.flops_shape
            lengths = torch.stack(state.counts) if state.hard else (kept.double() * n_valid).round()
            achieved_flops = flops_fraction(lengths, n_valid, shape)
            if state.expected_seq:
                expected_flops = flops_fraction(torch.stack(state.expected_seq) * n_valid, n_valid, shape)
        return RetentionOutput(
            last_hidden_state=hidden,
            positions=state.positions,
            valid=state.valid,
            achieved_retention=kept.mean(1),
            kept_fractions=kept,
            targets=targets,
            expected_retention=torch.stack(state.expected) if state.expected else None,
            log_alpha=state.log_alpha,
            retained_counts=state.counts,
            restored_hidden_state=restored,
            gate_values=state.z_cum,
            flops_fractions=achieved_flops,
            expected_flops=expected_flops,
        )
