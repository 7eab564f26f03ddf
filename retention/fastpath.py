"""Keeping the gated paths fast on stock Hugging Face attention.

* :func:`soft_gate_sdpa` — the soft path's key bias log(z̃ + ε) is a float attention mask that
  requires grad. No CPU kernel of ``scaled_dot_product_attention`` returns a mask gradient, so
  SDPA falls back to its math path, which materialises the (B, heads, T, T) scores and
  probabilities in both directions (profiled: that fallback was most of the gated step's extra
  cost). The bias is instead folded into one extra head dimension, exactly:

      scale·(q·k_s) + b_s = scale·([q, 1] · [k_s, b_s / scale])

  so the fused (flash) kernel runs without a mask and returns the bias gradient as the
  gradient of that extra key column. On CUDA the memory-efficient kernel does accept a mask that
  requires grad, but measured on an H200 (docs/performance.md, "GPU") that step cost 1.9–3.0× the
  dense step under bf16 autocast at T ≥ 2048 and up to twice its memory; the fold costs
  1.08–1.26× there (and 3–13 % more than the mask call in host-bound steps at T 512), so it is
  used on every device. CUDA's fused kernels need a head dimension that is a multiple of 8 (with
  d + 1 = 33, fp32 fell back to the math path: 22 GB at T 2048, B 8), so there q, k, v are
  zero-padded to the next multiple of 8 — zero columns add nothing to q·k and their output columns
  are dropped.
* :func:`use_soft_gate_attention` points a backbone that uses ``sdpa`` at :func:`soft_gate_sdpa`
  (registered with transformers' ``AttentionInterface``, the stack's own extension point); every
  other call — dense, hard path, masks without grad — is the stock SDPA function unchanged.
* :func:`compile_layers` — optional ``torch.compile`` of each transformer layer's ``forward``
  (the retention hooks stay outside the compiled region; ``dynamic=True`` because the retained
  length changes with T and ρ).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

__all__ = ["SOFT_GATE_ATTENTION", "soft_gate_sdpa", "use_soft_gate_attention", "compile_layers"]

SOFT_GATE_ATTENTION = "retention_sdpa"

# A padding key's bias is dtype-min in the mask; in the folded key column it is divided by the
# scale and multiplied in the kernel, so it is clamped to a finite value whose exp is still 0.
_MASKED_BIAS = -1.0e4

# CUDA's flash and memory-efficient SDPA kernels need the head dimension to be a multiple of this.
_CUDA_HEAD_ALIGN = 8


def _head_align(query: torch.Tensor) -> int:
    """The multiple the folded head dimension d + 1 is zero-padded to: 8 on CUDA, 1 (no padding) elsewhere."""
    return _CUDA_HEAD_ALIGN if query.is_cuda else 1


def _is_key_bias(mask: torch.Tensor | None, key: torch.Tensor) -> bool:
    """A (B, 1, 1, T_k) float mask that requires grad: the soft path's key bias."""
    return (
        mask is not None
        and mask.requires_grad
        and mask.is_floating_point()
        and mask.dim() == 4
        and mask.shape[1] == 1
        and mask.shape[2] == 1
        and mask.shape[-1] == key.shape[-2]
    )


def soft_gate_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                   is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention, with a soft-gate key bias folded into the head dimension (see module doc)."""
    if not _is_key_bias(attention_mask, key) or kwargs.get("position_bias") is not None or query.shape[1] != key.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    b, h, t_q, d = query.shape
    t_k = key.shape[-2]
    scale = scaling if scaling is not None else d ** -0.5
    bias = attention_mask.clamp_min(_MASKED_BIAS).to(query.dtype)  # (B, 1, 1, T_k)
    pad = -(d + 1) % _head_align(query)  # zero columns: nothing added to q·k, output columns dropped
    q = torch.cat([query, query.new_ones(b, h, t_q, 1), *([query.new_zeros(b, h, t_q, pad)] if pad else [])], dim=-1)
    k = torch.cat([key, (bias / scale).transpose(-1, -2).expand(b, h, t_k, 1),
                   *([key.new_zeros(b, h, t_k, pad)] if pad else [])], dim=-1)
    v = torch.cat([value, value.new_zeros(b, h, t_k, 1 + pad)], dim=-1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, scale=scale, is_causal=False
    )[..., :d]
    return out.transpose(1, 2).contiguous(), None


def register_soft_gate_attention() -> None:
    """Register :func:`soft_gate_sdpa` under ``SOFT_GATE_ATTENTION`` with transformers' attention
    (and mask) interfaces. Runs on import of this module, so every process that unpickles a wrapped
    backbone (a ``ddp_spawn`` worker, a DataLoader worker) knows the name before its first forward."""
    AttentionInterface.register(SOFT_GATE_ATTENTION, soft_gate_sdpa)
    AttentionMaskInterface.register(SOFT_GATE_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_soft_gate_attention(backbone: nn.Module) -> bool:
    """Switch a backbone whose attention is ``sdpa`` to :func:`soft_gate_sdpa`; True if switched."""
    config = backbone.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    config._attn_implementation = SOFT_GATE_ATTENTION
    return True


register_soft_gate_attention()


def compile_layers(layers: nn.ModuleList, **compile_kwargs) -> None:
    """``torch.compile`` each layer's ``forward`` in place (hooks run outside the compiled code)."""
    compile_kwargs.setdefault("dynamic", True)
    for layer in layers:
        layer.forward = torch.compile(layer.forward, **compile_kwargs)
