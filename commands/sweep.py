"""``retention sweep``: an Optuna study over the train config, every trial a nested MLflow run.

    retention sweep [--config conf/sweep/<name>.yaml | <name>] [--n-trials N] [--timeout S]
                    [--workers N] [--storage URL] [--study-name NAME] [key=value ...]

The sweep config (schema: :mod:`conf.sweep_schema`) declares the study, the base train config and
the search space. ``key=value`` overrides whose first part is ``study``, ``base`` or ``search_space``
change the sweep config; any other (``trainer.max_epochs=1``, ``model=minilm``) is appended to
``base.overrides`` and so changes the config every trial trains.

Objectives: ``metric`` = the system's primary metric on the hard (exact top-M, tokens removed)
validation path, ``val/<METRIC>_hard``, at the validation epoch where it was highest (the epoch the
checkpoint keeps); ``retention`` = the mean over gated layers of that epoch's achieved kept fraction
``val/kept_fraction_l<ℓ>``. One objective: TPE and pruning (Median or Hyperband, through
``optuna_integration.PyTorchLightningPruningCallback``); two: NSGA-II and a Pareto set.

Storage: by default an Optuna journal file ``./optuna-journal.log`` (safe for many processes on one
machine); a ``*.log`` path names another journal file; anything else is an RDB URL (PostgreSQL for
workers on many machines; ``postgresql://`` uses the psycopg 3 driver). Re-running with the same
study name and storage adds trials to the study.

Killed workers: on RDB storages every running trial sends a heartbeat and a trial silent for the
grace period is failed (Optuna's ``fail_stale_trials``); Optuna's journal storage has no heartbeat, so
there a trial still RUNNING whose worker process (recorded as ``host:pid``) is gone from this host is
failed when the next sweep on this machine starts and after each worker process exits. Either way
the trial's MLflow run is marked failed with the reason, and Optuna's
``RetryHeartbeatStaleTrialCallback`` re-queues its parameters (``study.max_retry`` times).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


from conf import CONF_DIR
from conf.schema import ConfigError
from conf.sweep_schema import OBJECTIVES, SECTIONS, SweepConfig
import copy
import matplotlib.pyplot as plt
import mlflow
import multiprocessing as mp
import optuna
import torch
from commands.cli import EXIT_CONFIG_ERROR
from commands.runner import check_config, default_tracking_uri, make_logger, train
from conf.compose import compose, merge
from datamodules import DATAMODULES
from lightning_modules import TASK_SYSTEMS
from lightning_modules.callbacks import NaNLossGuard, ValidationRecorder
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ov
from optuna_integration import PyTorchLightningPruningCallback
from sqlalchemy.engine import make_url


DEFAULT_JOURNAL = "optuna-journal.log"
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the study's MLflow parent run
SAMPLERS = ("auto", "tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")
TRIAL_STATES = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # Optuna -> MLflow run status


# ---------------------------------------------------------------------------------------- config
def compose_sweep(config: str | None, overrides: Sequence[str] = ()):
    """The sweep config: schema ← ``config`` (a path, or the name of a ``conf/sweep/`` file; default
    ``conf/sweep/default.yaml``) ← overrides of sweep sections; other overrides go to ``base.overrides``."""


    path = Path(config) if config else CONF_DIR / "sweep" / "default.yaml"
    if not path.is_file() and config and (CONF_DIR / "sweep" / f"{config}.yaml").is_file():
        path = CONF_DIR / "sweep" / f"{config}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
        raise ConfigError(f"--config {config!r}: no such file (packaged sweep configs: {names})")
    scfg = merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path), str(path))
    sweep_items, train_items = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        (sweep_items if item.split("=", 1)[0].split(".")[0] in SECTIONS else train_items).append(item)
    try:
        cli = OmegaConf.from_dotlist(sweep_items)
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    scfg = merge(scfg, cli, "override")
    scfg.base.overrides = [*scfg.base.overrides, *train_items]
    return scfg


def _override(key: str, value: Any) -> str:
    """``key=value`` in the dot-list syntax ``compose`` takes (strings stay bare: group options)."""
    return f"{key}={value}" if isinstance(value, str) else f"{key}={json.dumps(value)}"


def compose_trial(scfg, params: dict[str, Any]):
    """The train config of one trial: the base config with the sampled ``params`` applied last."""
    return compose([*scfg.base.overrides, *(_override(k, v) for k, v in params.items())], scfg.base.config)


def build_distributions(scfg) -> dict[str, Any]:
    """Optuna distributions of ``search_space``; a malformed entry raises :class:`ConfigError` naming it."""
    out = {}
    for key, spec in scfg.search_space.items():
        where = f"search_space.{key}"
        try:
            if spec.type == "categorical":
                if not spec.choices or spec.low is not None or spec.high is not None:
                    raise ValueError("a categorical entry needs a non-empty `choices` list and no low/high")
                choices = list(spec.choices)
                if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                    raise ValueError(f"choices must be null, bool, int, float or str (Optuna stores them), got {choices}")
                out[key] = CategoricalDistribution(choices)
                continue
            if spec.type not in ("float", "int"):
                raise ValueError(f"type={spec.type!r}; allowed: float, int, categorical")
            if spec.low is None or spec.high is None or spec.choices is not None:
                raise ValueError(f"a {spec.type} entry needs `low` and `high` (and no choices)")
            if spec.type == "float":
                out[key] = FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
            else:
                bounds = (spec.low, spec.high, spec.step if spec.step is not None else 1)
                if any(float(b) != int(b) for b in bounds):
                    raise ValueError(f"an int entry needs integer low/high/step, got {bounds}")
                out[key] = IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(bounds[2]))
        except ValueError as err:
            raise ConfigError(f"{where}: invalid distribution: {err}") from None
    if not out:
        raise ConfigError("search_space is empty; declare at least one `<config key>: {type, low, high}` entry")
    return out


def _edge_values(dist) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def make_sampler(study, seed: int | None, multi: bool):
    name = study.sampler
    if name == "auto":
        name = "nsga2" if multi else "tpe"
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(study):
    args = dict(study.pruner_args)
    if study.pruner == "none":
        return optuna.pruners.NopPruner()
    cls = optuna.pruners.MedianPruner if study.pruner == "median" else optuna.pruners.HyperbandPruner
    return cls(**args)


def check_sweep(scfg) -> dict[str, Any]:
    """Every check that can fail before a trial starts; returns the distributions.

    A searched key must exist in the train config and both ends of its range (every choice) must
    pass the train config's checks; objectives, sampler, pruner (with its arguments), enqueued trials
    and the trial budget are checked too. Raises :class:`ConfigError` naming the entry."""

    s = scfg.study
    base = compose(scfg.base.overrides, scfg.base.config)
    check_config(base)
    dists = build_distributions(scfg)
    for key, dist in dists.items():
        for value in _edge_values(dist):
            try:
                check_config(compose_trial(scfg, {key: value}))
            except ConfigError as err:
                raise ConfigError(f"search_space.{key} (value {value!r}): {err}") from None
    bad = [o for o in s.objectives if o not in OBJECTIVES]
    if bad or not s.objectives or len(set(s.objectives)) != len(s.objectives):
        raise ConfigError(f"study.objectives={list(s.objectives)}; allowed: [metric] or [metric, retention] (names from {', '.join(OBJECTIVES)})")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler={s.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if s.pruner not in PRUNERS:
        raise ConfigError(f"study.pruner={s.pruner!r}; allowed: {', '.join(PRUNERS)}")
    if s.pruner != "none" and len(s.objectives) > 1:
        raise ConfigError(f"study.pruner={s.pruner!r}: Optuna prunes single-objective studies only; set study.pruner=none")
    try:
        make_pruner(s)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"study.pruner_args={dict(s.pruner_args)}: {err}") from None
    for name, value, ok, allowed in (
        ("study.n_trials", s.n_trials, s.n_trials is None or s.n_trials >= 0, ">= 0 or null"),
        ("study.timeout", s.timeout, s.timeout is None or s.timeout > 0, "> 0 or null"),
        ("study.workers", s.workers, s.workers >= 1, ">= 1"),
        ("study.heartbeat_interval", s.heartbeat_interval, s.heartbeat_interval >= 1, ">= 1"),
        ("study.grace_period", s.grace_period, s.grace_period is None or s.grace_period > s.heartbeat_interval,
         "> study.heartbeat_interval or null"),
        ("study.max_retry", s.max_retry, s.max_retry >= 0, ">= 0"),
    ):
        if not ok:
            raise ConfigError(f"{name}={value!r} is out of range; allowed: {allowed}")
    for i, params in enumerate(s.enqueue):
        for key, value in params.items():
            if key not in dists:
                raise ConfigError(f"study.enqueue[{i}]: {key!r} is not in search_space")
            if not dists[key]._contains(dists[key].to_internal_repr(value)):
                raise ConfigError(f"study.enqueue[{i}]: {key}={value!r} is outside search_space.{key}")
    return dists


# ---------------------------------------------------------------------------------------- storage
def storage_url(storage: str | None) -> str:
    """Where the study lives, for messages and the parent run's tags (passwords hidden)."""
    if not storage or storage.endswith(".log"):
        return f"journal:{Path(storage or DEFAULT_JOURNAL).resolve()}"

    return make_url(_rdb_url(storage)).render_as_string(hide_password=True)


def _rdb_url(url: str) -> str:
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def make_storage(study, stale_callback=None):
    """Optuna storage of ``study.storage`` (see the module docstring)."""
    if not study.storage or study.storage.endswith(".log"):
        return JournalStorage(JournalFileBackend(str(Path(study.storage or DEFAULT_JOURNAL).resolve())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            _rdb_url(study.storage),
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
    """Called with a trial failed because its worker died: marks its MLflow run failed with the
    reason, then re-queues its parameters through Optuna's ``RetryHeartbeatStaleTrialCallback``."""

    def __init__(self, tracking_uri: str, max_retry: int, reason: str) -> None:
        self.tracking_uri, self.max_retry, self.reason = tracking_uri, max_retry, reason

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        worker = trial.user_attrs.get("worker", "?")
        reason = trial.user_attrs.get("fail_reason") or self.reason.format(worker=worker)
        if run_id:
            finish_trial_run(MlflowClient(self.tracking_uri), run_id, "FAIL", reason)
        retries = len(trial.system_attrs.get("retry_history", []))
        again = "re-queued with the same params" if retries < self.max_retry else f"not retried (study.max_retry={self.max_retry})"
        print(f"[sweep] trial {trial.number} failed: {reason}; {again}", file=sys.stderr)
        retry = copy.deepcopy(trial)
        retry.user_attrs = {}  # the retry gets its own MLflow run, worker and (if any) failure reason
        RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, retry)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_local_trials(study, handler: StaleTrialHandler) -> list[int]:
    """Journal storage (no heartbeat): fail RUNNING trials whose worker process on this host is gone."""
    storage, host, reaped = study._storage, socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        h, _, pid = worker.rpartition(":")
        if h != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"worker {worker} died while the trial was running")
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                handler(study, storage.get_trial(t._trial_id))
                reaped.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first
    return reaped


# ---------------------------------------------------------------------------------------- trials
def primary_metric(cfg) -> str:
    return TASK_SYSTEMS[getattr(DATAMODULES[cfg.data.name], "task", "classification")].METRIC


@dataclass
class Objective:
    """One trial: sample, compose the train config, open the trial's nested MLflow run, train, and
    return the objective(s); a failure is recorded on the run and re-raised for Optuna to log."""

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
        retry_of = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
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


def _suggest(trial, name: str, dist):
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)


def _study_handles(scfg, seed_offset: int = 0, stale_reason: str | None = None):
    """(study, tracking URI, experiment id) in this process."""
    s = scfg.study
    base = compose(scfg.base.overrides, scfg.base.config)
    tracking_uri = default_tracking_uri(base.logging.tracking_uri)
    handler = StaleTrialHandler(tracking_uri, s.max_retry, stale_reason or
                                f"no heartbeat for {s.grace_period or 2 * s.heartbeat_interval} s: worker {{worker}} was killed or lost")
    multi = len(s.objectives) > 1
    seed = None if s.seed is None else s.seed + seed_offset
    study = optuna.create_study(
        study_name=s.name, storage=make_storage(s, handler), load_if_exists=True,
        directions=[OBJECTIVES[o] for o in s.objectives],
        sampler=make_sampler(s, seed, multi), pruner=make_pruner(s),
    )
    client = mlflow.tracking.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(base.logging.experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(base.logging.experiment)
    return study, handler, tracking_uri, exp_id


def run_worker(scfg_container: dict, index: int, n_trials: int | None, timeout: float | None, threads: int | None) -> None:
    """One worker: load the study and run trials (a spawned process, or the sweep's own process)."""
    scfg = OmegaConf.merge(OmegaConf.structured(SweepConfig), scfg_container)
    if threads:

        torch.set_num_threads(threads)
    study, _, tracking_uri, exp_id = _study_handles(scfg, seed_offset=index)
    objective = Objective(scfg, build_distributions(scfg), study.user_attrs[PARENT_ATTR], exp_id, tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,), gc_after_trial=True)


def _split(n: int | None, workers: int) -> list[int | None]:
    if n is None:
        return [None] * workers
    return [n // workers + (i < n % workers) for i in range(workers)]


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


def summarize(study, scfg, client, parent_run_id: str) -> str:
    """Log the study's state to the parent run (counts, best trial or Pareto set, the trials table,
    Optuna's plots as PNG) and return a printable summary."""


    s = scfg.study
    trials = study.get_trials(deepcopy=False)
    counts = {st: sum(t.state == getattr(TrialState, st) for t in trials) for st in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    step = len(trials)
    for st, n in counts.items():
        client.log_metric(parent_run_id, f"trials_{st.lower()}", n, step=step)
    lines = [f"study {s.name!r} ({storage_url(s.storage)}): {len(trials)} trials: "
             + ", ".join(f"{n} {st.lower()}" for st, n in counts.items() if n)]
    multi = len(s.objectives) > 1
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if counts["COMPLETE"]:
            best = study.best_trials if multi else [study.best_trial]
            rows = [{"number": t.number, "values": dict(zip(s.objectives, t.values)), "params": t.params,
                     "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for t in best]
            (out / ("pareto_set.json" if multi else "best_trial.json")).write_text(json.dumps(rows, indent=2))
            if multi:
                client.set_tag(parent_run_id, "pareto_trials", ",".join(str(r["number"]) for r in rows))
                lines.append(f"Pareto set ({', '.join(s.objectives)}):")
            else:
                b = rows[0]
                client.log_metric(parent_run_id, "best_value", best[0].value, step=step)
                client.set_tag(parent_run_id, "best_trial_number", str(b["number"]))
                client.set_tag(parent_run_id, "best_run_id", str(b["mlflow_run_id"]))
                for k, v in b["params"].items():
                    client.set_tag(parent_run_id, f"best.{k}", str(v))
                lines.append("best trial:")
            for r in rows:
                vals = ", ".join(f"{k} = {v:.4f}" for k, v in r["values"].items())
                ps = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in r["params"].items())
                lines.append(f"  #{r['number']}: {vals}; {ps}; MLflow run {r['mlflow_run_id']}")
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        plots = _plots(study, s.objectives)
        for name, make in plots.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ax = make()
                except Exception as err:  # e.g. importances need two completed trials
                    lines.append(f"  (plot {name}.png not made: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
                    continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
        for f in sorted(out.iterdir()):
            client.log_artifact(parent_run_id, str(f))
    failed = [t for t in trials if t.state == TrialState.FAIL]
    for t in failed:
        lines.append(f"  trial {t.number} failed: {t.user_attrs.get('fail_reason', 'see its MLflow run / the log')}")
    client.set_terminated(parent_run_id, status="FINISHED")
    lines.append(f"MLflow parent run {parent_run_id} (artifacts: trials.csv, plots)")
    return "\n".join(lines)


def _plots(study, objectives: Sequence[str]) -> dict[str, Any]:
    plots: dict[str, Any] = {}
    for i, name in enumerate(objectives):
        suffix = "" if len(objectives) == 1 else f"_{name}"
        target = None if len(objectives) == 1 else (lambda t, i=i: t.values[i])
        plots[f"optimization_history{suffix}"] = lambda target=target, name=name: ov.plot_optimization_history(
            study, target=target, target_name=name)
        plots[f"param_importances{suffix}"] = lambda target=target, name=name: ov.plot_param_importances(
            study, target=target, target_name=name)
    if len(objectives) > 1:
        plots["pareto_front"] = lambda: ov.plot_pareto_front(study, target_names=list(objectives))
    return plots


# ---------------------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> int:
    flags = {"n_trials": args.n_trials, "timeout": args.timeout, "workers": args.workers,
             "storage": args.storage, "name": args.study_name}
    try:
        scfg = compose_sweep(args.config, args.overrides)
        for k, v in flags.items():
            if v is not None:
                scfg.study[k] = v
        check_sweep(scfg)
    except ConfigError as err:
        print(f"retention: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.print_config:
        print(OmegaConf.to_yaml(scfg))
        return 0
    s = scfg.study
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        study, handler, tracking_uri, exp_id = _study_handles(scfg)
    except Exception as err:
        print(f"retention: cannot open the study {s.name!r} at {storage_url(s.storage)}: {type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 1
    client = MlflowClient(tracking_uri)
    parent = ensure_parent_run(study, scfg, client, exp_id)
    for params in s.enqueue:
        study.enqueue_trial(dict(params), skip_if_exists=True)
    local_reaper = isinstance(study._storage, optuna.storages.JournalStorage)
    if local_reaper:
        reap_dead_local_trials(study, handler)
    else:
        optuna.storages.fail_stale_trials(study)
    print(f"[sweep] study {s.name!r} at {storage_url(s.storage)}: {len(study.trials)} trials so far; adding "
          f"{s.n_trials if s.n_trials is not None else 'trials until the timeout'} with {s.workers} worker(s); "
          f"MLflow parent run {parent} ({tracking_uri})", flush=True)
    container = OmegaConf.to_container(scfg, resolve=True)
    status = 0
    # This process is worker 0; workers 1..N-1 are spawned processes (each imports torch afresh).
    counts = _split(s.n_trials, s.workers)
    threads = max(1, (os.cpu_count() or 1) // s.workers) if s.workers > 1 else None
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_worker, args=(container, i, n, s.timeout, threads), name=f"sweep-worker-{i}")
             for i, n in enumerate(counts) if i > 0 and n != 0]
    for p in procs:
        p.start()
    run_worker(container, 0, counts[0], s.timeout, threads)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            status = 1
            print(f"[sweep] worker process {p.pid} exited with code {p.exitcode}", file=sys.stderr)
    if local_reaper:
        reap_dead_local_trials(study, handler)
    print(summarize(study, scfg, client, parent), flush=True)
    return status
