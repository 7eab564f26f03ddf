"""The life of one MLflow run of ``retention train`` (and of a sweep's trials): who owns it, how it
ends, and how it resumes.

* Statuses. A run is RUNNING while its process trains and tests; it ends FINISHED, FAILED (an
  exception; tag ``retention.error``) or KILLED (SIGINT / SIGTERM; tag ``retention.killed_reason``).
  A process killed without a chance to say so (``kill -9``, a power cut) leaves its run RUNNING: every
  run is tagged with the host and pid that own it (``retention.host``, ``retention.pid``), and
  :func:`reap_orphan_runs`, called when ``retention train`` or ``retention sweep`` starts, marks KILLED
  each RUNNING run of this host whose process no longer exists (the pid and its start time, so a
  reused pid does not pass for the owner). A run the caller opened (a sweep trial) is marked by
  :func:`mark_ended` only when killed; its other failures are the caller's to record.
* Signals. :class:`SignalStop` turns SIGINT and SIGTERM into :class:`RunKilled`, which passes
  through Lightning (its ``_call_and_handle_interrupt`` re-raises a ``BaseException`` that is not a
  ``KeyboardInterrupt``) up to the runner, which marks the run KILLED.
* Resume. Every run saves ``last.ckpt`` (the full trainer state, with :class:`RngState`'s generator
  states) at the end of every training epoch beside ``best.ckpt``; :func:`resume_target` finds the
  run, its checkpoint and its own ``config.yaml`` from ``--resume RUN_ID`` or ``--resume PATH``.
  Under DDP every rank resolves the same target and loads the same ``last.ckpt``.
* Several processes (DDP: ``ddp_spawn``, ``ddp`` under ``torchrun`` or SLURM, several nodes). Only
  global rank 0 owns the run: it creates it, tags it, logs the config and the summary, and marks how
  it ended; the other ranks never open the tracking store (two processes initialising a fresh SQLite
  store race). :class:`SharedRun` gives every rank rank 0's run id and checkpoint folder.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conf.compose import compose
from conf.schema import ConfigError

__all__ = ["CONFIG_NEXT_TO_CHECKPOINT", "LAST", "RESUME_OVERRIDABLE", "TAG_CKPT_DIR", "TAG_HOST", "TAG_PID",
           "RngState", "RunKilled", "ResumeTarget", "SharedRun", "SignalStop", "killed_by", "mark_ended", "owner_tags", "process_alive",
           "reap_orphan_runs", "resume_target", "run_name"]

CONFIG_NEXT_TO_CHECKPOINT = "config.yaml"
LAST = "last.ckpt"
TAG_HOST, TAG_PID, TAG_START = "retention.host", "retention.pid", "retention.pid_start"
TAG_CKPT_DIR = "retention.checkpoint_dir"
# The keys ``--resume`` lets a user change: how long the resumed run trains, and where its tracking
# store is. Anything else would make the resumed run a different experiment under the same run id.
RESUME_OVERRIDABLE = ("trainer.max_epochs", "trainer.max_steps", "logging.tracking_uri")


class RunKilled(BaseException):
    """SIGINT or SIGTERM arrived during a run (a ``BaseException``, so no ``except Exception`` of a
    library swallows it). ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"killed by {signal.Signals(signum).name}")


class SignalStop(L.Callback):
    """SIGINT and SIGTERM end the run as :class:`RunKilled`, even when Python swallowed the exception.

    Within :meth:`raising`, both signals raise :class:`RunKilled` (the previous handlers come back
    after). Lightning's own SIGTERM handler, installed during ``fit``, calls this one after its own.

    A signal that lands while Python runs a ``__del__`` or a weakref callback (SQLAlchemy's, say)
    raises there, and Python prints and drops exceptions raised there: the :class:`RunKilled` is lost.
    Two things then happen, and both are covered:

    * after a SIGTERM, Lightning raises its own ``SIGTERMException`` (a ``SystemExit`` with code 0: the
      run was marked FAILED and the process exited 0). The handler records each signal, and an
      exception that leaves :meth:`raising` after one arrived is re-raised as that signal's
      :class:`RunKilled`;
    * after a SIGINT nothing surfaces and training would go on. As a callback, this object raises the
      recorded signal's :class:`RunKilled` at the next batch boundary of fit, validation and test."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def _handler(self, signum, frame):
        self.received.append(signum)
        raise RunKilled(signum)

    @contextmanager
    def raising(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        except BaseException as err:
            if self.received and killed_by(err) is None:
                raise RunKilled(self.received[0]) from err
            raise
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _check(self, *args) -> None:
        if self.received:
            raise RunKilled(self.received[0])

    on_train_batch_start = on_train_batch_end = _check
    on_validation_batch_start = on_validation_batch_end = _check
    on_test_batch_start = on_test_batch_end = _check


# ---------------------------------------------------------------------------------------- ownership
def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of ``/proc/<pid>/stat``),
    or None where there is no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` exists on this host (and, when ``start`` is given and ``/proc`` can
    tell, is the one that started then, not a later process given the same pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


def owner_tags() -> dict[str, str]:
    """The tags that name this process as the owner of a run."""
    pid = os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(pid), TAG_START: _start_time(pid) or ""}


def reap_orphan_runs(client: MlflowClient) -> list[str]:
    """Mark KILLED every run of the tracking store that is RUNNING, owned by this host, and whose
    owning process no longer exists, tagging ``retention.killed_reason``; print one line per run.
    Returns their run ids."""
    host = socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments()]
    reaped = []
    for i in range(0, len(experiments), 100):  # MLflow searches at most 100 experiments at a time
        runs = client.search_runs(experiments[i:i + 100], filter_string=f"attributes.status = 'RUNNING' and "
                                  f"tags.`{TAG_HOST}` = '{host}'", max_results=1000)
        for run in runs:
            tags = run.data.tags
            pid = int(tags.get(TAG_PID, "0") or 0)
            if pid <= 0 or process_alive(pid, tags.get(TAG_START) or None):
                continue
            reason = (f"its process {pid} on {host} ended without finishing the run (e.g. kill -9); "
                      f"marked when pid {os.getpid()} started")
            client.set_tag(run.info.run_id, "retention.killed_reason", reason)
            client.set_terminated(run.info.run_id, status="KILLED", end_time=int(time.time() * 1000))
            print(f"retention: run {run.info.run_id} was left RUNNING by process {pid}, which no longer "
                  f"exists; marked KILLED", flush=True)
            reaped.append(run.info.run_id)
    return reaped


def killed_by(err: BaseException) -> BaseException | None:
    """The :class:`RunKilled` or ``KeyboardInterrupt`` behind ``err`` (itself, or what Lightning turned
    into ``SystemExit``), else None."""
    return next((e for e in (err, err.__context__) if isinstance(e, (RunKilled, KeyboardInterrupt))), None)


def mark_ended(client: MlflowClient, run_id: str, err: BaseException) -> str:
    """Mark ``run_id`` as ended by ``err``: KILLED for :class:`RunKilled` and ``KeyboardInterrupt``
    (also when Lightning turned either into ``SystemExit``), else FAILED; tag the cause. Returns the status."""
    killed = killed_by(err)
    if killed is not None:
        status, key, text = "KILLED", "retention.killed_reason", str(killed) or "killed by SIGINT"
    else:
        status, key, text = "FAILED", "retention.error", f"{type(err).__name__}: {err}"
    client.set_tag(run_id, key, text[:4000])
    client.set_terminated(run_id, status=status)
    return status


def run_name(cfg) -> str:
    """``logging.run_name``, else ``<data>-<method>[-<ablation>]-rho<ρ>`` (or ``-M<tokens>``, ``-flops<F>``), e.g.
    ``needle-gate-rho0.3``."""
    if cfg.logging.run_name:
        return cfg.logging.run_name
    parts = [str(cfg.data.name), str(cfg.method)]
    if str(cfg.ablation) != "none":
        parts.append(str(cfg.ablation))
    if cfg.budget.get("flops") is not None:  # a FLOPs budget: the ratio only shapes the schedule
        parts.append(f"flops{cfg.budget.flops:g}")
    else:
        parts.append(f"rho{cfg.budget.ratio:g}" if cfg.budget.ratio is not None else f"M{cfg.budget.tokens}")
    return "-".join(parts)


# ---------------------------------------------------------------------------------------- ranks
class SharedRun(L.Callback):
    """The run id and checkpoint folder of global rank 0, broadcast to every rank.

    Global rank 0 sets :attr:`run_id` and :attr:`folder` before fitting (:meth:`own`: it created or
    resumed the run); the other ranks hold None until :meth:`setup`, where ``trainer.strategy.broadcast`` (a
    ``torch.distributed.broadcast_object_list`` from rank 0 under DDP, the identity in one process)
    gives every rank rank 0's values and points every rank's ``ModelCheckpoint`` at the folder.
    ``setup`` is the first hook after Lightning creates the process group, whatever started the
    processes. Passing the id through the environment instead would work only where rank 0 starts the
    others (Lightning's ``ddp`` launcher, ``ddp_spawn``); under ``torchrun``, SLURM's ``srun`` or a
    multi-node job every process starts at once, before any run exists, so a broadcast is the one
    channel that serves every launcher. The callback is put first, before the checkpoint callbacks."""

    def __init__(self, checkpoints: Sequence = ()) -> None:
        self.run_id: str | None = None
        self.folder: Path | None = None
        self.checkpoints = list(checkpoints)

    def own(self, run_id: str, folder: Path | None) -> None:
        """Global rank 0's run and checkpoint folder (set before fitting)."""
        self.run_id, self.folder = run_id, folder
        for callback in self.checkpoints:
            callback.dirpath = str(folder)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.own(*trainer.strategy.broadcast((self.run_id, self.folder), src=0))


# ---------------------------------------------------------------------------------------- resume
class RngState(L.Callback):
    """Saves the Python, NumPy, torch (CPU and CUDA) generator states in each checkpoint and restores
    them on resume, so that a run resumed from an epoch-end ``last.ckpt`` draws the same shuffles and
    gate noise as an uninterrupted one (Lightning's checkpoint holds no generator state). Every state
    is held as tensors and tuples, which torch's ``weights_only`` loading accepts."""

    def state_dict(self) -> dict:
        version, mt, pos = np.random.get_state()[:3]
        return {"python": random.getstate(), "numpy": (version, torch.from_numpy(mt.astype(np.int64)), int(pos)),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        version, mt, pos = state["numpy"]
        np.random.set_state((version, mt.numpy().astype(np.uint32), pos))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class ResumeTarget:
    run_id: str
    checkpoint: Path
    cfg: object


def _split_overrides(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep or key.lstrip("+~") not in RESUME_OVERRIDABLE:
            raise ConfigError(f"--resume: {o!r} cannot change; a resumed run keeps its own config.yaml, and "
                              f"only {', '.join(RESUME_OVERRIDABLE)} may be given")
        out[key] = value
    return out


def resume_target(what: str, overrides: Sequence[str], default_uri) -> ResumeTarget:
    """The run, checkpoint and config that ``--resume WHAT`` continues. ``WHAT`` is a checkpoint file,
    a run's checkpoint folder (its ``last.ckpt``), or an MLflow run id (whose checkpoint folder is its
    ``retention.checkpoint_dir`` tag). The config is the run's own ``config.yaml`` beside the
    checkpoint, with ``overrides`` of :data:`RESUME_OVERRIDABLE` keys only (else a :class:`ConfigError`).
    ``default_uri(configured)`` gives the tracking URI (:func:`commands.runner.default_tracking_uri`)."""
    given = _split_overrides(overrides)
    path = Path(what)
    if path.exists():
        ckpt = path / LAST if path.is_dir() else path
        run_id = ckpt.parent.name
    else:
        uri = default_uri(given.get("logging.tracking_uri"))
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise ConfigError(f"--resume {what}: no such checkpoint file and no such run: the tracking store "
                              f"{uri} does not exist (give logging.tracking_uri=... of the run)")
        try:
            run = MlflowClient(uri).get_run(what)
        except MlflowException:
            raise ConfigError(f"--resume {what}: no such checkpoint file and no such run in {uri}") from None
        folder = run.data.tags.get(TAG_CKPT_DIR)
        if not folder:
            raise ConfigError(f"--resume {what}: the run has no {TAG_CKPT_DIR} tag (not a `retention train` run "
                              "with checkpoints)")
        ckpt, run_id = Path(folder) / LAST, what
    if not ckpt.is_file():
        raise ConfigError(f"--resume {what}: {ckpt} does not exist (last.ckpt is written at the end of each "
                          "training epoch; none is kept with logging.save_checkpoints=false)")
    config = ckpt.parent / CONFIG_NEXT_TO_CHECKPOINT
    if not config.is_file():
        raise ConfigError(f"--resume {what}: no {CONFIG_NEXT_TO_CHECKPOINT} beside {ckpt}")
    cfg = compose([f"{k}={v}" for k, v in given.items()], config_file=config)
    return ResumeTarget(run_id=run_id, checkpoint=ckpt, cfg=cfg)
