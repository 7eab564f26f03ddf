"""The FLOPs budget (retention/flops.py): the analytic count against torch's FlopCounterMode, and the
budget audit of the hard path on random padded batches (FLOPs from the lengths the layers actually
ran on ≤ F·dense per sequence, within one token of it where the integers allow)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from retention.budget import Budget
from retention.encoder import RetentionEncoder, transformer_layers
from retention.flops import (EncoderShape, dense_flops, encoder_shape, flops_fraction, flops_keep_counts, forward_flops,
                             host_flops_counts,
                             gate_flops, kept_lengths_for_flops, layer_flops, layer_lengths)
from retention.gate import ContextScorer

from .retention_fixtures import CLS, SEP, tiny


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_encoder(layers=4, gates=(0, 2), flops=0.4, ratio=0.3, schedule="linear", attn="eager", hidden=None):
    enc = RetentionEncoder(tiny("bert", layers=layers, attn=attn), gates,
                           Budget(ratio=ratio, schedule=schedule, num_layers=len(gates), flops=flops),
                           protected_token_ids=[CLS, SEP], scorer_hidden=hidden)
    for g in enc.gates:  # informative random scores
        torch.nn.init.normal_(g.v.weight, std=1.0)
    return enc.eval()


@pytest.mark.parametrize("n", [1, 7, 24])
def test_layer_flops_match_the_flop_counter(n):
    """One stock BERT layer (eager attention: torch's counter has no formula for the CPU SDPA kernel)
    on n tokens: the counted FLOPs equal layer(n) = 8·n·d² + 4·n·d·d_ff + 4·n²·d."""
    model = tiny("bert", layers=1, attn="eager")
    layer = transformer_layers(model)[0]
    shape = encoder_shape(model.config)
    with torch.no_grad():
        got = counted(lambda: layer(torch.randn(1, n, 32)))
    assert got == layer_flops(n, shape) == 8 * n * 32 * 32 + 4 * n * 32 * 64 + 4 * n * n * 32


@pytest.mark.parametrize("context", ["mean", "running", "none"])
def test_gate_flops_match_the_flop_counter(context):
    shape = EncoderShape(1, 32, 64, 32, gate_layers=(0,), gate_hidden=12, gate_context=context)
    scorer = ContextScorer(32, 12, context)
    with torch.no_grad():
        got = counted(lambda: scorer(torch.randn(1, 9, 32), torch.ones(1, 9)))
    assert got == gate_flops(9, shape)


def test_the_whole_hard_forward_counts_what_the_analytic_forward_says():
    """A single sequence through the wrapped encoder: the hard forward's counted FLOPs (layers and
    gates) equal forward(M) at the kept counts, the dense forward's equal dense, and their ratio is
    at most F."""
    enc = flops_encoder(layers=4, gates=(0, 2), flops=0.45)
    ids = torch.randint(7, 50, (1, 40))
    ids[0, 0], ids[0, -1] = CLS, SEP
    n = torch.tensor([40])
    with torch.no_grad():
        hard = counted(lambda: enc(ids, mode="hard"))
        out = enc(ids, mode="hard")
        dense = counted(lambda: enc(ids, mode="dense"))
    counts = torch.stack(out.retained_counts)
    assert hard == int(forward_flops(counts, n, enc.flops_shape)[0])
    assert dense == int(dense_flops(n, enc.flops_shape)[0])
    assert hard <= 0.45 * dense
    assert float(out.flops_fractions[0]) == pytest.approx(hard / dense)


def layer_run_lengths(enc, ids, mask):
    """(L, B): per layer, how many real tokens of each sequence it attended over (from the key mask
    the attention module received, or its width when there is none)."""
    seen = []

    def hook(module, args):
        hidden, key_mask = args[0], args[1]
        if key_mask is None:
            seen.append(torch.full((hidden.shape[0],), hidden.shape[1]))
        elif key_mask.dtype == torch.bool:  # the stock SDPA mask: True = attend
            seen.append(key_mask[:, 0, 0, :].sum(-1))
        else:  # additive: 0 (or a bias) = attend, the dtype's minimum = padding
            seen.append((key_mask[:, 0, 0, :] > torch.finfo(key_mask.dtype).min / 2).sum(-1))

    handles = [layer.attention.register_forward_pre_hook(hook) for layer in transformer_layers(enc.backbone)]
    try:
        with torch.no_grad():
            out = enc(ids, mask, mode="hard")
    finally:
        for h in handles:
            h.remove()
    return torch.stack(seen), out


@pytest.mark.parametrize("seed", range(6))
def test_budget_audit_on_random_padded_batches(seed):
    """Random B, T, paddings, protected counts, gates, schedules and F: for every sequence the FLOPs of
    the lengths its layers actually ran on are ≤ F·dense, and no gate could keep one more token
    without passing F·dense (or keeping more than the gate before it) — unless even the floor
    (the protected tokens, at least 1) costs more than F, where every gate keeps exactly the floor."""
    g = torch.Generator().manual_seed(seed)
    layers = int(torch.randint(2, 5, (1,), generator=g))
    n_gates = int(torch.randint(1, layers + 1, (1,), generator=g))
    gates = sorted(torch.randperm(layers, generator=g)[:n_gates].tolist())
    # above the share of the dense layers before the first gate, which no selection can save
    share = gates[0] / layers
    flops = float(torch.empty(1).uniform_(share + 0.35 * (1 - share), 0.95, generator=g))
    schedule = ["constant", "linear"][seed % 2]
    enc = flops_encoder(layers=layers, gates=gates, flops=flops, schedule=schedule, attn=["eager", "sdpa"][seed % 2])
    b, t = int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(4, 60, (1,), generator=g))
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths[:, None]).long()
    ids = torch.randint(7, 50, (b, t), generator=g).masked_fill(mask == 0, 0)
    extra = torch.rand(b, t, generator=g) < 0.15  # more protected tokens, as multi-query batches have
    ids[extra & (mask == 1)] = SEP
    ids[:, 0] = CLS
    ran, out = layer_run_lengths(enc, ids, mask)
    shape = enc.flops_shape
    n_valid, n_prot = lengths, ((ids == CLS) | (ids == SEP)).logical_and(mask == 1).sum(1)
    counts = torch.stack(out.retained_counts)
    assert torch.equal(ran, layer_lengths(counts, n_valid, shape))  # the layers ran on the kept counts
    limit = flops * dense_flops(n_valid, shape)
    spent = forward_flops(counts, n_valid, shape)
    floor = torch.minimum(n_prot.clamp_min(1), n_valid)
    feasible = forward_flops(floor.expand_as(counts), n_valid, shape) <= limit
    assert feasible[0]  # the full-length sequence: the draw tests the budget, not only the floor
    for i in range(b):
        if not feasible[i]:
            assert torch.equal(counts[:, i], floor[i].expand(len(gates)))
            continue
        assert spent[i] <= limit[i]
        for k in range(len(gates)):
            cap = n_valid[i] if k == 0 else counts[k - 1, i]
            if counts[k, i] < cap:
                more = counts[:, i:i + 1].clone()
                more[k] += 1
                assert forward_flops(more, n_valid[i:i + 1], shape)[0] > limit[i], (k, counts[:, i])
    assert torch.allclose(out.flops_fractions, spent / dense_flops(n_valid, shape))


def test_counts_keep_the_schedules_shape():
    """A falling (linear) schedule stays falling under a FLOPs budget, and a tighter F keeps fewer
    tokens at every gate."""
    enc = flops_encoder(layers=6, gates=(0, 2, 4), flops=0.5, schedule="linear")
    shape, n, prot = enc.flops_shape, torch.tensor([200]), torch.tensor([2])
    loose = flops_keep_counts(enc.budget, shape, n, prot)[:, 0]
    tight = flops_keep_counts(Budget(ratio=0.3, schedule="linear", num_layers=3, flops=0.25), shape, n, prot)[:, 0]
    assert loose[0] > loose[1] > loose[2] and tight[0] > tight[1] > tight[2]
    assert (tight < loose).all()


def test_the_host_plan_carries_the_same_counts_and_output():
    enc = flops_encoder(layers=4, gates=(0, 1, 3), flops=0.35)
    ids = torch.randint(7, 50, (3, 30))
    mask = (torch.arange(30) < torch.tensor([[30], [22], [9]])).long()
    ids = ids.masked_fill(mask == 0, 0)
    ids[:, 0] = CLS
    plan = enc.host_plan(mask.sum(1), (ids == CLS).sum(1), padded_length=30)
    with torch.no_grad():
        planned, plain = enc(ids, mask, mode="hard", plan=plan), enc(ids, mask, mode="hard")
    assert torch.equal(plan.counts, torch.stack(plain.retained_counts))
    assert torch.equal(torch.stack(planned.retained_counts), plan.counts)
    assert torch.allclose(planned.last_hidden_state, plain.last_hidden_state)


def test_soft_path_reports_a_differentiable_expected_flops_fraction():
    """One sequence: the expected FLOPs fraction is forward(ĝ_ℓ·T) / dense, and its gradient closes gates."""
    enc = flops_encoder(layers=3, gates=(0, 1), flops=0.5).train()
    ids = torch.randint(7, 50, (1, 16))
    ids[:, 0] = CLS
    out = enc(ids, mode="soft")
    n = torch.tensor([16])
    expected = flops_fraction(out.expected_retention.detach().unsqueeze(1) * n, n, enc.flops_shape)
    assert out.expected_flops.requires_grad
    assert float(out.expected_flops.detach()[0]) == pytest.approx(float(expected[0]), rel=1e-6)
    out.expected_flops.sum().backward()
    assert float(enc.gates[0].v.bias.grad) > 0  # raising log α raises the expected FLOPs
    # the per-gate targets are the FLOPs counts' fractions: what evaluation keeps
    counts = flops_keep_counts(enc.budget, enc.flops_shape, n, torch.ones(1, dtype=torch.long))
    assert torch.allclose(out.targets, (counts / 16.0).mean(1).float())


def test_kept_lengths_for_a_flops_target_on_minilm_shapes():
    """The Pareto helper's function: MiniLM-L6 sizes, gates at 0, 2, 4, T = 512, F = 0.25: falling
    lengths whose FLOPs are at most a quarter of the dense forward's, within one token."""
    shape = EncoderShape(6, 384, 1536, 384, gate_layers=(0, 2, 4), gate_hidden=192)
    lengths = kept_lengths_for_flops(0.25, 512, shape)
    assert lengths[0] == lengths[1] > lengths[2] == lengths[3] > lengths[4] == lengths[5] >= 2
    counts = torch.tensor(lengths[::2]).unsqueeze(1)
    n = torch.tensor([512])
    assert forward_flops(counts, n, shape)[0] <= 0.25 * dense_flops(n, shape)[0]
    assert forward_flops(counts + torch.tensor([[1], [0], [0]]), n, shape)[0] > 0.25 * dense_flops(n, shape)[0]


@pytest.mark.parametrize("kwargs", [dict(ratio=None, tokens=8, flops=0.5), dict(ratio=0.3, flops=0.0), dict(ratio=0.3, flops=1.5)])
def test_budget_rejects_a_flops_budget_without_a_ratio_or_out_of_range(kwargs):
    with pytest.raises(ValueError, match="FLOPs budget"):
        Budget(**kwargs)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_batched_counts_equal_the_memoised_per_sequence_ones(schedule):
    """The batched bisection (what an accelerator runs, nothing read back) gives every sequence of a
    mixed batch the counts the host computes for it alone (the CPU path and host plans)."""
    g = torch.Generator().manual_seed(3)
    n = torch.randint(1, 300, (16,), generator=g)
    prot = torch.minimum(torch.randint(0, 6, (16,), generator=g), n)
    shape = EncoderShape(6, 384, 1536, 384, gate_layers=(0, 2, 4), gate_hidden=192)
    budget = Budget(ratio=0.3, schedule=schedule, num_layers=3, flops=0.3)
    assert torch.equal(flops_keep_counts(budget, shape, n, prot, max_length=300), host_flops_counts(budget, shape, n, prot))
