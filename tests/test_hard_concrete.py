import math

import pytest
import torch

from retention.hard_concrete import HardConcrete


@pytest.mark.parametrize("log_alpha", [-4.0, -2.0, -0.5, 0.0, 0.7, 2.0, 4.0])
def test_monte_carlo_frequency_of_open_gate_matches_p_nonzero(log_alpha):
    torch.manual_seed(0)
    hc = HardConcrete()
    la = torch.full((200_000,), log_alpha)
    freq = (hc.sample(la) > 0).float().mean().item()
    p = hc.prob_nonzero(torch.tensor(log_alpha)).item()
    # 200k Bernoulli draws: standard error <= 0.0012
    assert freq == pytest.approx(p, abs=0.006)


def test_closed_form_of_p_nonzero():
    hc = HardConcrete(beta=0.5, gamma=-0.2, zeta=1.3)
    la = torch.tensor(0.3)
    expected = 1.0 / (1.0 + math.exp(-(0.3 - 0.5 * math.log(0.2 / 1.3))))
    assert hc.prob_nonzero(la).item() == pytest.approx(expected, rel=1e-6)


def test_samples_in_unit_interval_with_mass_at_both_ends():
    torch.manual_seed(1)
    z = HardConcrete().sample(torch.zeros(100_000))
    assert z.min() >= 0 and z.max() <= 1
    assert (z == 0).float().mean() > 0.05
    assert (z == 1).float().mean() > 0.05
    assert ((z > 0) & (z < 1)).float().mean() > 0.5


def test_noise_is_per_token():
    torch.manual_seed(2)
    z = HardConcrete().sample(torch.zeros(4, 64))
    assert len(torch.unique(z)) > 64


def test_gradients_reach_log_alpha():
    torch.manual_seed(3)
    la = torch.zeros(1000, requires_grad=True)
    HardConcrete().sample(la).sum().backward()
    assert la.grad is not None and la.grad.abs().sum() > 0
    la2 = torch.zeros(10, requires_grad=True)
    HardConcrete().prob_nonzero(la2).sum().backward()
    assert torch.all(la2.grad > 0)


def test_deterministic_gate_monotone_and_clipped():
    hc = HardConcrete()
    z = hc.deterministic(torch.linspace(-10, 10, 101))
    assert torch.all(z[1:] >= z[:-1])
    assert z[0] == 0 and z[-1] == 1


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"gamma": 0.0}, {"zeta": 1.0}])
def test_invalid_parameters_rejected(kwargs):
    with pytest.raises(ValueError):
        HardConcrete(**kwargs)
