"""``retention train`` under DDP with two CPU processes (gloo), started by each kind of launcher: one
MLflow run, owned and finished by global rank 0, one checkpoint folder that every rank agrees on,
λ identical on every rank (each rank's own value, written by :mod:`tests.ddp_probe`, against the
checkpoint's), and ``--resume`` of that run under DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from commands.checkpoints import load_checkpoint
from .ddp_probe import ENV

from .helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
# 96 examples, batch 8 per process, 2 processes: 6 steps an epoch
DDP_TINY = [*TINY, "data.train_size=96", "data.batch_size=8", "trainer.accelerator=cpu", "trainer.devices=2"]
STEPS_PER_EPOCH = 96 // (8 * 2)
TEST_METRICS = {"test/acc_dense", "test/acc_soft", "test/acc_hard", "test/kept_fraction_l1", "test/retained_over_dense"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a launch: the probe registered as a Lightning callback entry point."""
    site = tmp_path / "site"
    info = site / "retention_ddp_probe-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: retention-ddp-probe\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[lightning.pytorch.callbacks_factory]\nprobe = tests.ddp_probe:factory\n")
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    for old in probe.glob("*.json"):
        old.unlink()
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", ENV: str(probe), "OMP_NUM_THREADS": "1",
            "MASTER_PORT": str(_free_port())}


def _launch(tmp_path: Path, launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = _probe_env(tmp_path)
    if launcher:
        launcher = [*launcher, "--master_port", env["MASTER_PORT"]]
    cmd = [sys.executable, *launcher, "-m", "commands.cli", "train", *args]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _ranks(tmp_path: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "probe").glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1] and {r["world_size"] for r in records} == {2}
    assert records[0]["pid"] != records[1]["pid"]  # two processes
    return records


def _check_one_finished_run(tmp_path: Path, uri: str, out: str, steps: int) -> str:
    """Exactly one run, FINISHED, with the test metrics; one checkpoint folder named by it, which every
    rank used; λ and the gates equal on both ranks, λ equal to last.ckpt's (DDP without
    find_unused_parameters: every parameter takes part in the loss, or the second step would fail). Returns the run id."""
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert TEST_METRICS <= set(run.data.metrics), sorted(run.data.metrics)
    folder = tmp_path / "ckpt" / run_id
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == [run_id]
    assert {"best.ckpt", "last.ckpt", "config.yaml"} <= {p.name for p in folder.iterdir()}
    assert run.data.tags["retention.checkpoint_dir"] == str(folder.resolve())
    assert out.count("MLflow run id") == 1 and run_id in out  # rank 0 alone prints the summary

    ranks = _ranks(tmp_path)
    assert [Path(r["checkpoint_dir"]).resolve() for r in ranks] == [folder.resolve()] * 2
    assert [r["global_step"] for r in ranks] == [steps, steps]
    lam = torch.tensor(ranks[0]["lambda"])
    assert ranks[0]["lambda"] == ranks[1]["lambda"] and ranks[0]["gates"] == ranks[1]["gates"]
    assert torch.equal(load_checkpoint(folder / "last.ckpt")["state_dict"]["lam"], lam)
    assert not torch.equal(lam, torch.zeros_like(lam))  # λ moved from its initial 0
    return run_id


@pytest.mark.slow
def test_torchrun_ddp_one_run_owned_by_rank_zero_then_resume(tmp_path):
    """``torchrun --nproc_per_node 2 retention train trainer.strategy=ddp``: both processes run the
    whole command; rank 1 must neither crash on rank 0's run id nor open a second run. Then
    ``--resume RUN_ID`` under torchrun: both ranks load the same last.ckpt and continue the same run."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = _launch(tmp_path, torchrun, [*DDP_TINY, "trainer.strategy=ddp", "trainer.max_epochs=2",
                                        f"logging.tracking_uri={uri}", f"logging.checkpoint_dir={tmp_path / 'ckpt'}"])
    run_id = _check_one_finished_run(tmp_path, uri, done.stdout, steps=2 * STEPS_PER_EPOCH)

    done = _launch(tmp_path, torchrun, ["--resume", run_id, "trainer.max_epochs=3", f"logging.tracking_uri={uri}"])
    assert _check_one_finished_run(tmp_path, uri, done.stdout, steps=3 * STEPS_PER_EPOCH) == run_id
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["retention.resumed_from"] == str((tmp_path / "ckpt" / run_id / "last.ckpt").resolve())


@pytest.mark.slow
def test_ddp_spawn_one_run_and_the_same_lambda_on_both_ranks(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    done = _launch(tmp_path, [], [*DDP_TINY, "trainer.strategy=ddp_spawn", "trainer.max_epochs=1",
                                  f"logging.tracking_uri={uri}", f"logging.checkpoint_dir={tmp_path / 'ckpt'}"])
    _check_one_finished_run(tmp_path, uri, done.stdout, steps=STEPS_PER_EPOCH)
