"""One ``seed=N`` seeds everything, the data included (``data.seed`` follows it unless given), and a
run's MLflow params are exactly its flattened config: no DataModule field logged beside it (a bare
``seed`` from the DataModule made MLflow refuse ``retention train seed=1``), no key twice."""

import mlflow
import pytest
from omegaconf import OmegaConf

from commands import cli
from commands.runner import flatten_params
from conf.compose import compose, config_groups
from datamodules import DATAMODULES

from .helpers import TINY

TINY_SIZES = [o for o in TINY if not o.startswith(("data.seq_len", "data.vocab_size"))]
SYNTHETIC = {
    "needle": ["data.seq_len=32", "data.vocab_size=40"],
    "kv_retrieval": ["data.seq_len=48", "data.vocab_size=64", "data.num_keys=8", "data.num_classes=4"],
    "mqar": ["data.seq_len=48", "data.vocab_size=64", "data.num_keys=8", "data.num_classes=4", "data.num_queries=3"],
    "listops": ["data.seq_len=48", "data.min_seq_len=12", "data.max_depth=4", "data.max_args=4"],
    "synthetic_qa": ["data.seq_len=96", "data.num_facts=3"],
}


def test_every_data_module_has_a_preset_and_the_synthetic_ones_are_listed():
    assert set(config_groups()["data"]) == set(DATAMODULES)
    assert set(SYNTHETIC) <= set(DATAMODULES)


@pytest.mark.parametrize("data", sorted(DATAMODULES))
def test_seed_seeds_the_data_unless_data_seed_is_given(data):
    extra = ["data.data_files=x.csv"] if data == "byo" else []
    assert compose([f"data={data}", *extra]).data.seed == 0
    assert compose([f"data={data}", *extra, "seed=1"]).data.seed == 1
    assert compose([f"data={data}", *extra, "seed=1", "data.seed=3"]).data.seed == 3
    assert compose([f"data={data}", *extra, "data.seed=3", "seed=1"]).data.seed == 3  # order does not matter
    cfg = compose([f"data={data}", *extra, "seed=1", "data.seed=0"])
    assert (cfg.seed, cfg.data.seed) == (1, 0)  # given explicitly, even equal to the default


def test_a_saved_config_keeps_its_data_seed(tmp_path):
    saved = tmp_path / "config.yaml"
    OmegaConf.save(compose(["seed=2"]), saved)
    assert compose(config_file=saved).data.seed == 2
    assert compose(["seed=5"], config_file=saved).data.seed == 2  # the file sets data.seed


def run_params(tmp_path, data: str, *overrides: str) -> tuple[dict, dict]:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    args = [f"data={data}", *TINY_SIZES, *SYNTHETIC[data], f"logging.tracking_uri={uri}", *overrides]
    assert cli.main(["train", *args]) == 0
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(compose(args).logging.experiment).experiment_id])
    expected = {k: str(v) for k, v in flatten_params(OmegaConf.to_container(compose(args), resolve=True)).items()}
    return run.data.params, expected


def test_train_with_seed_1_logs_exactly_the_flattened_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params, expected = run_params(tmp_path, "needle", "seed=1")
    assert params == expected
    assert params["seed"] == params["data.seed"] == "1"


@pytest.mark.slow
@pytest.mark.parametrize("data", sorted(set(SYNTHETIC) - {"needle"}))
def test_every_synthetic_task_trains_with_seed_1(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params, expected = run_params(tmp_path, data, "seed=1")
    assert params == expected
    assert params["seed"] == params["data.seed"] == "1"
