"""Baselines behind the budget interface: each keeps exactly M tokens per sequence, physically."""

import dataclasses

import pytest
import torch

from retention.budget import Budget
from retention.encoder import RetentionEncoder
from retention.baselines import SELECTORS, RandomSelector, Selector, TrainedScorer, selector_for
from retention.methods import Method
from retention.backbones import build_backbone

CLS, SEP = 1, 2


def _encoder(arch: str, gate_layers=(1, 2), attn="sdpa") -> RetentionEncoder:
    torch.manual_seed(0)
    bb = build_backbone("random", attn_implementation=attn, arch=arch, vocab_size=60, hidden_size=32,
                        num_layers=3, num_heads=4, intermediate_size=64, max_positions=64)
    enc = RetentionEncoder(bb, gate_layers=list(gate_layers),
                           budget=Budget(ratio=0.5, num_layers=len(gate_layers), schedule="linear"),
                           protected_token_ids=(CLS, SEP))
    return enc.eval()


def _batch(b=4, t=40):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 60, (b, t), generator=g)
    lengths = torch.tensor([40, 33, 25, 40])
    mask = (torch.arange(t) < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(b), lengths - 1] = SEP
    return ids.masked_fill(mask == 0, 0), mask, lengths


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
@pytest.mark.parametrize("method", list(SELECTORS))
def test_every_selector_keeps_exactly_m(method, arch):
    enc = _encoder(arch)
    ids, mask, lengths = _batch()
    with torch.no_grad(), selector_for(method)(enc):
        out = enc(ids, mask, mode="hard")
    for k, layer_counts in enumerate(out.retained_counts):
        expected = enc.budget.targets(lengths)[k]  # per-layer ratio
        m = torch.ceil(expected * lengths - 1e-6).long()
        assert torch.equal(layer_counts, torch.maximum(m, torch.full_like(m, 2)))
    assert out.last_hidden_state.shape[1] == int(out.retained_counts[-1].max())  # physically removed
    assert torch.equal(out.valid.sum(1), out.retained_counts[-1])
    # protected tokens survive every method
    assert ((out.positions == 0) & out.valid).sum(1).eq(1).all()
    assert ((out.positions == (lengths - 1)[:, None]) & out.valid).sum(1).eq(1).all()
    # the learned gates are back after the block
    assert type(enc.gates[0]).__name__ == "ContextScorer"


def test_first_keeps_a_prefix_and_l2_keeps_the_largest_norms():
    enc = _encoder("bert", gate_layers=(1,))
    ids, mask, lengths = _batch()
    with torch.no_grad(), selector_for("first")(enc):
        out = enc(ids, mask, mode="hard")
    for row, n, pos, valid in zip(range(4), lengths, out.positions, out.valid):
        kept = sorted(set(pos[valid].tolist()) - {0, int(n) - 1})
        assert kept == list(range(1, len(kept) + 1))
    with torch.no_grad(), selector_for("l2")(enc):
        out = enc(ids, mask, mode="hard")
        h1 = {}
        layer0 = enc.backbone.encoder.layer[0]
        handle = layer0.register_forward_hook(lambda m, a, o: h1.setdefault("h", o[0] if isinstance(o, tuple) else o))
        enc(ids, mask, mode="dense")
        handle.remove()
    norms = h1["h"].norm(dim=-1)
    n0 = int(lengths[0])
    kept = set(out.positions[0][out.valid[0]].tolist()) - {0, n0 - 1}
    dropped = set(range(1, n0 - 1)) - kept
    assert min(norms[0, list(kept)]) >= max(norms[0, list(dropped)])


def test_attention_selector_switches_to_eager_and_back():
    enc = _encoder("bert", gate_layers=(1,))
    ids, mask, _ = _batch()
    before = enc.backbone.config._attn_implementation
    assert before != "eager"
    with torch.no_grad(), selector_for("attention")(enc):
        assert enc.backbone.config._attn_implementation == "eager"
        enc(ids, mask, mode="hard")
    assert enc.backbone.config._attn_implementation == before
    enc.train()
    enc(ids, mask, mode="soft")  # the restored implementation still runs the soft path


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_attention_selector_at_layer_0_keeps_the_tokens_layer_0_attends_to_most(arch):
    """No layer runs before a gate at layer 0: the scores are layer 0's own attention on all tokens."""
    enc = _encoder(arch, gate_layers=(0,), attn="eager")
    ids, mask, lengths = _batch()
    probs = {}
    attn = next(m for m in enc.backbone.modules() if type(m).__name__.endswith("Attention"))  # layer 0's
    handle = attn.register_forward_hook(lambda m, a, o: probs.update(p=o[1]))  # returns None: output unchanged
    with torch.no_grad():
        enc(ids, mask, mode="dense")
        handle.remove()
        with selector_for("attention")(enc):
            out = enc(ids, mask, mode="hard")
    q = mask.float()
    received = torch.einsum("bqk,bq->bk", probs["p"].mean(1), q) / q.sum(1, keepdim=True)
    for i, n in enumerate(lengths.tolist()):
        kept = set(out.positions[i][out.valid[i]].tolist()) - {0, n - 1}
        dropped = set(range(1, n - 1)) - kept
        assert kept and dropped
        assert min(received[i, sorted(kept)]) >= max(received[i, sorted(dropped)])


def test_one_registry_of_dataclass_selectors_each_overriding_only_score():
    assert tuple(SELECTORS) == Method.selections() == tuple(m for m in Method if m.is_heuristic or m == Method.gate)
    for method, cls in SELECTORS.items():
        assert dataclasses.is_dataclass(cls) and issubclass(cls, Selector)
        if cls is not TrainedScorer:
            assert "score" in vars(cls), method  # its own scoring method ...
            assert "__call__" not in vars(cls), method  # ... applied by the base's context manager
        assert type(selector_for(method)) is cls


def test_applying_a_selector_swaps_the_scores_and_restores_the_encoder_after_an_error():
    enc = _encoder("bert", gate_layers=(1,))
    ids, mask, _ = _batch()
    with torch.no_grad():
        own = enc(ids, mask, mode="hard").positions
        with pytest.raises(RuntimeError, match="inside"), selector_for("first")(enc):
            assert isinstance(enc.selector, Selector)
            raise RuntimeError("inside")
        assert enc.selector is None
        assert torch.equal(enc(ids, mask, mode="hard").positions, own)
        with TrainedScorer()(enc):  # the trained gates: nothing swapped
            assert enc.selector is None and torch.equal(enc(ids, mask, mode="hard").positions, own)


def test_random_selector_draws_the_same_tokens_at_every_application_of_a_seed():
    enc = _encoder("bert", gate_layers=(1,))
    ids, mask, _ = _batch()
    picks = []
    with torch.no_grad():
        for seed in (0, 0, 1):
            with RandomSelector(seed=seed)(enc):
                picks.append(enc(ids, mask, mode="hard").positions)
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])


def test_attention_received_is_not_carried_over_from_a_dense_pass():
    """The feed restarts with every forward: a dense pass before the hard one changes nothing."""
    enc = _encoder("bert", gate_layers=(1, 2), attn="eager")
    ids, mask, _ = _batch()
    with torch.no_grad(), selector_for("attention")(enc):
        alone = enc(ids, mask, mode="hard")
        enc(ids, mask, mode="dense")
        after_dense = enc(ids, mask, mode="hard")
    assert torch.equal(alone.positions, after_dense.positions)
    for a, b in zip(alone.log_alpha, after_dense.log_alpha):
        torch.testing.assert_close(a, b)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="random, first"):
        selector_for("magic")


def test_ltp_thresholds_learn_from_the_soft_mask_and_inference_keeps_exactly_m():
    from retention.baselines import LTPScorer, install_ltp
    from retention.hard_concrete import SigmoidGate

    enc = _encoder("bert", gate_layers=(1,))
    enc.relaxation = SigmoidGate()
    install_ltp(enc, temperature=0.1)
    assert enc.backbone.config._attn_implementation == "eager" and isinstance(enc.gates[0], LTPScorer)
    ids, mask, lengths = _batch()
    enc.train()
    out = enc(ids, mask, mode="soft")
    (out.last_hidden_state.sum() + out.expected_retention.sum()).backward()
    assert enc.gates[0].threshold.grad is not None and enc.gates[0].threshold.grad != 0
    enc.eval()
    with torch.no_grad():
        out = enc(ids, mask, mode="hard")
    m = torch.ceil(0.5 * lengths - 1e-6).long()
    assert torch.equal(out.retained_counts[0], m)


@pytest.mark.parametrize("arch,ratio,t", [("longformer", 0.3, 1024), ("longformer", 0.1, 2048), ("big_bird", 0.3, 1024), ("big_bird", 0.5, 4096)])
def test_sparse_comparators_attend_about_rho_t_keys(arch, ratio, t):
    from retention.sparse import attention_fraction, sparse_attention_config

    cfg = sparse_attention_config(arch, ratio, t, vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    frac = attention_fraction(arch, ratio, t)
    if arch == "longformer":
        assert (cfg.attention_window[0] + 1) / t == pytest.approx(frac)
    else:
        assert cfg.attention_type == "block_sparse" and (5 + cfg.num_random_blocks) * cfg.block_size / t == pytest.approx(frac)
    assert frac == pytest.approx(ratio, rel=0.34)  # powers-of-two blocks: within a third of rho


def test_bigbird_refuses_to_fall_back_to_full_attention():
    from retention.sparse import sparse_attention_config

    with pytest.raises(ValueError, match="fall back to full attention"):
        sparse_attention_config("big_bird", 0.3, 128, vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)


@pytest.mark.parametrize("arch", ["longformer", "big_bird"])
def test_sparse_comparator_warm_starts_from_a_dense_bert_checkpoint(arch):
    """model.init_from a dense run: BigBird takes BERT's tensors as they are; Longformer gets the
    positions after its offset of 2 and global q/k/v copied from the local ones (nothing left fresh
    but its pooler)."""
    from retention.sparse import build_sparse_encoder

    dims = dict(vocab_size=60, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    bb = build_backbone("random", arch="bert", max_positions=512, **dims)
    dense = {f"encoder.backbone.{k}": v for k, v in bb.state_dict().items()}
    enc = build_sparse_encoder(arch, ratio=0.3, seq_len=512, gate_layers=[0], **dims)
    own = {f"encoder.backbone.{k}": v for k, v in enc.backbone.state_dict().items()}
    state = enc.adapt_dense_state(dense, prefix="encoder.backbone.")
    loadable = {k for k, v in state.items() if k in own and own[k].shape == v.shape}
    assert sorted(set(own) - loadable) == sorted(k for k in own if ".pooler." in k)
    for kind in ("query", "key", "value"):
        local = f"encoder.backbone.encoder.layer.1.attention.self.{kind}.weight"
        if arch == "longformer":
            assert torch.equal(state[local.replace(f".{kind}.", f".{kind}_global.")], dense[local])
    pos = "encoder.backbone.embeddings.position_embeddings.weight"
    offset = 2 if arch == "longformer" else 0
    assert torch.equal(state[pos][offset:offset + 512], dense[pos])
