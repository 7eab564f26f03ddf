"""Drop-and-restore on the soft path trains what the hard path infers:
h_restored = z̃_K·h_L + Σ_k (z̃_{k−1} − z̃_k)·h_{ℓ_k} (retention/encoder.py), so closed gates give the hard
path's restored states, open gates the dense path's final states, and the gates get its gradient."""

import math

import pytest
import torch
from mlflow import MlflowClient

from commands import cli

from .retention_fixtures import ARCHS, batch, tiny, wrap


def constant_gates(enc, log_alpha: float):
    """Every token scores exactly ``log_alpha`` at every gate (the scorer's v is zeroed)."""
    for g in enc.gates:
        torch.nn.init.zeros_(g.v.weight)
        torch.nn.init.constant_(g.v.bias, log_alpha)
    return enc


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers", [[1], [1, 2]])
def test_closed_soft_gates_restore_what_the_hard_path_restores(arch, layers):
    """log α = −20 closes every soft gate (ẑ = 0) except the protected [CLS]/[SEP]; ρ = 0.01 keeps only
    those on the hard path. Every dropped token then reads the state it entered the first gate with,
    on both paths, and the kept ones their final states."""
    model = tiny(arch)
    ids, mask = batch()
    enc = constant_gates(wrap(model, layers, 0.01), -20.0)
    with torch.no_grad():
        soft = enc(ids, mask, mode="soft", restore=True)
        hard = enc(ids, mask, mode="hard", restore=True)
        entering = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layers[0]]
    valid = mask.bool()
    kept = torch.zeros_like(valid).scatter(1, hard.positions, hard.valid) & valid
    assert kept.sum(1).tolist() == [2, 2, 2, 2]  # only [CLS] and [SEP] survive the hard path
    assert torch.equal(soft.gate_values[valid] > 0, kept[valid])  # and the soft one
    dropped = valid & ~kept
    torch.testing.assert_close(soft.restored_hidden_state[dropped], hard.restored_hidden_state[dropped])
    torch.testing.assert_close(soft.restored_hidden_state[dropped], entering[dropped])
    # kept tokens: the soft path's closed keys carry weight ε = 1e-6 in attention, the hard path has none
    torch.testing.assert_close(soft.restored_hidden_state[kept], hard.restored_hidden_state[kept], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_open_soft_gates_restore_the_dense_final_states(arch):
    """log α = +20 opens every gate (E[z̃ | z̃ > 0] = 1) and ρ = 1 keeps every token: nothing is dropped, so the restored states are the final
    states of the dense path (the key bias log(1 + ε) shifts attention by ~1e-6 only)."""
    model = tiny(arch)
    ids, mask = batch()
    enc = constant_gates(wrap(model, [0, 2], 1.0), 20.0)  # ρ = 1: soft evaluation keeps every token (top-M = all)
    with torch.no_grad():
        soft = enc(ids, mask, mode="soft", restore=True)
        dense = enc(ids, mask, mode="dense")
    valid = mask.bool()
    assert bool((soft.gate_values[valid] == 1).all())
    torch.testing.assert_close(soft.restored_hidden_state[valid], dense.last_hidden_state[valid], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(soft.restored_hidden_state[valid], soft.last_hidden_state[valid])


def test_soft_gates_get_the_gradient_of_the_mix():
    """∂loss/∂b of the gate's bias b by autograd equals the central finite difference of the restored
    states' loss (soft evaluation gates E[z̃ | z̃ > 0] strictly inside (0, 1) for most tokens), in float64. A mix
    whose gate weight or entering state were detached would change the value but not the gradient, and
    fail here; the gradient also differs from the one through the final states alone (restore=False)."""
    model = tiny("bert").double()
    ids, mask = batch()
    enc = wrap(model, [1, 2], 1.0).double()  # ρ = 1: soft evaluation gives every token its E[z̃ | z̃ > 0]
    for g in enc.gates:
        torch.nn.init.constant_(g.v.bias, 0.3)
    bias = enc.gates[0].v.bias
    proj = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    valid = mask.bool()

    def loss(restore: bool) -> torch.Tensor:
        out = enc(ids, mask, mode="soft", restore=restore)
        hidden = out.restored_hidden_state if restore else out.last_hidden_state
        return (hidden[valid] @ proj).sum()

    with torch.no_grad():
        z = enc(ids, mask, mode="soft").gate_values[valid]
    assert int(((z > 0) & (z < 1)).sum()) > z.numel() // 2  # the gates are really soft
    (grad,) = torch.autograd.grad(loss(True), bias)
    (grad_final_only,) = torch.autograd.grad(loss(False), bias)
    step = 1e-4
    with torch.no_grad():
        bias += step
        up = loss(True)
        bias -= 2 * step
        down = loss(True)
        bias += step
    numeric = (up - down) / (2 * step)
    assert float(grad.abs()) > 1e-3
    torch.testing.assert_close(grad, numeric.reshape(1), rtol=1e-3, atol=1e-6)
    assert not torch.allclose(grad, grad_final_only, rtol=1e-2)


@pytest.mark.slow
def test_hard_path_f1_is_at_least_the_soft_paths_on_synthetic_qa(tmp_path, monkeypatch):
    """``retention train experiment=synthetic_qa seed=0`` (docs/results.md, "Drop-and-restore on
    synthetic QA: hard vs soft"): the dense model learns the task (test F1 > 0.8), and because the
    soft path trains the state drop-and-restore infers, the hard path's test F1 (exactly
    M = ⌈0.3·43⌉ = 13 of the 43 tokens of every window kept, the rest restored) is at least the soft
    path's. Soft evaluation keeps the same top-M tokens."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert cli.main(["train", "experiment=synthetic_qa", "seed=0", f"logging.tracking_uri={uri}",
                     "logging.experiment=qa"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("qa").experiment_id])
    m = run.data.metrics
    assert m["test/f1_dense"] > 0.8
    assert m["test/f1_hard"] >= m["test/f1_soft"]
    assert m["test/kept_fraction_l1"] == pytest.approx(math.ceil(0.3 * 43) / 43)
    assert m["test/soft_kept_fraction_l1"] == pytest.approx(m["test/kept_fraction_l1"])
