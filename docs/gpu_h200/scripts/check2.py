"""Second device check: is the CUDA soft path's key-bias gradient right? Compare, with every dropout off and
the same sampled gates, the gradients of (stock SDPA with a grad-requiring mask, default kernels = what
retention runs on CUDA), (fold, retention/fastpath.py's folded column), (fold padded to a head dim multiple
of 8) against the reference: stock SDPA forced onto the math kernel, fp32. Then time + peak memory
dense / stock / fold / fold_pad8 (interleaved). Writes JSON to argv[1]."""
import json
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import retention.fastpath as fp
from retention.bench import BenchSpec, _autocast, build_encoder, make_inputs

dev = "cuda" if torch.cuda.is_available() else "cpu"
ORIG = fp._is_key_bias


def fold_anywhere(mask, key):
    return (mask is not None and mask.requires_grad and mask.is_floating_point() and mask.dim() == 4
            and mask.shape[1] == 1 and mask.shape[2] == 1 and mask.shape[-1] == key.shape[-2])


def fold(module, query, key, value, attention_mask, **kw):
    fp._is_key_bias = fold_anywhere
    try:
        return fp.soft_gate_sdpa(module, query, key, value, attention_mask, **kw)
    finally:
        fp._is_key_bias = ORIG


def fold_pad8(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
    if not fold_anywhere(attention_mask, key):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kw)
    b, h, t_q, d = query.shape
    t_k = key.shape[-2]
    pad = -(d + 1) % 8
    scale = scaling if scaling is not None else d ** -0.5
    bias = attention_mask.clamp_min(fp._MASKED_BIAS).to(query.dtype)
    q = torch.cat([query, query.new_ones(b, h, t_q, 1), query.new_zeros(b, h, t_q, pad)], dim=-1)
    k = torch.cat([key, (bias / scale).transpose(-1, -2).expand(b, h, t_k, 1), key.new_zeros(b, h, t_k, pad)], dim=-1)
    v = torch.cat([value, value.new_zeros(b, h, t_k, 1 + pad)], dim=-1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale, is_causal=False)[..., :d]
    return out.transpose(1, 2).contiguous(), None


def stock(module, query, key, value, attention_mask, **kw):
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)


VARIANTS = {"stock": stock, "fold": fold, "fold_pad8": fold_pad8}
if len(sys.argv) > 2 and sys.argv[2] == "verify":  # the branch's retention/fastpath.py as shipped
    VARIANTS = {"stock": stock, "shipped": fp.soft_gate_sdpa}


def use(name):
    AttentionInterface.register(fp.SOFT_GATE_ATTENTION, VARIANTS[name])


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def step(enc, ids, prot, spec, mode):
    with _autocast(spec):
        out = enc(ids, None, protected=prot, mode=mode)
        loss = out.last_hidden_state[:, 0].float().square().mean() + out.expected_retention.sum()
    loss.backward()
    sync()
    return loss.detach()


def setup(backbone, length, batch, autocast, **kw):
    spec = BenchSpec(backbone=backbone, lengths=(length,), batch_sizes=(batch,), ratios=(0.3,), device=dev,
                     autocast=autocast, **kw)
    enc, _ = build_encoder(spec, 0.3)
    enc.train()
    ids, prot = make_inputs(spec, enc.backbone.config.vocab_size, length, batch)
    return spec, enc, ids, prot


def grad_check(backbone, length, batch, **kw):
    spec, enc, ids, prot = setup(backbone, length, batch, "off", **kw)
    for m in enc.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    res = {}

    def run(name, math=False):
        use(name)
        torch.manual_seed(1)
        enc.zero_grad(set_to_none=True)
        if math:
            with sdpa_kernel([SDPBackend.MATH]):
                loss = step(enc, ids, prot, spec, "soft")
        else:
            loss = step(enc, ids, prot, spec, "soft")
        g = {n: p.grad.detach().double().clone() for n, p in enc.named_parameters() if p.grad is not None}
        enc.zero_grad(set_to_none=True)
        return loss.item(), g

    ref_loss, ref = run("stock", math=True)
    res["ref_loss"] = ref_loss
    for name in VARIANTS:
        loss, g = run(name)
        gate = [n for n in ref if n.startswith("gates")]
        # per-parameter error relative to that parameter's largest reference gradient, floored at 1e-4 of the
        # largest gradient of all (a key projection's bias has an analytically zero gradient: softmax ignores it)
        top = max(ref[n].abs().max().item() for n in ref)
        rel = {n: ((g[n] - ref[n]).abs().max() / max(ref[n].abs().max().item(), 1e-4 * top)).item() for n in ref}
        worst = max(rel, key=rel.get)
        res[name] = {"loss": loss, "max_rel_grad_err": rel[worst], "worst_param": worst,
                     "gate_max_rel_grad_err": max(rel[n] for n in gate) if gate else None,
                     "backbone_max_rel_grad_err": max((rel[n] for n in ref if not n.startswith("gates")), default=None)}
    # determinism of the reference itself
    _, ref2 = run("stock", math=True)
    top = max(ref[n].abs().max().item() for n in ref)
    res["ref_repeat_max_rel"] = max(((ref2[n] - ref[n]).abs().max() / max(ref[n].abs().max().item(), 1e-4 * top)).item() for n in ref)
    rec = {"check": "grad", "backbone": backbone, "T": length, "B": batch, **kw, **res}
    print(json.dumps(rec), flush=True)
    return rec


def timing(backbone, length, batch, autocast, reps, variants=tuple(VARIANTS), **kw):
    spec, enc, ids, prot = setup(backbone, length, batch, autocast, **kw)
    rec = {"check": "time", "backbone": backbone, "T": length, "B": batch, "autocast": autocast, **kw}
    fns = {"dense": lambda: step(enc, ids, prot, spec, "dense")}
    for name in variants:
        fns[name] = (lambda n: (lambda: (use(n), step(enc, ids, prot, spec, "soft"))))(name)
    for name, fn in fns.items():
        try:
            fn()
            enc.zero_grad(set_to_none=True)
            if dev == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            fn()
            if dev == "cuda":
                rec[f"{name}_peak_MB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            enc.zero_grad(set_to_none=True)
        except Exception as err:  # noqa: BLE001
            rec[f"{name}_error"] = repr(err)[:200]
    times = {k: [] for k in fns}
    names = list(fns)
    for rep in range(3 + reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            t = time.perf_counter() - t0
            enc.zero_grad(set_to_none=True)
            if rep >= 3:
                times[k].append(t)
    for k, v in times.items():
        rec[f"{k}_ms"] = round(1e3 * statistics.median(v), 3)
    for k in variants:
        rec[f"{k}_over_dense"] = round(rec[f"{k}_ms"] / rec["dense_ms"], 3)
    print(json.dumps(rec), flush=True)
    return rec


def sync_check(backbone, length, batch, **kw):
    """Where the hard (retained) and dense forwards synchronise the host with the GPU (torch sync debug mode)."""
    import warnings
    spec, enc, ids, prot = setup(backbone, length, batch, "auto", **kw)
    enc.eval()
    rec = {"check": "sync", "backbone": backbone, "T": length, "B": batch}
    for mode in ("dense", "hard"):
        with torch.inference_mode(), _autocast(spec):
            enc(ids, None, protected=prot, mode=mode)  # warm
            sync()
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                if dev == "cuda":
                    torch.cuda.set_sync_debug_mode(1)
                try:
                    enc(ids, None, protected=prot, mode=mode)
                finally:
                    if dev == "cuda":
                        torch.cuda.set_sync_debug_mode(0)
        import traceback
        rec[f"{mode}_syncs"] = len(w)
        rec[f"{mode}_sync_sites"] = sorted({f"{x.filename.split('site-packages/')[-1]}:{x.lineno}: {str(x.message)[:60]}" for x in w})
    print(json.dumps(rec), flush=True)
    return rec


if __name__ == "__main__":
    out = sys.argv[1]
    small = len(sys.argv) > 2 and sys.argv[2] == "small"
    tiny = dict(layers=3, hidden=64, heads=2, intermediate=128, vocab=1000)
    if small:
        jobs = [(sync_check, ("random", 64, 2), dict(layers=2, hidden=64, heads=2, vocab=1000)),
                (grad_check, ("random", 64, 2), dict(layers=2, hidden=64, heads=2, vocab=1000)),
                (timing, ("random", 64, 2, "off", 2), dict(layers=2, hidden=64, heads=2, vocab=1000))]
    else:
        jobs = [(sync_check, ("minilm", 512, 8), {}), (grad_check, ("random", 512, 8), tiny), (grad_check, ("minilm", 512, 4), {}),
                (grad_check, ("random", 128, 2), dict(layers=2, hidden=64, heads=2, vocab=1000)),
                (timing, ("minilm", 512, 8, "auto", 10), {}), (timing, ("minilm", 512, 8, "off", 10), {}),
                (timing, ("minilm", 2048, 8, "auto", 5), {}), (timing, ("minilm", 2048, 8, "off", 5), {}),
                (timing, ("random", 512, 32, "auto", 10), tiny), (timing, ("random", 512, 32, "off", 10), tiny)]
    if len(sys.argv) > 2 and sys.argv[2] == "sweep":
        jobs = [(timing, ("minilm", t, b, ac, 5 if t * b <= 2048 * 8 else 3), {"variants": ("stock", "fold_pad8")})
                for ac in ("auto", "off") for b in (8, 32) for t in (512, 1024, 2048, 4096)]
    if len(sys.argv) > 2 and sys.argv[2] == "verify":
        v = {"variants": ("stock", "shipped")}
        jobs = [(grad_check, ("random", 512, 8), tiny), (grad_check, ("minilm", 512, 4), {}),
                *[(timing, ("minilm", t, b, ac, 5 if t * b <= 2048 * 8 else 3), v)
                  for ac in ("auto", "off") for b in (8, 32) for t in (512, 2048, 4096)],
                (timing, ("random", 512, 32, "auto", 10), {**tiny, **v}), (timing, ("random", 512, 32, "off", 10), {**tiny, **v})]
    results = []
    for fn, args, kw in jobs:
        try:
            results.append(fn(*args, **kw))
        except Exception as err:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            results.append({"job": fn.__name__, "args": args, "error": repr(err)[:500]})
        with open(out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                       "results": results}, f, indent=1)
