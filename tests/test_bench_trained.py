"""`retention bench --checkpoint`: speed against accuracy of trained runs (commands/bench_trained.py)."""

import math

import pandas as pd
import pytest
from omegaconf import OmegaConf

from commands import cli
from commands.bench_trained import apply_overrides
from conf.checks import ConfigError
from commands.runner import CONFIG_NEXT_TO_CHECKPOINT
from conf.compose import compose

from .helpers import TINY, markdown_rows


def _train(tmp_path, name: str, *extra) -> str:
    """One tiny run through the CLI (positions for 64 tokens, so it can be measured at T 48); its best.ckpt."""
    ckpt_dir = tmp_path / "ckpt" / name
    assert cli.main(["train", *TINY, "model.max_positions=64", f"logging.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                     f"logging.checkpoint_dir={ckpt_dir}", *extra]) == 0
    return str(next(ckpt_dir.glob("*/best.ckpt")))


@pytest.mark.slow
def test_rows_per_checkpoint_and_budget_dense_at_rho_one_flops_within_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    single = _train(tmp_path, "single")  # TINY: one gate, entering layer 1 of 2
    progressive = _train(tmp_path, "prog", "gate.layers=[0,1]", "budget.schedule=linear")
    out = tmp_path / "bench"
    budgets = ["rho1.0", "rho0.5", "flops0.7", "flops0.4"]
    assert cli.main(["bench", "--checkpoint", single, progressive, "--set", "data.seq_len=48",
                     "--ratios", "1.0", "0.5", "--flops", "0.7", "0.4", "--batch-sizes", "4", "--reps", "1",
                     "--warmup", "0", "--timing-batches", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out / "accuracy_speed.csv")
    assert (out / "pareto.png").stat().st_size > 0
    assert sorted(zip(df["trained"], df["budget"])) == sorted(
        (t, b) for t in ("single gate at layer 1, ρ 0.3, seed 0", "progressive gates 0, 1, ρ 0.3, seed 0") for b in budgets)
    assert set(df["length"]) == {48} and set(df["batch"]) == {4}  # --set data.seq_len=48 reached the data
    measured = df[df["note"].isna()]
    for r in df.itertuples():
        if r.budget == "rho1.0":  # nothing dropped: the hard path is the dense path
            assert r.value == r.dense and r.pct_of_dense == 100.0
        if r.budget == "rho0.5" and r.trained.startswith("single"):
            assert r.kept_l1 == pytest.approx(math.ceil(0.5 * 48) / 48)
        if r.trained.startswith("single") and r.budget == "flops0.4":  # layer 0 alone costs 1/2 of the dense FLOPs
            assert math.isnan(r.value) and math.isnan(r.speedup) and "unreachable" in r.note
    assert len(measured) == 7
    for r in measured.itertuples():
        assert r.speedup == pytest.approx(r.full_ms / r.retained_ms)
        if r.budget.startswith("flops"):
            assert r.flops_fraction <= r.flops_fraction_max <= r.flops_target
    assert len(markdown_rows(printed)) == len(df) == len(markdown_rows((out / "accuracy_speed.md").read_text()))
    assert "load average" in printed


def _fake_checkpoint(tmp_path, *overrides):
    """A checkpoint file beside a real config.yaml: enough for the checks made before any weights load."""
    folder = tmp_path / "run"
    folder.mkdir()
    OmegaConf.save(compose([*TINY, *overrides]), folder / CONFIG_NEXT_TO_CHECKPOINT)
    (folder / "best.ckpt").write_bytes(b"")
    return str(folder / "best.ckpt")


@pytest.mark.parametrize("args, says", [
    (["--checkpoint", "missing/best.ckpt"], "no such file"),
    (["--checkpoint", "CK", "--ratios", "1.5"], "--ratios: [1.5] outside (0, 1]"),
    (["--checkpoint", "CK", "--flops", "0"], "--flops: [0.0] outside (0, 1]"),
    (["--checkpoint", "CK", "--set", "model.no_such_key=3"], "model.no_such_key"),
    (["--checkpoint", "CK", "--set", "data.seq_len=long"], "data.seq_len"),
    (["--checkpoint", "CK", "--lengths", "512"], "--lengths"),
    (["--checkpoint", "CK", "--set", "model=minilm"], "config groups cannot be swapped"),
    (["--checkpoint", "SPARSE"], "sparse-attention comparator"),
], ids=["missing", "ratio", "flops", "set-key", "set-value", "synthetic-flag", "set-group", "sparse"])
def test_bad_input_is_one_line_and_exit_2(args, says, tmp_path, capsys):
    ck = _fake_checkpoint(tmp_path, *(["method=longformer", "data.seq_len=64"] if "SPARSE" in args else []))
    args = ["CK" if a == "SPARSE" else a for a in args]
    assert cli.main(["bench", *[ck if a == "CK" else a for a in args], "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["bench", "evaluate"])
def test_limit_test_batches_counts_batches_or_takes_a_fraction(command):
    """Lightning reads an int as batches and a float as a fraction: ``1`` is one batch, not all of them."""
    parse = lambda v: cli.parser().parse_args([command, "--checkpoint", "x", "--limit-test-batches", v]).limit_test_batches
    assert (parse("1"), type(parse("1"))) == (1, int)
    assert (parse("0.5"), type(parse("0.5"))) == (0.5, float)


def test_set_applies_to_the_runs_own_config_even_one_this_version_does_not_fully_know():
    """A key the schema lacks (a newer run's) does not stop --set; the overridden keys must exist and keep their type."""
    cfg = OmegaConf.merge(OmegaConf.to_container(compose(TINY)), {"budget": {"lagrangian": "augmented"}})  # as loaded from YAML
    out = apply_overrides(cfg, ["data.seq_len=48", "budget.ratio=1"], "ck")
    assert (out.data.seq_len, out.budget.ratio, out.budget.lagrangian) == (48, 1, "augmented")
    with pytest.raises(ConfigError, match="--set data.seq_len='long': expected a int"):
        apply_overrides(cfg, ["data.seq_len=long"], "ck")
    with pytest.raises(ConfigError, match="--set model.nope: no such key"):
        apply_overrides(cfg, ["model.nope=1"], "ck")
