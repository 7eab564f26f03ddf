"""The scorer's context vectors: the causal running average (the paper's Eq. 3) and the masked mean."""

import pytest
import torch

from retention.gate import ContextScorer, masked_mean_context, running_average_context


def _padded(b=3, t=7, d=5):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(b, t, d, generator=g)
    lengths = torch.tensor([7, 4, 1])
    weight = (torch.arange(t) < lengths[:, None]).float()
    return h, weight, lengths


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_running_average_is_eq3_unrolled_with_padding_excluded(decay):
    """m_t = γ_c·m_{t−1} + (1 − γ_c)·w_t·h_t, m_{−1} = 0, by a plain loop over t."""
    h, weight, _ = _padded()
    m = torch.zeros(h.shape[0], h.shape[2])
    expected = []
    for t in range(h.shape[1]):
        m = decay * m + (1 - decay) * weight[:, t, None] * h[:, t]
        expected.append(m)
    torch.testing.assert_close(running_average_context(h, weight, decay), torch.stack(expected, 1))


def test_running_average_ignores_what_padding_holds():
    h, weight, lengths = _padded()
    noisy = h.masked_fill(weight[..., None] == 0, 1e3)
    torch.testing.assert_close(running_average_context(noisy, weight, 0.9), running_average_context(h, weight, 0.9))
    # the first token's context is (1 − γ_c)·h_0
    torch.testing.assert_close(running_average_context(h, weight, 0.9)[:, 0], 0.1 * h[:, 0])


def test_masked_mean_is_the_mean_of_the_valid_tokens():
    h, weight, lengths = _padded()
    c = masked_mean_context(h, weight)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(c[i, 0], h[i, :n].mean(0))


def test_scorer_without_context_ignores_the_other_tokens():
    torch.manual_seed(0)
    scorer = ContextScorer(5, context="none")
    h, weight, _ = _padded()
    changed = h.clone()
    changed[:, 1:] += 1.0  # token 0's own state is unchanged
    torch.testing.assert_close(scorer(changed, weight)[:, 0], scorer(h, weight)[:, 0])
    with_context = ContextScorer(5, context="mean")
    assert not torch.allclose(with_context(changed, weight)[:, 0], with_context(h, weight)[:, 0])
