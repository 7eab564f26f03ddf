"""The soft path's key bias folded into SDPA's head dimension: the same outputs and gradients as the
stock eager attention, and no SDPA call receives a mask that requires grad (the math-path fallback)."""

import pytest
import torch

from retention import Budget, RetentionEncoder
from retention.backbones import build_backbone
from retention import fastpath
from retention.fastpath import SOFT_GATE_ATTENTION

from .helpers import ARCHS, CLS, SEP, encoder_batch


def wrapped(arch, attn):
    torch.manual_seed(0)
    bb = build_backbone("random", attn_implementation=attn, arch=arch, vocab_size=50, hidden_size=32, num_layers=3,
                        num_heads=4, intermediate_size=64, max_positions=64)
    torch.manual_seed(1)
    enc = RetentionEncoder(bb, [1], Budget(ratio=0.3), protected_token_ids=[CLS, SEP])
    for g in enc.gates:
        torch.nn.init.normal_(g.v.weight, std=1.0)
    return enc.eval()  # soft path with deterministic gates; dropout off


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("align", [1, 8])  # 8: the head-dimension padding used on CUDA, run here on CPU
def test_soft_path_matches_eager_in_values_and_gradients(arch, pad, align, monkeypatch):
    monkeypatch.setattr(fastpath, "_head_align", lambda query: align)
    fast, ref = wrapped(arch, "sdpa"), wrapped(arch, "eager")
    assert fast.backbone.config._attn_implementation == SOFT_GATE_ATTENTION
    ids, mask = encoder_batch(pad=pad)

    sdpa = torch.nn.functional.scaled_dot_product_attention
    grad_masks = []

    def spy(*args, **kwargs):
        m = kwargs.get("attn_mask")
        grad_masks.append(m is not None and m.requires_grad)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    outs, grads = [], []
    for enc in (fast, ref):
        out = enc(ids, mask, mode="soft")
        loss = (out.last_hidden_state * out.valid[..., None]).square().sum() + out.expected_retention.sum()
        loss.backward()
        outs.append(out.last_hidden_state)
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert len(grad_masks) == 3 and not any(grad_masks)  # the fast path called SDPA, never with a grad mask
    valid = mask.bool()
    torch.testing.assert_close(outs[0][valid], outs[1][valid], atol=1e-4, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("gates.") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-3, msg=name)


def test_dense_and_hard_paths_use_stock_sdpa_unchanged():
    fast, ref = wrapped("bert", "sdpa"), wrapped("bert", "eager")
    ids, mask = encoder_batch()
    with torch.no_grad():
        for mode in ("dense", "hard"):
            a, b = fast(ids, mask, mode=mode), ref(ids, mask, mode=mode)
            torch.testing.assert_close(a.last_hidden_state[a.valid], b.last_hidden_state[b.valid], atol=1e-4, rtol=1e-4)
