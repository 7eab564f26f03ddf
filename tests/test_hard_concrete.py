import math

import pytest
import torch

from retention.hard_concrete import RELAXATIONS, HardConcrete, Relaxation, SigmoidGate, StraightThroughGate, make_relaxation


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


def test_straight_through_is_hard_forward_and_sigmoid_gradient_backward():
    """z = 1[σ(log α) > ½] in the forward pass; ∂z/∂log α = σ'(log α) in the backward pass."""
    la = torch.tensor([-2.0, -0.1, 0.3, 3.0], requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 0.5, 3.0])
    z = StraightThroughGate().sample(la)
    assert z.tolist() == [0.0, 0.0, 1.0, 1.0]
    (grad,) = torch.autograd.grad((z * upstream).sum(), la)
    ref = la.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((torch.sigmoid(ref) * upstream).sum(), ref)
    torch.testing.assert_close(grad, expected)
    assert torch.equal(StraightThroughGate().deterministic(la), z)  # soft evaluation uses the same hard gate
    torch.testing.assert_close(StraightThroughGate().prob_nonzero(la), torch.sigmoid(la))


def test_sigmoid_gate_is_sigmoid_everywhere():
    la = torch.linspace(-3, 3, 7)
    for value in (SigmoidGate().sample(la), SigmoidGate().prob_nonzero(la), SigmoidGate().deterministic(la)):
        torch.testing.assert_close(value, torch.sigmoid(la))


def test_every_relaxation_is_a_relaxation_built_by_name():
    for name, cls in RELAXATIONS.items():
        relaxation = make_relaxation(name, beta=0.5)
        assert isinstance(relaxation, Relaxation) and type(relaxation) is cls
    assert make_relaxation("hard_concrete", beta=0.5) == HardConcrete(beta=0.5)
    with pytest.raises(ValueError, match="hard_concrete, sigmoid, straight_through"):
        make_relaxation("magic")


def test_open_mean_closed_form_at_beta_one():
    """β = 1, log α = 0: s = u, so z̃ = clamp(1.2·u − 0.1, 0, 1) is open for u > 1/12 and 1 for
    u > 11/12: E[z̃ | z̃ > 0] = (∫_{1/12}^{11/12} (1.2u − 0.1) du + 1/12) / (11/12) = (5/12 + 1/12)/(11/12) = 6/11."""
    assert HardConcrete(beta=1.0).open_mean(torch.tensor(0.0)).item() == pytest.approx(6 / 11, abs=1e-4)


@pytest.mark.parametrize("log_alpha", [-6.0, -3.0, 0.0, 2.0])
def test_open_mean_is_the_monte_carlo_mean_of_the_open_gates(log_alpha):
    """Positive where Louizos' deterministic gate is 0 (log α < log(1/11)): the gate is open then too."""
    torch.manual_seed(0)
    hc = HardConcrete()
    z = hc.sample(torch.full((2_000_000,), log_alpha))
    open_mean = hc.open_mean(torch.tensor(log_alpha)).item()
    assert open_mean == pytest.approx(z[z > 0].mean().item(), abs=3e-3)  # ≥ 10⁴ open draws, std ≤ 0.3
    if log_alpha < math.log(1 / 11):
        assert hc.deterministic(torch.tensor(log_alpha)).item() == 0.0 and open_mean > 0.05


def test_open_mean_of_the_ablation_gates():
    la = torch.tensor([-2.0, 0.5])
    torch.testing.assert_close(SigmoidGate().open_mean(la), torch.sigmoid(la))
    torch.testing.assert_close(StraightThroughGate().open_mean(la), torch.ones(2))


def test_open_mean_stays_exact_for_a_gate_almost_never_open():
    """As log α → −∞ the open gate's law converges, so E[z̃ | z̃ > 0] tends to a positive limit
    (P(z̃ > 0) ≈ 1e-35 at log α = −80 underflows nothing: the noise enters as P·(1 − v))."""
    hc = HardConcrete()
    values = hc.open_mean(torch.tensor([-80.0, -40.0, -6.0]))
    assert values[0].item() == pytest.approx(values[1].item(), abs=1e-6)
    assert 0.2 < values[0].item() < values[2].item()


@pytest.mark.parametrize("name", sorted(RELAXATIONS))
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.77])
def test_log_alpha_at_inverts_the_probability_a_gate_is_open(name, p):
    """P(z > 0) at log_alpha_at(p) is p: for the Hard-Concrete log α = logit(p) + β·log(−γ/ζ) (−2.446 at
    p = 0.3), for the sigmoid gates logit(p)."""
    relaxation = make_relaxation(name)
    log_alpha = relaxation.log_alpha_at(p)
    assert float(relaxation.prob_nonzero(torch.tensor(log_alpha, dtype=torch.float64))) == pytest.approx(p, abs=1e-12)
    if name == "hard_concrete" and p == 0.3:
        assert log_alpha == pytest.approx(-2.4459, abs=1e-4)
    assert math.isfinite(relaxation.log_alpha_at(1.0)) and relaxation.prob_nonzero(torch.tensor(relaxation.log_alpha_at(1.0))) > 0.999
