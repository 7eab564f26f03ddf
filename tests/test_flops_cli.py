"""budget.flops and distill.ranking through the config and the CLI: which combinations are allowed
(one-line errors, exit 2), and a tiny training under budget.flops=0.4 whose hard path stays at or
under 0.4 of the dense FLOPs."""

import re

import mlflow
import pytest
import torch

from commands import cli
from conf.compose import compose
from conf.schema import ConfigError, validate
from lightning_modules import RetentionClassifier
from retention.budget import Budget
from retention.encoder import RetentionEncoder

from .helpers import TINY, optimisation
from .retention_fixtures import CLS, SEP, batch, tiny

BAD = [
    (["budget.flops=0.4", "budget.ratio=null", "budget.tokens=64"], "budget.tokens=64", "budget.tokens=null"),
    (["budget.flops=0.4", "budget.ratio=null"], "needs budget.ratio", "a ratio in (0, 1]"),
    (["budget.flops=0.4", "budget.inference=threshold"], "budget.inference=threshold", "budget.inference=top_m"),
    (["budget.flops=0.4", "method=longformer"], "method=longformer", "budget.flops=null"),
    (["budget.flops=1.5"], "budget.flops=1.5", "(0, 1]"),
    (["distill.ranking=true", "method=ltp"], "method=ltp", "method=gate"),
]


@pytest.mark.parametrize("overrides,key,allowed", BAD)
def test_bad_flops_or_distill_config_is_one_line_naming_the_keys(overrides, key, allowed, capsys):
    assert cli.main(["train", *overrides, "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and allowed in err


def test_flops_below_the_dense_layers_before_the_first_gate_is_refused():
    """Gates from layer 2 of 4: layers 0 and 1 already cost half the dense forward."""
    cfg = compose(["gate.layers=[2,3]", "model.num_layers=4", "budget.flops=0.5"])
    with pytest.raises(ConfigError, match=r"budget.flops=0.5 is out of reach.*budget.flops > 0.500"):
        validate(cfg, num_backbone_layers=4)
    validate(compose(["gate.layers=[2,3]", "model.num_layers=4", "budget.flops=0.51"]), num_backbone_layers=4)


def test_the_progressive_preset_and_the_ranking_ablation_compose():
    cfg = compose(["experiment=progressive", "ablation=ranking_distill", "budget.flops=0.25"])
    assert cfg.model.backbone == "minilm" and list(cfg.gate.layers) == [0, 2, 4] and cfg.budget.schedule == "linear"
    assert cfg.distill.ranking is True and cfg.ablation == "ranking_distill" and cfg.budget.flops == 0.25


@pytest.mark.slow
def test_tiny_training_under_a_flops_budget_stays_under_it(tmp_path, monkeypatch, capsys):
    """budget.flops=0.4 with gates at layers 0 and 1 of a tiny BERT, with ranking distillation (one run
    for both, ~10 s on one thread): the test split's hard-path FLOPs fraction, logged and printed, is
    at most 0.4, the FLOPs constraint has its λ, and the ranking loss is logged."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", *TINY, "gate.layers=[0,1]", "budget.schedule=linear", "budget.flops=0.4",
            "ablation=ranking_distill", f"logging.tracking_uri={uri}", "logging.experiment=flops"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["flops"]).iloc[0]
    achieved = run["metrics.test/flops_fraction"]
    assert 0.3 < achieved <= 0.4  # at F, within the integers' reach (T = 32 here)
    assert re.search(rf"achieved FLOPs fraction \(hard path, mean\) +{achieved:.4f}\n", out)
    assert "FLOPs <= 0.4 of dense" in out and "final lambda, FLOPs" in out
    assert run["tags.mlflow.runName"] == "needle-gate-ranking_distill-flops0.4"
    for metric in ("train/ranking_kl_step", "train/expected_flops_step", "train/lambda_flops", "val/flops_fraction", "test/soft_flops_fraction"):
        assert run[f"metrics.{metric}"] == run[f"metrics.{metric}"], metric  # logged (not NaN)


def test_the_flops_constraint_is_lambdas_last_entry():
    """Under budget.flops the system has K + 1 multipliers; the last constraint is (mean expected FLOPs
    fraction, F), so λ's last gradient is φ − F (the per-layer ones stay ĝ_ℓ − ρ_ℓ)."""
    enc = RetentionEncoder(tiny("bert"), [0, 1], Budget(ratio=0.3, schedule="linear", num_layers=2, flops=0.45),
                           protected_token_ids=[CLS, SEP]).train()
    system = RetentionClassifier(enc, optimisation(), num_labels=2, dropout=0.0)
    assert system.lam.shape == (3,)
    ids, mask = batch()
    out = enc(ids, mask, mode="soft")
    expected, targets = system.constraint_sides(out)
    assert torch.equal(expected[:2], out.expected_retention) and torch.equal(targets[:2], out.targets)
    assert float(expected[2].detach()) == pytest.approx(float(out.expected_flops.mean().detach()))
    assert float(targets[2]) == pytest.approx(0.45)
    lag, _, _ = system.constraint_loss(expected, targets, batch_size=4)
    lag.backward()
    assert system.lam.grad.tolist() == pytest.approx((expected - targets).detach().tolist())
