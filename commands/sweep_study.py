"""The Optuna study of ``retention sweep``: its storage, one trial as a nested MLflow run, the
study's MLflow parent run, and what happens to the trial of a killed worker.

Storage (``study.storage``): by default a local SQLite file ``./optuna.db`` through Optuna's
``RDBStorage`` (the sweep's few worker processes on one machine; SQLite's lock wait is raised to
:data:`SQLITE_TIMEOUT_S` so that concurrent writers wait instead of failing with "database is
locked"); a path ending in ``.db`` names such an SQLite file too; any other SQLAlchemy URL, e.g.
PostgreSQL for workers on many machines (``postgresql://`` uses the psycopg 3 driver); a ``*.log`` path
names an Optuna journal file. Anything else is refused before the study opens (:func:`rdb_url`).

Sampler seed (``study.seed``): worker ``k`` of an invocation that finds ``n`` trials already in the
study seeds its sampler with :func:`sampler_seed` ``(seed, n, k)``: ``seed + k`` for a new study (as a
single run always was), else a seed drawn from ``(seed, n, k)`` by NumPy's ``SeedSequence``. So a
resumed study does not replay the random stream of its first run (which would draw the first trials'
parameters again), and a resume is reproducible given the same history (same seed, same trials so far).

Killed workers: on an RDB storage (SQLite or PostgreSQL) every running trial sends a heartbeat every
``study.heartbeat_interval`` seconds; a trial silent for ``study.grace_period`` is failed by Optuna's
``fail_stale_trials`` (when a sweep starts and before every trial), its MLflow run is marked failed
with the reason and Optuna's ``RetryHeartbeatStaleTrialCallback`` re-queues its parameters
(``study.max_retry`` times). A journal file has no heartbeat: there a killed worker's trial stays
RUNNING (it is neither failed nor retried).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from commands.runner import default_tracking_uri, make_logger, train
from commands.sweep_config import compose_trial, make_pruner, make_sampler
from commands.tracking_store import open_store
from conf.checks import ConfigError
from conf.compose import compose
from conf.sweep_schema import OBJECTIVES
from datamodules import DATAMODULES
from lightning_modules import TASK_SYSTEMS
from lightning_modules.callbacks import NaNLossGuard, ValidationRecorder

__all__ = ["DEFAULT_STORAGE", "SQLITE_TIMEOUT_S", "PARENT_ATTR", "STORAGE_FORMS", "rdb_url", "storage_url", "make_storage",
           "sampler_seed", "finish_trial_run", "StaleTrialHandler", "Objective", "open_study", "ensure_parent_run"]

DEFAULT_STORAGE = "optuna.db"  # SQLite file in the working directory
SQLITE_TIMEOUT_S = 60  # seconds a SQLite writer waits for another's lock before "database is locked"
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the study's MLflow parent run
TRIAL_STATES = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # Optuna -> MLflow run status


# ---------------------------------------------------------------------------------------- storage
STORAGE_FORMS = ("an SQLAlchemy URL (sqlite:///PATH/optuna.db, postgresql://USER:PASSWORD@HOST/DB), "
                 "a PATH.db SQLite file or a PATH.log Optuna journal file")


def rdb_url(storage: str | None) -> str:
    """The SQLAlchemy URL of an RDB ``storage``: ``None`` is ``sqlite:///<cwd>/optuna.db``, a path ending in
    ``.db`` ``sqlite:///<its absolute path>``, ``postgresql://`` the psycopg 3 driver's URL. Raises
    :class:`ConfigError` (naming ``study.storage`` and the accepted forms) for a string that is no URL."""
    url = storage or DEFAULT_STORAGE
    if url.endswith(".db") and "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain):]
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(f"study.storage={storage!r} is not a storage; expected {STORAGE_FORMS}") from None
    return url


def _is_journal(storage: str | None) -> bool:
    return bool(storage) and storage.endswith(".log")


def storage_url(storage: str | None) -> str:
    """Where the study lives, for messages and the parent run's tags (passwords hidden)."""
    if _is_journal(storage):
        return f"journal:{Path(storage).resolve()}"
    return make_url(rdb_url(storage)).render_as_string(hide_password=True)


def sampler_seed(seed: int | None, n_trials: int, worker: int) -> int | None:
    """The sampler seed of worker ``worker`` when the study already holds ``n_trials`` trials: ``seed + worker``
    for a new study, else the first word of NumPy's ``SeedSequence((seed, n_trials, worker))`` (a resume
    must not replay the first run's random stream); ``None`` stays unseeded."""
    if seed is None:
        return None
    if n_trials == 0:
        return seed + worker
    return int(np.random.SeedSequence((seed, n_trials, worker)).generate_state(1)[0])


def make_storage(study, stale_callback=None):
    """Optuna storage of ``study.storage`` (see the module docstring); an RDB storage gets heartbeats
    that fail a trial silent for ``study.grace_period`` (default 2 × interval) and call ``stale_callback``."""
    if _is_journal(study.storage):
        return JournalStorage(JournalFileBackend(str(Path(study.storage).resolve())))
    url = rdb_url(study.storage)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if make_url(url).get_backend_name() == "sqlite" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs,
            heartbeat_interval=study.heartbeat_interval,
            grace_period=study.grace_period or 2 * study.heartbeat_interval,
            heartbeat_stale_trial_callback=stale_callback,
        )


# ---------------------------------------------------------------------------------------- MLflow
def finish_trial_run(client, run_id: str, state: str, reason: str | None = None) -> None:
    """Final state of a trial's MLflow run: tag ``optuna.trial_state`` (COMPLETE / PRUNED / FAIL),
    ``optuna.fail_reason`` and the run status (FINISHED / KILLED / FAILED)."""
    client.set_tag(run_id, "optuna.trial_state", state)
    if reason:
        client.set_tag(run_id, "optuna.fail_reason" if state == "FAIL" else "optuna.prune_reason", reason[:4000])
    client.set_terminated(run_id, status=TRIAL_STATES[state])


class StaleTrialHandler:
    """Optuna's ``heartbeat_stale_trial_callback``: called with a trial failed because its worker fell
    silent, it marks the trial's MLflow run failed with the reason, then re-queues its parameters
    through Optuna's ``RetryHeartbeatStaleTrialCallback``."""

    def __init__(self, tracking_uri: str, max_retry: int, reason: str) -> None:
        self.tracking_uri, self.max_retry, self.reason = tracking_uri, max_retry, reason

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        reason = self.reason.format(worker=trial.user_attrs.get("worker", "?"))
        if run_id:
            finish_trial_run(MlflowClient(self.tracking_uri), run_id, "FAIL", reason)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retries = len(RetryHeartbeatStaleTrialCallback.retry_history(trial))
        again = "re-queued with the same params" if retries < self.max_retry else f"not retried (study.max_retry={self.max_retry})"
        print(f"[sweep] trial {trial.number} failed: {reason}; {again}", file=sys.stderr)
        retry = copy.deepcopy(trial)
        retry.user_attrs = {}  # the retry gets its own MLflow run and worker
        RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, retry)


# ---------------------------------------------------------------------------------------- trials
def primary_metric(cfg) -> str:
    return TASK_SYSTEMS[getattr(DATAMODULES[cfg.data.name], "task", "classification")].METRIC


def _suggest(trial, name: str, dist):
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)


def _retry_of(trial) -> int | None:
    """The number of the trial this one re-runs (Optuna's ``retried_trial_number``), else None."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                  if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


@dataclass
class Objective:
    """One trial: sample, compose the train config, open the trial's nested MLflow run, train, and
    return the objective(s); a failure is recorded on the run and re-raised for Optuna to log.

    Objectives: ``metric`` = the system's primary metric on the hard (exact top-M, tokens removed)
    validation path, ``val/<METRIC>_hard``, at the validation epoch where it was highest (the epoch the
    checkpoint keeps); ``retention`` = the mean over gated layers of that epoch's achieved kept
    fraction ``val/kept_fraction_l<ℓ>``."""

    scfg: Any
    dists: dict
    parent_run_id: str
    experiment_id: str
    tracking_uri: str

    def __call__(self, trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {k: _suggest(trial, k, d) for k, d in self.dists.items()}
        s = self.scfg.study
        client = MlflowClient(self.tracking_uri)
        tags = {"mlflow.parentRunId": self.parent_run_id, "sweep.role": "trial", "optuna.study_name": s.name,
                "optuna.trial_number": str(trial.number), "optuna.worker": trial.user_attrs["worker"],
                "sweep.params": ",".join(self.dists)}
        retry_of = _retry_of(trial)
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)
        run = client.create_run(self.experiment_id, run_name=f"{s.name}-trial-{trial.number}", tags=tags)
        run_id = run.info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            cfg = compose_trial(self.scfg, params)
            metric = primary_metric(cfg)
            recorder = ValidationRecorder(metric)
            callbacks = [recorder, NaNLossGuard()]
            if s.pruner != "none":
                callbacks.append(PyTorchLightningPruningCallback(trial, monitor=recorder.monitor))
            summary = train(cfg, callbacks=callbacks, logger=make_logger(cfg, run_id=run_id), print_summary=False)
            value, retention = recorder.objective()
            if not math.isfinite(value):
                raise FloatingPointError(f"{recorder.monitor} is {value}")
        except optuna.TrialPruned as err:
            finish_trial_run(client, run_id, "PRUNED", str(err))
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            trial.set_user_attr("fail_reason", reason[:4000])
            finish_trial_run(client, run_id, "FAIL", reason)
            raise
        trial.set_user_attr("metric", metric)
        trial.set_user_attr("retention", retention)
        trial.set_user_attr(f"test_{metric}_hard", summary["retained"])
        client.log_metric(run_id, "objective/metric", value)
        client.log_metric(run_id, "objective/retention", retention)
        finish_trial_run(client, run_id, "COMPLETE")
        values = {"metric": value, "retention": retention}
        out = [values[o] for o in s.objectives]
        return out[0] if len(out) == 1 else out


def open_study(scfg, seed_offset: int = 0):
    """(study, tracking URI, MLflow experiment id) in this process; creates the study on first use. The
    sampler is seeded with :func:`sampler_seed` ``(study.seed, trials already in the study, seed_offset)``."""
    s = scfg.study
    base = compose(scfg.base.overrides, scfg.base.config)
    tracking_uri = default_tracking_uri(base.logging.tracking_uri)
    grace = s.grace_period or 2 * s.heartbeat_interval
    handler = StaleTrialHandler(tracking_uri, s.max_retry, f"no heartbeat for {grace} s: worker {{worker}} was killed or lost")
    storage = make_storage(s, handler)
    try:
        n_trials = storage.get_n_trials(storage.get_study_id_from_name(s.name))
    except KeyError:  # a new study
        n_trials = 0
    study = optuna.create_study(
        study_name=s.name, storage=storage, load_if_exists=True, directions=[OBJECTIVES[o] for o in s.objectives],
        sampler=make_sampler(s, sampler_seed(s.seed, n_trials, seed_offset), len(s.objectives) > 1),
        pruner=make_pruner(s),
    )
    exp_id = open_store(tracking_uri, base.logging.experiment).get_experiment_by_name(base.logging.experiment).experiment_id
    return study, tracking_uri, exp_id


# ---------------------------------------------------------------------------------------- parent run
def ensure_parent_run(study, scfg, client, experiment_id: str) -> str:
    """The study's MLflow parent run (created with the study's settings as params on first use;
    its id is kept in the study's user attrs so every worker and every resume nests under it)."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception as err:  # the tracking store was reset or is another one
            print(f"[sweep] parent run {run_id} of study {study.study_name!r} not found in this tracking "
                  f"store ({type(err).__name__}); opening a new parent run", file=sys.stderr)
    s = scfg.study
    run = client.create_run(experiment_id, run_name=f"{s.name}", tags={
        "sweep.role": "parent", "optuna.study_name": s.name, "optuna.storage": storage_url(s.storage),
        "sweep.params": ",".join(scfg.search_space), "sweep.objectives": ",".join(s.objectives)})
    run_id = run.info.run_id
    params = {"study.name": s.name, "study.objectives": ",".join(s.objectives), "study.sampler": s.sampler,
              "study.pruner": s.pruner, "study.pruner_args": json.dumps(dict(s.pruner_args)),
              "base.config": str(scfg.base.config), "base.overrides": " ".join(scfg.base.overrides)[:6000]}
    for key, spec in OmegaConf.to_container(scfg.search_space).items():
        params[f"search_space.{key}"] = json.dumps({k: v for k, v in spec.items() if v not in (None, False)})
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id
