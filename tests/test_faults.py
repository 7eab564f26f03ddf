"""Faults around a run: whatever happens, no MLflow run is left RUNNING, nothing is left half-written,
and a killed run resumes to exactly the result of an uninterrupted one.

The signal and resume tests run ``retention train`` in a subprocess (``python -m commands.cli``) and
kill it once fitting has started (its ``config.yaml`` appears in the checkpoint folder when
fitting starts) or once its first ``last.ckpt`` exists."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from commands import cli, run_state, runner
from conf.compose import compose

from .helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
WARNING = "exists and is not empty"


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "commands.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(pattern: str, cwd: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """The first file matching ``pattern`` under ``cwd``, waiting for it while ``proc`` runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(cwd.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {pattern} appeared:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{pattern} did not appear in {timeout} s")


# ------------------------------------------------------------------------------------ fast: no training
def test_runs_are_named_after_task_method_and_budget():
    assert run_state.run_name(compose(TINY)) == "needle-gate-rho0.3"
    assert run_state.run_name(compose([*TINY, "ablation=no_relaxation"])) == "needle-gate-no_relaxation-rho0.3"
    assert run_state.run_name(compose([*TINY, "budget.ratio=null", "budget.tokens=12"])) == "needle-gate-M12"
    assert run_state.run_name(compose([*TINY, "logging.run_name=mine"])) == "mine"


def test_reaping_marks_killed_only_dead_owners_of_this_host(tmp_path):
    """RUNNING runs: one whose pid has exited, one whose pid lives but started at another time (a reused
    pid), one of this very process, one of another host. The first two are marked KILLED with a reason."""
    uri = _uri(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = run_state.owner_tags()
    host = socket.gethostname()
    owners = {
        "dead": {run_state.TAG_HOST: host, run_state.TAG_PID: str(dead.pid)},
        "reused": {**me, "retention.pid_start": "1"},
        "alive": me,
        "elsewhere": {run_state.TAG_HOST: host + "-other", run_state.TAG_PID: str(dead.pid)},
    }
    ids = {name: client.create_run(exp, tags=tags).info.run_id for name, tags in owners.items()}
    assert sorted(run_state.reap_orphan_runs(client)) == sorted([ids["dead"], ids["reused"]])
    for name, run_id in ids.items():
        run = client.get_run(run_id)
        assert run.info.status == ("KILLED" if name in ("dead", "reused") else "RUNNING"), name
        assert ("retention.killed_reason" in run.data.tags) == (name in ("dead", "reused")), name


def test_resume_refuses_overrides_that_change_the_experiment(capsys):
    assert cli.main(["train", "--resume", "nowhere/last.ckpt", "budget.ratio=0.5"]) == 2
    err = capsys.readouterr().err
    assert "budget.ratio=0.5" in err and "trainer.max_epochs" in err and len(err.strip().splitlines()) == 1


def test_resume_of_an_unknown_run_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["train", "--resume", "0123abc", f"logging.tracking_uri={_uri(tmp_path)}"]) == 2
    err = capsys.readouterr().err
    assert "0123abc" in err and "no such run" in err and len(err.strip().splitlines()) == 1


def test_old_save_checkpoint_key_names_the_new_one(capsys):
    assert cli.main(["train", "logging.save_checkpoint=false", "--print-config"]) == 2
    assert "Did you mean one of: 'save_checkpoints'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ in process
def test_data_error_creates_no_run_and_no_checkpoint_folder(tmp_path, monkeypatch):
    """A data file that is not JSON fails while the data module sets up, before the MLflow run exists."""
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 0}\nnot json\n')
    cfg = compose(["data=byo", f"data.data_files={bad}", f"logging.tracking_uri={_uri(tmp_path)}",
                   "trainer.accelerator=cpu"])
    with pytest.raises(Exception):
        runner.train(cfg)
    assert _runs(_uri(tmp_path)) == []
    assert not (tmp_path / "checkpoints").exists()


def test_trainer_argument_error_creates_no_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose([*TINY, f"logging.tracking_uri={_uri(tmp_path)}"])
    cfg.trainer.strategy = "bogus"  # past config checks: the Trainer itself refuses it
    with pytest.raises(Exception, match="bogus"):
        runner.train(cfg)
    assert _runs(_uri(tmp_path)) == []
    assert not (tmp_path / "checkpoints").exists()


class _Boom(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("boom at step 2")


def test_error_during_training_marks_the_run_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = _uri(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        runner.train(compose([*TINY, f"logging.tracking_uri={uri}"]), callbacks=[_Boom()])
    (run,) = _runs(uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["retention.error"] == "RuntimeError: boom at step 2"
    assert f"run {run.info.run_id} marked FAILED" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints" / run.info.run_id).exists()  # failed before any checkpoint: no folder


# ------------------------------------------------------------------------------------ signals (subprocess)
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_marks_the_run_killed(sig, tmp_path):
    proc = _start([*TINY, "trainer.max_epochs=100000", f"logging.tracking_uri={_uri(tmp_path)}"], tmp_path)
    _wait_for("checkpoints/*/config.yaml", tmp_path, proc)
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + sig, out
    (run,) = _runs(_uri(tmp_path))
    assert run.info.status == "KILLED"
    assert run.data.tags["retention.killed_reason"] == f"killed by {sig.name}"
    assert f"run {run.info.run_id} marked KILLED" in out


@pytest.mark.slow
def test_kill_9_then_next_start_marks_the_orphan_killed(tmp_path, monkeypatch, capsys):
    uri = _uri(tmp_path)
    proc = _start([*TINY, "trainer.max_epochs=100000", f"logging.tracking_uri={uri}"], tmp_path)
    _wait_for("checkpoints/*/config.yaml", tmp_path, proc)
    proc.kill()
    proc.wait()
    (orphan,) = _runs(uri)
    assert orphan.info.status == "RUNNING" and orphan.data.tags[run_state.TAG_PID] == str(proc.pid)
    monkeypatch.chdir(tmp_path)  # the next start of the tool on that tracking store
    assert cli.main(["train", *TINY, f"logging.tracking_uri={uri}", "logging.save_checkpoints=false"]) == 0
    runs = {r.info.run_id: r for r in _runs(uri)}
    assert runs[orphan.info.run_id].info.status == "KILLED"
    assert f"process {proc.pid}" in runs[orphan.info.run_id].data.tags["retention.killed_reason"]
    (second,) = set(runs) - {orphan.info.run_id}
    assert runs[second].info.status == "FINISHED" and runs[second].info.run_name == "needle-gate-rho0.3"
    assert not (tmp_path / "checkpoints" / second).exists()  # logging.save_checkpoints=false keeps none
    assert re.search(r"^checkpoint size +-$", capsys.readouterr().out, re.MULTILINE)


# ------------------------------------------------------------------------------------ resume (subprocess)
def _final(uri: str, folder: Path) -> dict:
    """A finished run's test metrics, per-step training metrics and final weights (its last.ckpt)."""
    (run,) = _runs(uri)
    client = MlflowClient(uri)
    steps = {}
    for key in ("train/task_loss_step", "train/lambda_l1"):
        for m in client.get_metric_history(run.info.run_id, key):
            steps.setdefault((key, m.step), set()).add(m.value)
    weights = torch.load(folder / run.info.run_id / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {"run": run, "test": {k: v for k, v in run.data.metrics.items() if k.startswith("test/")},
            "steps": steps, "weights": weights}


@pytest.mark.slow
def test_kill_9_after_first_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL once the first ``last.ckpt`` (end of an epoch) exists, ``--resume RUN_ID``: the run
    ends FINISHED in the same MLflow run, and its λ, every logged training step, the test metrics and
    the weights equal, exactly, those of the same run never interrupted (CPU, deterministic)."""
    args = [*TINY, "data.train_size=256", "trainer.max_epochs=3", "trainer.deterministic=true"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    ref = _start([*args, f"logging.tracking_uri={_uri(ref_dir)}"], ref_dir)
    ref_out = ref.communicate(timeout=600)[0]
    assert ref.returncode == 0, ref_out

    cut = _start([*args, f"logging.tracking_uri={_uri(cut_dir)}"], cut_dir)
    last = _wait_for("checkpoints/*/last.ckpt", cut_dir, cut)
    cut.send_signal(signal.SIGKILL)
    cut.communicate(timeout=60)
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] < 2  # killed before the end
    (killed,) = _runs(_uri(cut_dir))
    run_id = killed.info.run_id
    resumed = _start(["--resume", run_id, f"logging.tracking_uri={_uri(cut_dir)}"], cut_dir)
    resumed_out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, resumed_out

    a, b = _final(_uri(ref_dir), ref_dir / "checkpoints"), _final(_uri(cut_dir), cut_dir / "checkpoints")
    assert b["run"].info.run_id == run_id and b["run"].info.status == "FINISHED"
    assert "retention.killed_reason" not in b["run"].data.tags  # set when the resume reaped it, then cleared
    assert b["test"] == a["test"] and len(a["test"]) >= 5
    assert set(b["steps"]) == set(a["steps"]) and len(a["steps"]) == 2 * 3 * 16  # 16 steps an epoch
    for key, values in b["steps"].items():
        assert values == a["steps"][key], key  # a step the killed process logged again after resume: same value
    assert b["weights"].keys() == a["weights"].keys()
    for name, tensor in a["weights"].items():
        assert torch.equal(b["weights"][name], tensor), name
    for out, folder in ((ref_out, ref_dir), (resumed_out, cut_dir)):
        assert WARNING not in out
        (ckpts,) = (folder / "checkpoints").iterdir()
        assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "config.yaml", "last.ckpt"]


def test_a_sigterm_whose_exception_python_swallowed_still_ends_as_killed():
    """A SIGTERM landing inside a ``__del__`` or weakref callback raises there and Python ignores it;
    Lightning then raises its own SIGTERMException (a SystemExit with code 0). SignalStop turns
    what surfaces into the signal's RunKilled (the run is marked KILLED, the exit code is 143)."""
    with pytest.raises(run_state.RunKilled) as caught:
        with run_state.SignalStop().raising():
            handler = signal.getsignal(signal.SIGTERM)
            try:  # what Python does with an exception raised in a __del__: it prints and drops it
                handler(signal.SIGTERM, None)
            except run_state.RunKilled:
                pass
            raise SystemExit(0)  # Lightning's SIGTERMException
    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert run_state.killed_by(caught.value) is caught.value


class _SwallowedSigint(L.Callback):
    """At step 2, a SIGINT whose RunKilled Python swallowed (as in a ``__del__``): nothing surfaces."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            try:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            except run_state.RunKilled:
                pass


def test_a_sigint_whose_exception_python_swallowed_stops_the_run_as_killed(tmp_path, monkeypatch):
    """CI saw this: the SIGINT's RunKilled was dropped, nothing else surfaced, and the run trained on
    past the test's 120 s. The run must stop at the next batch and be marked KILLED."""
    monkeypatch.chdir(tmp_path)
    uri = _uri(tmp_path)
    with pytest.raises(run_state.RunKilled) as caught:
        runner.train(compose([*TINY, "trainer.max_epochs=50", f"logging.tracking_uri={uri}"]),
                     callbacks=[_SwallowedSigint()])
    assert caught.value.exit_code == 128 + signal.SIGINT
    (run,) = _runs(uri)
    assert run.info.status == "KILLED"
    assert run.data.tags["retention.killed_reason"] == "killed by SIGINT"
    losses = MlflowClient(uri).get_metric_history(run.info.run_id, "train/task_loss_step")
    assert [m.step for m in losses] == [0, 1]  # stopped at the next batch, not after 50 epochs


def test_signal_stop_leaves_other_errors_alone():
    with pytest.raises(ValueError):
        with run_state.SignalStop().raising():
            raise ValueError("not a signal")
