"""``retention sweep``: an Optuna study over the train config, every trial a nested MLflow run.

    retention sweep [--config conf/sweep/<name>.yaml | <name>] [--n-trials N] [--timeout S]
                    [--workers N] [--storage URL] [--study-name NAME] [key=value ...]

The sweep config (schema: :mod:`conf.sweep_schema`; composition and checks:
:mod:`commands.sweep_config`) declares the study, the base train config and the search space; every
check runs before the study is opened. This module runs the study: this process is worker 0,
workers 1..N−1 are spawned processes sharing the study's storage; each trial
(:class:`commands.sweep_study.Objective`) trains one config. One objective: TPE and pruning (Median or
Hyperband); two: NSGA-II and a Pareto set. At the end the summary (:mod:`commands.sweep_report`) is
logged to the study's MLflow parent run and printed.

Storage and killed workers: :mod:`commands.sweep_study` (default: the SQLite file ``./optuna.db`` with
heartbeats). Re-running with the same study name and storage adds trials to the study; its samplers are
then seeded from (``study.seed``, the trials so far, the worker) so that they draw new parameters
(:func:`commands.sweep_study.sampler_seed`).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import warnings

import optuna
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from commands.quiet import silence_library_noise
from commands.run_state import reap_orphan_runs
from commands.sweep_config import build_distributions, check_sweep, compose_sweep
from commands.sweep_report import summarize
from commands.sweep_study import PARENT_ATTR, Objective, ensure_parent_run, open_study, storage_url
from conf.sweep_schema import SweepConfig

__all__ = ["run", "run_worker"]


def run_worker(scfg_container: dict, index: int, n_trials: int | None, timeout: float | None, threads: int | None) -> None:
    """One worker: load the study and run trials (a spawned process, or the sweep's own process)."""
    silence_library_noise()  # a spawned worker has not run commands.cli.main
    scfg = OmegaConf.merge(OmegaConf.structured(SweepConfig), scfg_container)
    if threads:
        torch.set_num_threads(threads)
    study, tracking_uri, exp_id = open_study(scfg, seed_offset=index)
    objective = Objective(scfg, build_distributions(scfg), study.user_attrs[PARENT_ATTR], exp_id, tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,), gc_after_trial=True)


def _split(n: int | None, workers: int) -> list[int | None]:
    """``n`` trials over ``workers`` (None: each runs until the timeout)."""
    if n is None:
        return [None] * workers
    return [n // workers + (i < n % workers) for i in range(workers)]


def run(args: argparse.Namespace) -> int:
    flags = {"n_trials": args.n_trials, "timeout": args.timeout, "workers": args.workers,
             "storage": args.storage, "name": args.study_name}
    scfg = compose_sweep(args.config, args.overrides)  # a ConfigError: exit 2, one line (commands.cli.main)
    for k, v in flags.items():
        if v is not None:
            scfg.study[k] = v
    check_sweep(scfg)
    where = storage_url(scfg.study.storage)  # a storage that is no URL, .db or .log path: ConfigError
    if args.print_config:
        print(OmegaConf.to_yaml(scfg))
        return 0
    s = scfg.study
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        study, tracking_uri, exp_id = open_study(scfg)
    except Exception as err:
        print(f"retention: cannot open the study {s.name!r} at {where}: {type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 1
    client = MlflowClient(tracking_uri)
    reap_orphan_runs(client)  # runs that killed processes of this host left RUNNING
    parent = ensure_parent_run(study, scfg, client, exp_id)
    for params in s.enqueue:
        study.enqueue_trial(dict(params), skip_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial (no-op without heartbeats)
    print(f"[sweep] study {s.name!r} at {where}: {len(study.trials)} trials so far; adding "
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
    print(summarize(study, scfg, client, parent), flush=True)
    return status
