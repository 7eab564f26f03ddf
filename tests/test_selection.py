"""Exact top-M selection: property-based over random padded batches."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.budget import keep_counts
from retention.selection import gather_tokens, scatter_tokens, select_top_m


@st.composite
def batches(draw):
    b = draw(st.integers(1, 6))
    t = draw(st.integers(3, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    ratio = draw(st.floats(0.01, 1.0))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    valid = torch.arange(t).expand(b, t) < lengths[:, None]
    protected = torch.zeros(b, t, dtype=torch.bool)
    protected[:, 0] = True  # [CLS]
    protected[torch.arange(b), lengths - 1] = True  # [SEP]
    extra = (torch.rand(b, t, generator=g) < 0.1) & valid  # e.g. question tokens
    protected |= extra
    scores = torch.randn(b, t, generator=g)
    return scores, valid, protected, ratio


@settings(max_examples=200, deadline=None)
@given(batches())
def test_exact_m_protected_kept_order_preserved(batch):
    scores, valid, protected, ratio = batch
    n_valid, n_prot = valid.sum(1), (protected & valid).sum(1)
    counts = keep_counts(ratio, n_valid, n_prot)
    sel = select_top_m(scores, valid, protected, counts)
    for b in range(scores.shape[0]):
        m_expected = min(max(math.ceil(round(ratio * int(n_valid[b]), 9)), int(n_prot[b])), int(n_valid[b]))
        assert int(counts[b]) == m_expected
        idx = sel.index[b][sel.filled[b]].tolist()
        assert len(idx) == m_expected  # exactly M
        assert idx == sorted(idx) and len(set(idx)) == len(idx)  # original order, no duplicates
        assert all(valid[b, i] for i in idx)  # never padding
        assert set(torch.nonzero(protected[b] & valid[b]).flatten().tolist()) <= set(idx)
        # the rest are the highest-scoring unprotected tokens
        free = [i for i in idx if not protected[b, i]]
        dropped = [i for i in range(scores.shape[1]) if valid[b, i] and i not in idx]
        if free and dropped:
            assert min(scores[b, free]) >= max(scores[b, dropped])
    # kept slots are a prefix of each row
    assert torch.equal(sel.filled, torch.arange(sel.filled.shape[1]).expand_as(sel.filled) < counts[:, None])


def test_ceil_is_exact_for_round_products():
    n = torch.tensor([10, 100, 512, 7])
    assert keep_counts(0.3, n, torch.zeros(4, dtype=torch.long)).tolist() == [3, 30, 154, 3]
    assert keep_counts(0.3, n, torch.full((4,), 5)).tolist() == [5, 30, 154, 5]


def test_gather_then_scatter_restores_positions():
    torch.manual_seed(0)
    x = torch.randn(3, 10, 4)
    valid = torch.ones(3, 10, dtype=torch.bool)
    sel = select_top_m(torch.randn(3, 10), valid, torch.zeros_like(valid), torch.tensor([3, 5, 1]))
    short = gather_tokens(x, sel.index)
    back = scatter_tokens(torch.zeros_like(x), sel.index, short, sel.filled)
    for b in range(3):
        kept = sel.index[b][sel.filled[b]]
        assert torch.equal(back[b, kept], x[b, kept])
        others = torch.ones(10, dtype=torch.bool)
        others[kept] = False
        assert torch.all(back[b, others] == 0)
