"""Budgets: the absolute token budget Budget(tokens=M) and the threshold-inference ablation's counts."""

import pytest
import torch

from retention.budget import Budget, annealed_targets, keep_counts, lagrangian_term, phase_steps, threshold_counts
from retention.encoder import RetentionEncoder

from .retention_fixtures import CLS, SEP, batch, tiny


def test_token_budget_keeps_m_per_sequence_and_never_fewer_than_the_protected():
    """M tokens of every sequence (all of a shorter one), never fewer than its protected tokens."""
    budget = Budget(ratio=None, tokens=5)
    n_valid = torch.tensor([3, 5, 12, 40, 1000])
    n_protected = torch.tensor([2, 2, 7, 2, 2])
    counts = keep_counts(budget.layer_ratio(0, n_valid), n_valid, n_protected)
    assert counts.tolist() == [3, 5, 7, 5, 5]
    assert budget.targets(n_valid).tolist() == pytest.approx([(1 + 1 + 5 / 12 + 5 / 40 + 5 / 1000) / 5])


def test_token_budget_with_a_linear_schedule_reaches_m_at_the_last_gate():
    budget = Budget(ratio=None, tokens=6, schedule="linear", num_layers=3)
    n_valid = torch.tensor([24])
    counts = [int(keep_counts(budget.layer_ratio(k, n_valid), n_valid, torch.tensor([0]))[0]) for k in range(3)]
    # ρ_k = 1 − (1 − 6/24)·(k + 1)/3: 0.75, 0.5, 0.25 of 24 tokens
    assert counts == [18, 12, 6]


def test_token_budget_on_the_hard_path():
    enc = RetentionEncoder(tiny("bert"), [1], Budget(ratio=None, tokens=8), protected_token_ids=[CLS, SEP]).eval()
    ids, mask = batch()  # lengths 24, 19, 13, 24
    with torch.no_grad():
        out = enc(ids, mask, mode="hard")
    assert out.retained_counts[0].tolist() == [8, 8, 8, 8]
    assert out.last_hidden_state.shape[1] == 8
    torch.testing.assert_close(out.achieved_retention, torch.tensor([(8 / 24 + 8 / 19 + 8 / 13 + 8 / 24) / 4]))


def test_threshold_counts_keep_the_protected_and_every_gate_at_least_half_open():
    p_keep = torch.tensor([[0.9, 0.5, 0.49, 0.1, 0.8],
                           [0.2, 0.7, 0.0, 0.6, 0.3]])
    valid = torch.tensor([[True, True, True, True, False],  # the 0.8 is padding
                          [True, True, True, True, True]])
    protected = torch.tensor([[False, False, False, True, False],
                              [True, False, False, False, False]])
    assert threshold_counts(p_keep, valid, protected).tolist() == [3, 3]


@pytest.mark.parametrize("bias,kept", [(-3.0, "protected"), (0.0, "all")])
def test_threshold_inference_on_the_hard_path(bias, kept):
    """Scorer v = 0, bias b: log α = b for every token, so P(z̃ > 0) = σ(b − β·log(−γ/ζ)) is 0.20 at
    b = −3 (only [CLS] and [SEP] kept) and 0.83 at b = 0 (every valid token kept), whatever ρ says."""
    enc = RetentionEncoder(tiny("bert"), [1], Budget(ratio=0.3), protected_token_ids=[CLS, SEP], inference="threshold")
    torch.nn.init.zeros_(enc.gates[0].v.weight)
    torch.nn.init.constant_(enc.gates[0].v.bias, bias)
    ids, mask = batch()
    with torch.no_grad():
        out = enc.eval()(ids, mask, mode="hard")
    expected = [2, 2, 2, 2] if kept == "protected" else mask.sum(1).tolist()
    assert out.retained_counts[0].tolist() == expected


def test_phase_steps_are_fractions_of_the_run_unless_step_counts_are_given():
    """D = round(dense_fraction·N), W = round(warmup_fraction·N); a step count replaces its fraction."""
    assert phase_steps(189, 0.2, 0.4) == (38, 76)  # a 2,000-example BYO file: 189 steps in 3 epochs
    assert phase_steps(600, 0.5, 0.25) == (300, 150)  # the main job
    assert phase_steps(189, 0.2, 0.4, dense_steps=10) == (10, 76)
    assert phase_steps(189, 0.2, 0.4, warmup_steps=0) == (38, 0)
    assert phase_steps(60, 1.0, 0.0) == (60, 0)  # dense only


def test_fraction_schedule_reaches_rho_at_its_boundary():
    """With (D, W) = phase_steps(189, 0.2, 0.4) = (38, 76), ρ(t) = annealed_targets(ρ, t − D, W): 1 up to
    step D, 1 − 0.7·75/76 one step before D + W, ρ from D + W = 114 on, up to the last step 188."""
    dense, warmup = phase_steps(189, 0.2, 0.4)
    rho = torch.tensor([0.3])
    at = {step: float(annealed_targets(rho, max(0, step - dense), warmup)) for step in (0, 37, 38, 39, 113, 114, 188)}
    assert at[0] == at[37] == at[38] == 1.0
    assert at[39] == pytest.approx(1 - 0.7 / 76)
    assert at[113] == pytest.approx(1 - 0.7 * 75 / 76)
    assert at[114] == at[188] == pytest.approx(0.3)


def test_lagrangian_term_signs_for_both_constraint_forms():
    """Σ_ℓ λ_ℓ(ĝ_ℓ − ρ_ℓ): ∂/∂ĝ_ℓ = λ_ℓ and ∂/∂λ_ℓ = ĝ_ℓ − ρ_ℓ. With λ_0 = 2 (inequality, active) a
    descent step on ĝ_0 lowers it; with λ_1 = −1.5 (only the equality form lets λ go negative) it raises
    ĝ_1, which sits below its target."""
    lam = torch.tensor([2.0, -1.5], requires_grad=True)
    achieved = torch.tensor([0.5, 0.1], requires_grad=True)
    target = torch.tensor([0.3, 0.3])
    term = lagrangian_term(lam, achieved, target)
    term.backward()
    assert float(term.detach()) == pytest.approx(2.0 * 0.2 + (-1.5) * (-0.2))
    torch.testing.assert_close(achieved.grad, torch.tensor([2.0, -1.5]))
    torch.testing.assert_close(lam.grad, torch.tensor([0.2, -0.2]))


@pytest.mark.parametrize("equality", [True, False])
def test_augmented_lagrangian_adds_a_restoring_quadratic_term(equality):
    """Σ_ℓ λ_ℓ v_ℓ + λ₂_ℓ v_ℓ² (CoFiPruning), v = ĝ − ρ = (+0.2, −0.2). ∂/∂ĝ_ℓ = λ_ℓ + 2λ₂_ℓ v_ℓ: above ρ the
    quadratic term adds to λ's push down; below ρ, under the equality, it pushes ĝ_1 up (−1.2) even
    with λ_1 = 0. ∂/∂λ₂_ℓ = v_ℓ² ≥ 0: the ascent only raises λ₂. Under the inequality v = max(0, ĝ − ρ),
    so below ρ neither the term nor λ₂'s gradient is there."""
    lam = torch.tensor([2.0, 0.0], requires_grad=True)
    lam2 = torch.tensor([4.0, 3.0], requires_grad=True)
    achieved = torch.tensor([0.5, 0.1], requires_grad=True)
    target = torch.tensor([0.3, 0.3])
    term = lagrangian_term(lam, achieved, target, lam2, equality=equality)
    term.backward()
    below = 3.0 * 0.04 if equality else 0.0
    assert float(term.detach()) == pytest.approx(2.0 * 0.2 + 4.0 * 0.04 + below)
    torch.testing.assert_close(achieved.grad, torch.tensor([2.0 + 2 * 4.0 * 0.2, -1.2 if equality else 0.0]))
    torch.testing.assert_close(lam.grad, torch.tensor([0.2, -0.2]))
    torch.testing.assert_close(lam2.grad, torch.tensor([0.04, 0.04 if equality else 0.0]))
