"""CUDA graphs for fixed shapes (retention/graphs.py), as far as a CPU can test them: the bookkeeping
of :class:`GraphCache` and :class:`GraphedRetention` with :func:`eager_capture`, the stand-in that
keeps the capture contract (replays overwrite the first call's outputs) without a GPU. The CUDA
capture itself (:func:`cuda_capture`) needs a GPU and is not run here."""

import pytest
import torch

from retention.budget import Budget
from retention.graphs import GraphCache, GraphedRetention, cuda_capture, eager_capture, plan_key
from tests.retention_fixtures import batch, tiny, wrap


def counting(capture):
    """``capture`` that counts its calls in ``counting.calls``."""
    calls = []

    def wrapped(fn, warmup):
        calls.append(warmup)
        return capture(fn, warmup)

    wrapped.calls = calls
    return wrapped


def test_one_capture_per_key_and_shape_and_replays_overwrite_the_static_outputs():
    capture = counting(eager_capture)
    cache = GraphCache(warmup=2, capture=capture)

    def fn(x, y):
        return x + y, [x * 2]

    a, b = torch.arange(6.0).view(2, 3), torch.ones(2, 3)
    first = cache("k", fn, a, b)
    assert torch.equal(first[0], a + b) and torch.equal(first[1][0], a * 2)
    second = cache("k", fn, a * 10, b)  # same key and shapes: replayed into the same output tensors
    assert second is first and torch.equal(first[0], a * 10 + b) and len(capture.calls) == 1
    cache("k", fn, torch.ones(4, 3), torch.ones(4, 3))  # another shape
    cache("other", fn, a, b)  # another key
    cache("k", fn, a.double(), b.double())  # another dtype
    assert len(cache) == len(capture.calls) == 4 and capture.calls == [2] * 4
    a.add_(1)  # the caller's tensors are copied in, not kept: changing them changes nothing captured
    assert torch.equal(cache("k", fn, torch.zeros(2, 3), b)[0], b)
    cache.clear()
    assert len(cache) == 0


def test_cuda_capture_needs_a_warm_up():
    with pytest.raises(ValueError, match="warm-up"):
        GraphCache(warmup=0, capture=cuda_capture)


def _plan(enc, ids, mask):
    return enc.host_plan(mask.sum(1).tolist(), (enc.protected_mask(ids) & mask.bool()).sum(1).tolist(), ids.shape[1])


@pytest.mark.parametrize("mode", ["hard", "soft", "dense"])
def test_graphed_retention_equals_the_encoder_and_captures_once_per_plan(mode):
    """Two batches of one shape whose plans agree (the same widths) share a graph; the outputs equal
    the encoder's own forward. A batch with other lengths, hence other widths, gets its own graph."""
    enc = wrap(tiny("bert"), [1, 2], 0.4, "linear")
    capture = counting(eager_capture)
    graphed = GraphedRetention(enc, mode, restore=mode != "dense", warmup=1, capture=capture)
    ids, mask = batch()
    other = torch.randint(7, 50, ids.shape, generator=torch.Generator().manual_seed(5))
    other = torch.where(mask.bool() & (ids != 5) & (ids != 6), other, ids)  # same lengths, other tokens
    for x in (ids, other):
        plan = _plan(enc, x, mask)
        out = graphed(x, mask, plan=plan)
        with torch.no_grad():
            ref = enc(x, mask, mode=mode, restore=mode != "dense")
        assert torch.equal(out.last_hidden_state, ref.last_hidden_state) and torch.equal(out.positions, ref.positions)
        assert torch.equal(out.kept_fractions, ref.kept_fractions)
        if mode != "dense":
            assert torch.equal(out.restored_hidden_state, ref.restored_hidden_state)
    assert len(capture.calls) == 1
    ids2, mask2 = batch(pad=False)
    plan2 = _plan(enc, ids2, mask2)
    assert plan_key(plan2) != plan_key(plan)
    graphed(ids2, mask2, plan=plan2)
    assert len(capture.calls) == 2


def test_the_bench_calls_equal_the_eager_forwards():
    """``retention bench --cuda-graphs`` calls ``GraphedRetention(enc, "hard")(ids, None, protected=prot,
    plan=plan)`` and ``GraphedRetention(enc, "dense")(ids, None)``: no padding, so the dense path needs no plan."""
    enc = wrap(tiny("roberta"), [0], 0.3)
    ids, _ = batch(pad=False)
    prot = enc.protected_mask(ids)
    plan = enc.host_plan([ids.shape[1]] * len(ids), [2] * len(ids), padded_length=ids.shape[1])
    hard = GraphedRetention(enc, "hard", capture=eager_capture)(ids, None, protected=prot, plan=plan)
    dense = GraphedRetention(enc, "dense", capture=eager_capture)(ids, None)
    with torch.no_grad():
        assert torch.equal(hard.last_hidden_state, enc(ids, None, protected=prot, mode="hard").last_hidden_state)
        assert torch.equal(dense.last_hidden_state, enc(ids, None, mode="dense").last_hidden_state)
    assert hard.last_hidden_state.shape[1] == plan.widths[0] == 8  # ⌈0.3 · 24⌉


def test_graphed_retention_refuses_what_it_cannot_capture_or_replay_correctly():
    enc = wrap(tiny("bert"), [1], 0.5)
    ids, mask = batch()
    plan = _plan(enc, ids, mask)
    with pytest.raises(ValueError, match="host plan"):
        GraphedRetention(enc, "hard", capture=eager_capture)(ids, mask)
    with pytest.raises(ValueError, match="with padding needs"):
        GraphedRetention(enc, "dense", capture=eager_capture)(ids, mask)
    enc.budget = Budget(ratio=0.3)  # the plan's widths were for ρ = 0.5: a replay would keep those
    with pytest.raises(ValueError, match="another batch shape, budget"):
        GraphedRetention(enc, "hard", capture=eager_capture)(ids, mask, plan=plan)
    enc.train()
    with pytest.raises(ValueError, match="eval mode"):
        GraphedRetention(enc, "hard", capture=eager_capture)(ids, mask, plan=_plan(enc, ids, mask))
    with pytest.raises(ValueError, match="mode must be one of"):
        GraphedRetention(enc, "auto")
