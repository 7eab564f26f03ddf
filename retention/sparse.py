"""Sparse-attention comparators: Longformer and BigBird (stock Hugging Face models) at an attention
budget comparable to a retention ratio ρ.

They keep every token and sparsify attention instead, so "comparable" means each query attends to
about ρ·T keys:

* Longformer: a sliding window of ``w`` tokens (w/2 each side, plus the token itself) and global
  attention on [CLS]: keys per query ≈ w + 1, so w = 2·⌊ρ·T/2⌋;
* BigBird (block-sparse): each query block attends 3 sliding + 2 global + r random blocks of size b:
  keys per query = (5 + r)·b; with r = 3, b is the power of two nearest ρ·T/8 (b ≥ 16), and T must
  exceed (5 + 2r)·b or BigBird falls back to full attention (an error here instead).

:class:`SparseAttentionEncoder` presents the interface the Lightning systems use from a
:class:`retention.encoder.RetentionEncoder` (``backbone``, ``gates``, ``gate_layers``, ``budget``, ``forward``
returning a :class:`retention.encoder.RetentionOutput`) and always runs the sparse model on every token; its
``achieved_retention`` is the attended-key fraction, the x-coordinate at which it is compared.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from .backbones import position_offset
from .budget import Budget
from .encoder import RetentionOutput
from .methods import Method

__all__ = ["SPARSE_ARCHS", "SPARSE_METHODS", "sparse_attention_config", "attention_fraction", "SparseAttentionEncoder", "build_sparse_encoder"]

SPARSE_ARCHS = ("longformer", "big_bird")
# the sparse comparator ``Method`` -> its Hugging Face architecture
SPARSE_METHODS = {Method.longformer: "longformer", Method.bigbird: "big_bird"}
_BIGBIRD_RANDOM_BLOCKS = 3


def _bigbird_block(ratio: float, seq_len: int) -> int:
    return max(16, 2 ** round(math.log2(max(1.0, ratio * seq_len / (5 + _BIGBIRD_RANDOM_BLOCKS)))))


def attention_fraction(arch: str, ratio: float, seq_len: int) -> float:
    """Keys attended per query over T, for the config :func:`sparse_attention_config` builds."""
    if arch == "longformer":
        return min(1.0, (2 * max(1, int(ratio * seq_len / 2)) + 1) / seq_len)
    return min(1.0, (5 + _BIGBIRD_RANDOM_BLOCKS) * _bigbird_block(ratio, seq_len) / seq_len)


def sparse_attention_config(arch: str, ratio: float, seq_len: int, vocab_size: int, hidden_size: int,
                            num_layers: int, num_heads: int, intermediate_size: int):
    """A small random-init Longformer / BigBird config whose queries attend to ≈ ρ·T keys."""
    if arch not in SPARSE_ARCHS:
        raise ValueError(f"sparse comparator {arch!r} is not supported; supported: {', '.join(SPARSE_ARCHS)}")
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, intermediate_size=intermediate_size,
                  attention_probs_dropout_prob=0.0)
    if arch == "longformer":
        window = 2 * max(1, int(ratio * seq_len / 2))
        # RoBERTa-style positions start at padding_idx + 1; the model pads T up to a multiple of w.
        padded = math.ceil(seq_len / window) * window
        return AutoConfig.for_model("longformer", attention_window=[window] * num_layers,
                                    max_position_embeddings=padded + position_offset("longformer"), pad_token_id=1,
                                    **common)
    block = _bigbird_block(ratio, seq_len)
    if seq_len <= (5 + 2 * _BIGBIRD_RANDOM_BLOCKS) * block:
        raise ValueError(f"BigBird block-sparse attention needs T > {(5 + 2 * _BIGBIRD_RANDOM_BLOCKS) * block} "
                         f"for rho = {ratio} (block {block}); T = {seq_len} would fall back to full attention")
    padded = math.ceil(seq_len / block) * block
    return AutoConfig.for_model("big_bird", attention_type="block_sparse", block_size=block,
                                num_random_blocks=_BIGBIRD_RANDOM_BLOCKS, max_position_embeddings=padded,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=2, **common)


class SparseAttentionEncoder(nn.Module):
    """A Longformer / BigBird backbone behind the retention encoder's interface (no gates: every
    token is kept on every path; ``mode`` is accepted and ignored)."""

    def __init__(self, backbone: nn.Module, fraction: float, gate_layers: list[int],
                 protected_token_ids: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        self.fraction = fraction
        self.gate_layers = list(gate_layers)
        self.budget = Budget(ratio=fraction, num_layers=len(self.gate_layers))
        self.gates = nn.ModuleList()
        self.register_buffer("protected_token_ids", torch.tensor(sorted(set(protected_token_ids)), dtype=torch.long),
                             persistent=False)

    @property
    def num_gates(self) -> int:
        return len(self.gate_layers)

    def adapt_dense_state(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """A dense BERT-family checkpoint's tensors (names under ``prefix``) mapped onto this model,
        for a warm start from the same dense model our method starts from (``model.init_from``).
        BigBird uses BERT's names and shapes as they are. Longformer needs the Longformer paper's
        recipe (it started from RoBERTa): position rows copied after its offset of 2 (RoBERTa-style
        positions start at padding_idx + 1), the global query/key/value projections initialised from
        the local ones, token type 0 taken for its single type. Returns the updated copy."""
        if self.backbone.config.model_type != "longformer":
            return state
        state = dict(state)
        own = self.backbone.state_dict()
        pos = f"{prefix}embeddings.position_embeddings.weight"
        if pos in state and state[pos].shape[1] == own["embeddings.position_embeddings.weight"].shape[1]:
            table = own["embeddings.position_embeddings.weight"].clone()
            off = position_offset("longformer")
            n = min(state[pos].shape[0], table.shape[0] - off)
            table[off:off + n] = state[pos][:n]
            state[pos] = table
        types = f"{prefix}embeddings.token_type_embeddings.weight"
        if types in state:
            state[types] = state[types][: own["embeddings.token_type_embeddings.weight"].shape[0]]
        for name in own:
            for kind in ("query", "key", "value"):
                if f".{kind}_global." in name:
                    local = prefix + name.replace(f".{kind}_global.", f".{kind}.")
                    if local in state:
                        state.setdefault(prefix + name, state[local])
        return state

    def protected_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(input_ids, self.protected_token_ids)

    def forward(self, input_ids, attention_mask=None, protected=None, mode: str = "auto", restore: bool = False,
                plan=None, **kwargs) -> RetentionOutput:
        """``plan`` (a retained forward's host plan) is ignored: nothing is selected here."""
        b, t = input_ids.shape
        kwargs = dict(kwargs)
        if self.backbone.config.model_type == "longformer":
            glob = torch.zeros_like(input_ids)
            glob[:, 0] = 1  # [CLS] attends and is attended globally, as Longformer does for classification
            kwargs["global_attention_mask"] = glob
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        valid = torch.ones(b, t, dtype=torch.bool, device=input_ids.device) if attention_mask is None else attention_mask.bool()
        frac = torch.full((self.num_gates,), self.fraction, device=input_ids.device)
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        hidden = out.last_hidden_state
        return RetentionOutput(hidden, positions, valid, achieved_retention=frac, targets=frac,
                               restored_hidden_state=hidden if restore else None,
                               kept_fractions=frac.unsqueeze(1).expand(-1, b))


def build_sparse_encoder(arch: str, ratio: float, seq_len: int, vocab_size: int, hidden_size: int, num_layers: int,
                         num_heads: int, intermediate_size: int, gate_layers: list[int],
                         protected_token_ids: tuple[int, ...] = ()) -> SparseAttentionEncoder:
    cfg = sparse_attention_config(arch, ratio, seq_len, vocab_size, hidden_size, num_layers, num_heads, intermediate_size)
    model = AutoModel.from_config(cfg, attn_implementation="eager")
    return SparseAttentionEncoder(model, attention_fraction(arch, ratio, seq_len), gate_layers, protected_token_ids)
