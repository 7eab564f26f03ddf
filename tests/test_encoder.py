"""The wrapper on stock Hugging Face encoders: hard path == stock model on the retained
sub-sequence, ρ = 1 == stock model, soft zero gates remove tokens from attention."""

import math

import pytest
import torch

from retention.budget import Budget
from retention.encoder import RetentionEncoder, transformer_layers
from retention.backbones import build_backbone

from .retention_fixtures import ARCHS, CLS, SEP, batch, tiny, wrap

def reference_on_subsequence(model, ids, mask, gate_layer, positions, valid):
    """Stock layers run on the gathered sub-sequence, starting from the stock hidden state entering the gated layer."""
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[gate_layer]
        h = hs.gather(1, positions[..., None].expand(-1, -1, hs.shape[-1]))
        add = torch.zeros(valid.shape).masked_fill(~valid, torch.finfo(torch.float32).min)[:, None, None, :]
        for layer in list(transformer_layers(model))[gate_layer:]:
            h = layer(h, None if bool(valid.all()) else add)
            h = h[0] if isinstance(h, tuple) else h
    return h


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gate_layer", [0, 1, 2])
def test_hard_forward_equals_backbone_on_gathered_subsequence(arch, gate_layer):
    model = tiny(arch)
    ids, mask = batch()
    enc = wrap(model, [gate_layer], 0.3)
    with torch.no_grad():
        out = enc(ids, mask, mode="hard")
    n_valid = mask.sum(1)
    assert out.valid.sum(1).tolist() == [max(2, -(-3 * int(n) // 10)) for n in n_valid]
    ref = reference_on_subsequence(model, ids, mask, gate_layer, out.positions, out.valid)
    torch.testing.assert_close(out.last_hidden_state[out.valid], ref[out.valid], atol=1e-5, rtol=1e-4)
    assert out.last_hidden_state.shape[1] == int(out.valid.sum(1).max())  # physically shorter


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_gate_at_embeddings_equals_stock_model_on_kept_ids_with_original_positions(arch):
    model = tiny(arch)
    ids, mask = batch(pad=False)
    enc = wrap(model, [0], 0.5)
    with torch.no_grad():
        out = enc(ids, mask, mode="hard")
        pos = out.positions
        offset = model.config.pad_token_id + 1 if arch == "roberta" else 0  # RoBERTa numbers positions from padding_idx+1
        ref = model(input_ids=ids.gather(1, pos), position_ids=pos + offset).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_ratio_one_equals_stock_model(arch, attn):
    model = tiny(arch, attn=attn)
    ids, mask = batch()
    enc = wrap(model, [1, 2], 1.0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for mode in ("hard", "dense"):
            out = enc(ids, mask, mode=mode)
            assert torch.equal(out.positions[out.valid].view(-1), torch.nonzero(mask)[:, 1])
            torch.testing.assert_close(out.last_hidden_state[out.valid], ref[mask.bool()], atol=1e-5, rtol=1e-4)


def test_cumulative_linear_schedule_counts():
    model = tiny("bert")
    ids, mask = batch()
    enc = wrap(model, [0, 1, 2], 0.25, schedule="linear")
    with torch.no_grad():
        out = enc(ids, mask, mode="hard", restore=True)
    n = mask.sum(1)
    for k, frac in enumerate([0.75, 0.5, 0.25]):
        assert out.retained_counts[k].tolist() == [max(2, -(-int(frac * 100) * int(v) // 100)) for v in n]
    # drop-and-restore: a full-length tensor, kept rows equal the final states
    r = out.restored_hidden_state
    assert r.shape[:2] == ids.shape
    torch.testing.assert_close(r.gather(1, out.positions[..., None].expand(-1, -1, r.shape[-1]))[out.valid],
                               out.last_hidden_state[out.valid])


@pytest.mark.parametrize("arch", ARCHS)
def test_soft_zero_gate_removes_token_from_attention(arch):
    model = tiny(arch)
    ids, mask = batch(pad=False)
    enc = wrap(model, [1], 0.75)  # M = 18 of 24: soft evaluation keeps the top-M, the 18 not forced to −30
    drop = torch.zeros_like(mask, dtype=torch.bool)
    drop[:, 3:9] = True
    gate = enc.gates[0]

    def force(module, args, out):  # log α = -30 for dropped tokens, +30 otherwise
        return torch.where(drop, torch.full_like(out, -30.0), torch.full_like(out, 30.0))

    handle = gate.register_forward_hook(force)
    with torch.no_grad():
        soft = enc(ids, mask, mode="soft").last_hidden_state
        # reference: the same stock model where the dropped tokens are masked out from layer 1 on
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
        keep = ~drop
        add = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)[:, None, None, :]
        h = hs
        for layer in list(transformer_layers(model))[1:]:
            h = layer(h, add)
            h = h[0] if isinstance(h, tuple) else h
    handle.remove()
    torch.testing.assert_close(soft[keep], h[keep], atol=1e-4, rtol=1e-3)


def test_soft_training_path_gradients_reach_gates_and_expected_retention():
    model = tiny("bert").train()
    ids, mask = batch()
    enc = wrap(model, [1], 0.3).train()
    out = enc(ids, mask, mode="auto")
    assert out.last_hidden_state.shape[:2] == ids.shape  # length unchanged while training
    (out.last_hidden_state[:, 0].sum() + out.expected_retention.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.gates.parameters())
    # ĝ = mean_b Σ_t P(z̃ > 0)/T_valid, P = σ(log α − β·log(−γ/ζ)) (β = 2/3, γ = −0.1, ζ = 1.1); [CLS]/[SEP] count 1
    p = torch.sigmoid(out.log_alpha[0].detach() - (2 / 3) * math.log(0.1 / 1.1))
    p = torch.where(torch.isin(ids, torch.tensor([CLS, SEP])), 1.0, p) * mask
    torch.testing.assert_close(out.expected_retention.detach(), (p.sum(1) / mask.sum(1)).mean().reshape(1))


def test_expected_and_achieved_retention_on_each_path():
    """Scorer v = 0, bias −3: log α = −3 for every token. Soft (eval mode): ĝ = mean_b of
    (n_prot + (n − n_prot)·P(z̃ > 0 | −3)) / n, and the achieved fraction counts open gates: the hard
    path's top-M, ⌈0.3·n⌉ / n (Louizos' deterministic gate, clamp(1.2·σ(−3) − 0.1, 0, 1) = 0, would
    keep only [CLS] and [SEP]). Hard: ⌈0.3·n⌉ / n, no ĝ. Dense: 1 and 1."""
    enc = wrap(tiny("bert"), [1], 0.3)
    torch.nn.init.zeros_(enc.gates[0].v.weight)
    torch.nn.init.constant_(enc.gates[0].v.bias, -3.0)
    ids, mask = batch()
    n = mask.sum(1).double()
    p = float(enc.relaxation.prob_nonzero(torch.tensor(-3.0)))
    with torch.no_grad():
        soft, hard, dense = (enc(ids, mask, mode=mode) for mode in ("soft", "hard", "dense"))
    torch.testing.assert_close(soft.expected_retention, torch.tensor([((2 + (n - 2) * p) / n).mean().item()]))
    top_m = torch.tensor([(torch.ceil(0.3 * n - 1e-6) / n).mean().item()])
    torch.testing.assert_close(soft.achieved_retention, top_m)
    assert hard.expected_retention is None
    torch.testing.assert_close(hard.achieved_retention, top_m)
    assert dense.expected_retention.tolist() == dense.achieved_retention.tolist() == [1.0]


def test_unsupported_model_type_lists_supported():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    with pytest.raises(ValueError, match="supported: bart, bert, distilbert, roberta, t5"):
        RetentionEncoder(model, [0], Budget(ratio=0.5))


def test_gate_layer_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        RetentionEncoder(tiny("bert"), [3], Budget(ratio=0.5))


def test_gate_is_small_relative_to_minilm():
    model = build_backbone("minilm")
    enc = RetentionEncoder(model, [1], Budget(ratio=0.3))
    gate = sum(p.numel() for p in enc.gates.parameters())
    backbone = sum(p.numel() for p in model.parameters())
    assert gate / backbone < 0.02


@pytest.mark.parametrize("schedule, flops", [("constant", None), ("linear", None), ("linear", 0.45)])
def test_gates_started_at_the_budget_expect_each_gates_share_of_it(schedule, flops):
    """start_at_budget(T): with the scorer's v = 0, every token's P(kept) at gate k is M_k / M_{k−1}, so on
    full sequences of T tokens with nothing protected the soft path's ĝ_k = Π_j p_j is M_k / T, the hard
    path's achieved retention (ratio schedules and a FLOPs budget alike)."""
    gates = [0, 1, 2]
    enc = RetentionEncoder(tiny("bert"), gates, Budget(ratio=0.3, schedule=schedule, num_layers=3, flops=flops))
    ids, mask = batch(t=40, pad=False)
    biases = enc.start_at_budget(40)
    for gate in enc.gates:
        torch.nn.init.zeros_(gate.v.weight)
    with torch.no_grad():
        soft, hard = enc(ids, mask, mode="soft"), enc(ids, mask, mode="hard")
    # (a gate whose share is 1 starts at p = 1 − 1e-4, still trainable: two of them cost 2e-4 of ĝ)
    torch.testing.assert_close(soft.expected_retention, hard.achieved_retention.float(), rtol=0, atol=2.5e-4)
    assert [g.v.bias.detach().item() for g in enc.gates] == pytest.approx(biases)
    if schedule == "constant":  # one drop at the first gate, ⌈0.3·40⌉ = 12 kept: logit(0.3) − 1.599, then wide open
        assert biases[0] == pytest.approx(enc.relaxation.log_alpha_at(0.3)) and biases[1] == biases[2] > 7
