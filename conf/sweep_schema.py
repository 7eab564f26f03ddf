"""Structured schema of a sweep config (``conf/sweep/<name>.yaml``, read by ``retention sweep``).

A sweep config has three sections:

``study``         the Optuna study: name, storage, objectives, sampler, pruner, budget of trials;
``base``          the trained config every trial starts from: an optional ``retention train``
                  config file and dot-list overrides, exactly as ``retention train`` takes them;
``search_space``  ``<dotted train-config key>: {type, low, high, log, step | choices}``; any key
                  of the train config (or a config group such as ``model``) may be searched.

OmegaConf's structured mode rejects unknown keys and wrong types here as in the train config; the
checks that need Optuna or the train config (distributions, that every searched key exists and that
its range passes the train config's range checks) live in :mod:`commands.sweep_config` and run
before any trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["SweepConfig", "StudyConfig", "BaseConfig", "ParamSpec", "SECTIONS", "OBJECTIVES"]

# objective name -> Optuna direction. "metric": the system's primary metric on the hard (top-M)
# validation path, val/<METRIC>_hard; "retention": the achieved kept fraction of that path.
OBJECTIVES = {"metric": "maximize", "retention": "minimize"}


@dataclass
class ParamSpec:
    type: str = "float"  # float | int | categorical
    low: Optional[float] = None  # float / int: the range (inclusive)
    high: Optional[float] = None
    log: bool = False  # sample log-uniformly (float / int)
    step: Optional[float] = None  # discretisation step (float / int); not with log
    choices: Optional[List[Any]] = None  # categorical: the values (a config group takes option names)


@dataclass
class StudyConfig:
    name: str = "retention-sweep"  # re-running with the same name and storage adds trials to the study
    storage: Optional[str] = None  # None: SQLite file ./optuna.db (heartbeats); a *.db path: that SQLite file;
    #                                a *.log path: an Optuna journal file (no heartbeats); otherwise an SQLAlchemy
    #                                URL (sqlite:///path/x.db, postgresql://user:pw@host/db); anything else: exit 2
    objectives: List[str] = field(default_factory=lambda: ["metric"])  # [metric] or [metric, retention]
    sampler: str = "auto"  # auto (TPE; NSGA-II for two objectives) | tpe | random | nsga2
    seed: Optional[int] = None  # sampler seed; worker k uses seed + k on a new study, and a seed derived from
    #                             (seed, trials already in the study, k) on a resumed one (no replayed draws)
    pruner: str = "median"  # median | hyperband | none (pruning needs a single objective)
    pruner_args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the Optuna pruner
    n_trials: Optional[int] = 20  # trials this invocation adds (over all its workers); None: until timeout
    timeout: Optional[float] = None  # seconds; each worker stops starting trials after this
    workers: int = 1  # worker processes sharing the study on this machine
    heartbeat_interval: int = 30  # RDB storages (SQLite, PostgreSQL): seconds between a running trial's heartbeats
    grace_period: Optional[int] = None  # RDB storages: a trial silent this long is failed (None: 2 × interval)
    max_retry: int = 1  # a killed worker's trial is re-run this many times with the same params
    enqueue: List[Dict[str, Any]] = field(default_factory=list)  # trials to run first: [{key: value, ...}]


@dataclass
class BaseConfig:
    config: Optional[str] = None  # a `retention train --config` file
    overrides: List[str] = field(default_factory=list)  # dot-list / group=option, as `retention train` takes


@dataclass
class SweepConfig:
    study: StudyConfig = field(default_factory=StudyConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    search_space: Dict[str, ParamSpec] = field(default_factory=dict)


SECTIONS = ("study", "base", "search_space")
