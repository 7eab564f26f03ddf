"""The soft path's key bias folded into SDPA's head dimension: the same outputs and gradients as the
stock eager attention, and no SDPA call receives a mask that requires grad (the math-path fallback)."""

import os
import shutil

import pytest
import torch

from retention.budget import Budget
from retention.encoder import RetentionEncoder, transformer_layers
from retention.backbones import build_backbone
from retention import fastpath
from retention.fastpath import SOFT_GATE_ATTENTION, compile_layers

from .retention_fixtures import ARCHS, CLS, SEP, batch, tiny, wrap


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
    # float64: some true gradients are ~1e-10 (a bias before a LayerNorm, with most keys gated off);
    # float32 leaves rounding noise of ~1e-3 on them in both paths
    fast, ref = wrapped(arch, "sdpa").double(), wrapped(arch, "eager").double()
    assert fast.backbone.config._attn_implementation == SOFT_GATE_ATTENTION
    ids, mask = batch(pad=pad)

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
    ids, mask = batch()
    with torch.no_grad():
        for mode in ("dense", "hard"):
            a, b = fast(ids, mask, mode=mode), ref(ids, mask, mode=mode)
            torch.testing.assert_close(a.last_hidden_state[a.valid], b.last_hidden_state[b.valid], atol=1e-4, rtol=1e-4)


def _compiled_twin(backend: str):
    """Two identical wrapped encoders, the second with its transformer layers compiled."""
    ref, enc = wrap(tiny("bert"), [1], 0.3), wrap(tiny("bert"), [1], 0.3)
    compile_layers(transformer_layers(enc.backbone), backend=backend)
    return ref, enc


def _assert_same_outputs(ref, enc):
    """Every path, and a second sequence length (the compiled layers are dynamic in T)."""
    with torch.no_grad():
        for (ids, mask), mode in [(batch(), "hard"), (batch(), "soft"), (batch(), "dense"), (batch(t=40), "hard")]:
            a, b = enc(ids, mask, mode=mode), ref(ids, mask, mode=mode)
            assert torch.equal(a.positions, b.positions)
            torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_compile_layers_compiles_exactly_the_transformer_layers():
    """Dynamo's own ``eager`` backend (no C++ toolchain needed): the layers' insides run compiled;
    the embeddings and the retention pre-hooks, which gather and mask between layers, run outside."""
    ref, enc = _compiled_twin("eager")
    seen = []
    layers = transformer_layers(enc.backbone)
    enc.backbone.embeddings.register_forward_hook(lambda m, a, o: seen.append(("embeddings", torch.compiler.is_compiling())))
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: seen.append((f"pre{i}", torch.compiler.is_compiling())))
        layer.intermediate.register_forward_hook(lambda m, a, o, i=i: seen.append((f"inside{i}", torch.compiler.is_compiling())))
    ids, mask = batch()
    with torch.no_grad():
        enc(ids, mask, mode="hard")
    assert dict(seen) == {"embeddings": False, **{f"pre{i}": False for i in range(3)}, **{f"inside{i}": True for i in range(3)}}
    _assert_same_outputs(ref, enc)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor on CPU needs a C++ compiler")
def test_compile_layers_with_inductor_equals_eager():
    """The default backend (inductor): the same outputs as the uncompiled encoder, to float tolerance (~45 s on CPU)."""
    _assert_same_outputs(*_compiled_twin("inductor"))
