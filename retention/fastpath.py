"""Keeping the gated paths fast on stock Hugging Face attention.

* :func:`soft_gate_sdpa` — the soft path's key bias log(z̃ + ε) is a float attention mask that
  requires grad. No CPU kernel of ``scaled_dot_product_attention`` returns a mask gradient, so
  SDPA falls back to its math path, which materialises the (B, heads, T, T) scores and
  probabilities in both directions (profiled: that fallback was most of the gated step's extra
  cost). The bias is instead folded into one extra head dimension, exactly:

      scale·(q·k_s) + b_s = scale·([q, 1] · [k_s, b_s / scale])

  so the fused (flash) kernel runs without a mask and returns the bias gradient as the
  gradient of that extra key column. On CUDA the memory-efficient kernel accepts a mask that
  requires grad, so the stock call is kept there.
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

__all__ = ["SOFT_GATE_ATTENTION", "soft_gate_sdpa", "use_soft_gate_attention", "compile_layers"]

SOFT_GATE_ATTENTION = "retention_sdpa"

# A padding key's bias is dtype-min in the mask; in the folded key column it is divided by the
# scale and multiplied in the kernel, so it is clamped to a finite value whose exp is still 0.
_MASKED_BIAS = -1.0e4


def _is_key_bias(mask: torch.Tensor | None, key: torch.Tensor) -> bool:
    """A (B, 1, 1, T_k) float mask that requires grad on CPU: the soft path's key bias."""
    return (
        mask is not None
        and mask.requires_grad
        and mask.is_floating_point()
        and mask.device.type == "cpu"
        and mask.dim() == 4
        and mask.shape[1] == 1
        and mask.shape[2] == 1
        and mask.shape[-1] == key.shape[-2]
    )


def soft_gate_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                   is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention, with a soft-gate key bias folded into the head dimension (see module doc)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _is_key_bias(attention_mask, key) or kwargs.get("position_bias") is not None or query.shape[1] != key.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    b, h, t_q, d = query.shape
    t_k = key.shape[-2]
    scale = scaling if scaling is not None else d ** -0.5
    bias = attention_mask.clamp_min(_MASKED_BIAS).to(query.dtype)  # (B, 1, 1, T_k)
    q = torch.cat([query, query.new_ones(b, h, t_q, 1)], dim=-1)
    k = torch.cat([key, (bias / scale).transpose(-1, -2).expand(b, h, t_k, 1)], dim=-1)
    v = torch.cat([value, value.new_zeros(b, h, t_k, 1)], dim=-1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, scale=scale, is_causal=False
    )[..., :d]
    return out.transpose(1, 2).contiguous(), None


def register_soft_gate_attention() -> None:
    """Register :func:`soft_gate_sdpa` under ``SOFT_GATE_ATTENTION`` with transformers' attention
    (and mask) interfaces. Runs on import of this module, so every process that unpickles a wrapped
    backbone (a ``ddp_spawn`` worker, a DataLoader worker) knows the name before its first forward."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

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
