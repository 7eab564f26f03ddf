"""`retention evaluate` and the baselines/ablations through train → evaluate on tiny configs."""

import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from commands import cli
from commands.evaluate import Source, label_sources, throughput_ratio
from retention.baselines import SELECTORS
from retention.methods import Method

from .helpers import TINY, load_trained, markdown_rows


def _train(tmp_path, *extra, experiment="ev") -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["train", *TINY, f"logging.tracking_uri={uri}", f"logging.experiment={experiment}", *extra]) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["start_time DESC"])
    return runs.iloc[0]["run_id"]


def threshold_kept_fraction(checkpoint) -> float:
    """Threshold inference by hand: the mean over test rows of
    |{t valid : protected or σ(log α_t − β·log(−γ/ζ)) >= 1/2}| / T_valid, with the log α the trained
    gate gives on the hard path."""
    cfg, dm, system = load_trained(checkpoint)
    shift = cfg.gate.beta * math.log(-cfg.gate.gamma / cfg.gate.zeta)
    kept = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            ids, valid = batch["input_ids"], batch["attention_mask"].bool()
            _, out = system.classify(batch, "hard")
            p_kept = torch.sigmoid(out.log_alpha[0] - shift)
            keep = valid & (system.encoder.protected_mask(ids) | (p_kept >= 0.5))
            kept += (keep.sum(1) / valid.sum(1)).tolist()
    return sum(kept) / len(kept)


@pytest.mark.slow
def test_evaluate_writes_table_plots_and_mlflow_artifacts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_id = _train(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ev"
    assert cli.main(["evaluate", "--run-id", run_id, "--budgets", "0.1", "0.5", "--out", str(out),
                     "--tracking-uri", uri, "--throughput-batches", "1"]) == 0
    printed = capsys.readouterr().out
    for name in ("evaluation.csv", "evaluation.md", "pareto.png", "layer_retention.png"):
        assert (out / name).stat().st_size > 0, name
    df = pd.read_csv(out / "evaluation.csv")
    assert len(df) == len(SELECTORS) * 2 and set(df["method"]) == set(SELECTORS)
    for row in df.itertuples():  # data.seq_len=32: exactly ⌈ρ·32⌉ tokens kept at layer 1
        assert row.retention_l1 == pytest.approx(math.ceil(row.budget * 32 - 1e-6) / 32)
        assert row.pct_of_dense == pytest.approx(100 * row.value / row.dense)
        assert row.throughput_ratio > 0
    shown = [r for r in markdown_rows(printed) if r["method"] == "gate" and r["budget"] == "0.1000"]
    gate = df[(df["method"] == "gate") & (df["budget"] == 0.1)].iloc[0]
    assert len(shown) == 1 and shown[0]["value"] == f"{gate.value:.4f}" and "run_id" not in shown[0]
    assert markdown_rows((out / "evaluation.md").read_text()) == markdown_rows(printed)
    arts = [a.path for a in mlflow.tracking.MlflowClient(uri).list_artifacts(run_id, "evaluation")]
    assert sorted(arts) == sorted(f"evaluation/{n}" for n in ("evaluation.csv", "evaluation.md", "pareto.png", "layer_retention.png"))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["method=random"], ["method=first"], ["method=l2"], ["method=attention"], ["method=ltp"],
    ["method=longformer", "data.seq_len=64"], ["method=bigbird", "data.seq_len=512"],
    ["ablation=no_relaxation"], ["ablation=straight_through"], ["ablation=fixed_lambda"],
    # log α starts just above the threshold β·log(−γ/ζ) ≈ −1.599, so after training some tokens pass
    # P(kept) >= 1/2 and some do not (at the default 2.0 every token passes: the check would be 1 == 1)
    ["ablation=threshold_inference", "gate.init_log_alpha=-1.565"], ["ablation=no_context"],
], ids=lambda e: e[0])
def test_baselines_and_ablations_train_then_evaluate(extra, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_id = _train(tmp_path, *extra)
    ckpt = next((tmp_path / "checkpoints" / run_id).glob("best.ckpt"))
    out = tmp_path / "ev"
    method = extra[0].split("=")[1] if extra[0].startswith("method=") else "gate"
    method = Method(method).selection  # ltp and the sparse comparators: their own trained model, "gate"
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--budgets", "0.3", "--methods", method,
                     "--out", str(out), "--throughput-batches", "0"]) == 0
    row = pd.read_csv(out / "evaluation.csv").iloc[0]
    if extra[0] == "ablation=threshold_inference":  # no exact budget: whatever passes P(kept) >= 1/2
        assert row.retention_l1 == pytest.approx(threshold_kept_fraction(ckpt), rel=1e-5)
    elif extra[0] in ("method=longformer", "method=bigbird"):  # every token kept, ~0.3·T keys per query
        assert row.retention_l1 == pytest.approx(0.3, abs=0.06) and row.budget == row.retention_l1
        assert pd.isna(row.dense) and pd.isna(row.pct_of_dense)  # no dense path of its own
    else:
        assert row.retention_l1 == pytest.approx(10 / 32)  # ⌈0.3·32⌉
    if extra == ["ablation=fixed_lambda"]:
        lam = mlflow.search_runs(experiment_names=["ev"]).iloc[0]["metrics.train/lambda_l1"]
        assert lam == pytest.approx(1.0)  # the dual variable never moved


class _ModeLog:
    """A stand-in system whose encoder records the mode of every forward and the batches it was given."""

    def __init__(self) -> None:
        self.modes: list[str] = []
        self.batches: set[int] = set()
        self.encoder = self

    def eval(self):
        return self

    def __call__(self, ids, mask, mode):
        self.modes.append(mode)
        self.batches.add(int(ids[0, 0]))


class _Batches:
    def test_dataloader(self):
        return ({"input_ids": torch.full((1, 4), i), "attention_mask": torch.ones(1, 4)} for i in range(5))


def test_throughput_ratio_times_dense_and_hard_interleaved_like_bench():
    system = _ModeLog()
    assert throughput_ratio(system, _Batches(), 2, reps=3) > 0
    # per batch: one warm-up + 3 repetitions, the order rotated each repetition (retention.bench.interleaved_times)
    assert system.modes == ["dense", "hard", "hard", "dense", "dense", "hard", "hard", "dense"] * 2
    assert system.batches == {0, 1}  # only the first two test batches
    assert throughput_ratio(system, _Batches(), 0) is None and len(system.modes) == 16


def test_unknown_method_or_bad_source_fails_clearly(tmp_path, capsys):
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "x.ckpt"), "--methods", "gate", "magic"]) == 2
    assert "valid: gate, random, first, l2, attention" in capsys.readouterr().err
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "x.ckpt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "x.ckpt"), "--budgets", "1.5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_ablation_presets_name_themselves_and_exist_for_every_ablation():
    from conf import CONF_DIR
    from conf.schema import ABLATIONS
    from conf.compose import compose

    assert sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml")) == sorted(a for a in ABLATIONS if a != "none")
    for name in ABLATIONS[1:]:
        assert compose([f"ablation={name}"]).ablation == name


@pytest.mark.slow
def test_two_runs_of_the_same_experiment_and_seed_get_their_own_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ids = [_train(tmp_path, experiment="same"), _train(tmp_path, experiment="same")]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ev"
    assert cli.main(["evaluate", "--experiment", "same", "--budgets", "0.3", "--methods", "gate", "--out", str(out),
                     "--tracking-uri", uri, "--throughput-batches", "0"]) == 0
    df = pd.read_csv(out / "evaluation.csv")
    client = mlflow.tracking.MlflowClient(uri)
    expected = {i: f"{client.get_run(i).info.run_name} [{i[:8]}]" for i in ids}
    assert dict(zip(df["run_id"], df["run"])) == expected and len(set(expected.values())) == 2
    assert list(df["trained"]) == ["adaptive-retention seed=0"] * 2


def test_labels_are_unique_per_run():
    cfg = OmegaConf.create({"method": "gate", "ablation": "none", "seed": 0, "logging": {"run_name": None}})
    baseline = OmegaConf.merge(cfg, {"method": "random", "seed": 3})
    a, b = "a" * 8 + "1" * 24, "a" * 8 + "2" * 24  # two run ids alike in their first 8 characters
    tracked = [Source(cfg, Path("x/best.ckpt"), a, "slug-1"), Source(cfg, Path("y/best.ckpt"), b, "slug-1"),
               Source(cfg, Path("z/best.ckpt"), "c" * 32, "slug-1")]
    label_sources(tracked)
    assert [s.label for s in tracked] == [f"slug-1 [{a}]", f"slug-1 [{b}]", "slug-1 [cccccccc]"]
    bare = [Source(cfg, Path("one/run/best.ckpt"), "run", None), Source(cfg, Path("two/run/best.ckpt"), "run", None),
            Source(baseline, Path("abcdef123/best.ckpt"), "abcdef123", None),
            Source(OmegaConf.merge(cfg, {"logging": {"run_name": "mine"}}), Path("d/best.ckpt"), "d", None)]
    label_sources(bare)
    assert [s.label for s in bare] == ["adaptive-retention seed=0 [one/run/best.ckpt]", "adaptive-retention seed=0 [two/run/best.ckpt]",
                                       "trained:random seed=3 [abcdef12]", "mine [d]"]


def test_a_densely_trained_baseline_is_evaluated_with_every_heuristic_selection():
    """method=first (or random, l2, attention) trains the backbone densely: every parameter-free
    selector applies to its weights; our gate does not (it has no trained scorer). LTP and ablations
    keep their own selection."""
    from omegaconf import OmegaConf

    from commands.evaluate import applicable_methods

    every = ["gate", "random", "first", "l2", "attention"]
    dense = OmegaConf.create({"method": "first", "ablation": "none"})
    assert applicable_methods(dense, every) == ["random", "first", "l2", "attention"]
    assert applicable_methods(dense, ["gate", "l2"]) == ["l2"]
    assert applicable_methods(OmegaConf.create({"method": "ltp", "ablation": "none"}), every) == ["gate"]
    assert applicable_methods(OmegaConf.create({"method": "gate", "ablation": "no_context"}), every) == ["gate"]
    assert applicable_methods(OmegaConf.create({"method": "gate", "ablation": "none"}), every) == every


def test_a_run_saved_before_a_new_config_key_loads_with_the_schema_default(tmp_path):
    """A config.yaml written before ``budget.lagrangian`` and ``distill`` existed loads with their
    schema defaults (the behaviour the run trained with), not conf/config.yaml's main-job values, and
    builds its system."""
    import yaml

    from conf.compose import compose, load_run_config
    from datamodules import build_datamodule
    from lightning_modules import build_system

    cfg = compose(TINY)
    saved = yaml.safe_load(OmegaConf.to_yaml(cfg))
    del saved["budget"]["lagrangian"], saved["distill"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    loaded = load_run_config(path)
    assert loaded.budget.lagrangian == "linear" and loaded.distill.ranking is False
    assert loaded.model == cfg.model and loaded.data == cfg.data
    build_system(loaded, build_datamodule(loaded))
