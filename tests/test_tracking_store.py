"""Opening the tracking store (commands/tracking_store.py): two processes that open the same fresh
SQLite store at the same moment (as two `retention train` started at once in a new directory do) both
succeed (MLflow's schema creation raced: ``table experiments already exists``, ``duplicate column
name``; without the lock the pair failed 3 times in 3), and both find the one experiment they asked
for. A run's logger opens the store this way before MLflow's own client touches it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from commands.runner import new_logger
from commands.tracking_store import open_store, store_lock
from conf.compose import compose

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 1

# One process of the pair: for each round, wait until the other process is ready too (a barrier made
# of files), then open a fresh store and create the grid's experiment (what a run's logger does first,
# commands.runner.new_logger) and a run in it. Prints the experiment ids.
WORKER = """
import sys, time
from pathlib import Path
from commands.tracking_store import open_store
folder, me, other, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
for r in range(rounds):
    (folder / f"ready-{r}-{me}").touch()
    while not (folder / f"ready-{r}-{other}").exists():
        time.sleep(0.0002)
    client = open_store(f"sqlite:///{folder / f'mlflow-{r}.db'}", "grid")
    exp_id = client.get_experiment_by_name("grid").experiment_id
    client.create_run(exp_id)
    print(exp_id, flush=True)
"""


@pytest.mark.slow
def test_two_processes_open_a_fresh_store_at_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), me, other, str(ROUNDS)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ids = [out.split() for out, _ in outs]
    assert ids[0] == ids[1] and len(ids[0]) == ROUNDS  # one experiment per store, the same one for both
    for r in range(ROUNDS):
        client = MlflowClient(f"sqlite:///{tmp_path / f'mlflow-{r}.db'}")
        assert {e.name for e in client.search_experiments()} == {"Default", "grid"}
        assert len(client.search_runs([ids[0][r]])) == 2  # both runs


def test_store_lock_only_for_sqlite_files(tmp_path):
    db = tmp_path / "mlflow.db"
    assert Path(store_lock(f"sqlite:///{db}").lock_file) == tmp_path / "mlflow.db.lock"
    for uri in ("sqlite://", "sqlite:///:memory:", "http://127.0.0.1:5000", "postgresql://u@h/db"):
        assert not hasattr(store_lock(uri), "lock_file"), uri


@pytest.mark.slow  # MLflow's schema creation: ~5 s on a busy machine
def test_open_store_creates_the_experiment_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = open_store(uri, "grid").get_experiment_by_name("grid").experiment_id
    assert open_store(uri, "grid").get_experiment_by_name("grid").experiment_id == first
    assert open_store(uri).get_experiment_by_name("grid").experiment_id == first


@pytest.mark.slow  # MLflow's schema creation
def test_new_logger_opens_the_store_before_mlflow_does(tmp_path):
    """Lightning's MLFlowLogger opens the store when built and creates its experiment only when first
    used: after new_logger the experiment exists, so open_store (under the lock) came first."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    new_logger(compose([f"logging.tracking_uri={uri}", "logging.experiment=grid"]))
    assert MlflowClient(uri).get_experiment_by_name("grid") is not None
