"""``retention compare``: a table and plots of tracked runs, read with ``mlflow.search_runs``.

    retention compare (--experiment NAME | --parent RUN_ID | --runs ID [ID ...])
                      [--tracking-uri URI] [--filter "MLflow filter"] [--sort COLUMN] [--ascending]
                      [--params KEY ...] [--metrics KEY ...] [--out DIR]

Rows: the runs (a sweep's parent run itself is left out; ``--parent`` takes its nested trial runs).
Columns: run, trial number and final state (sweeps), the params (``--params``, else a sweep's searched
keys and the params that every run logs and that differ: :func:`choose_params`), the primary metric
on the hard / soft / dense paths, retained/dense, the achieved retention (mean over gated layers of
``test/kept_fraction_l<ℓ>``, else ``val/…``), any throughput metric, and ``pareto``: whether the run is
on the metric-vs-retention Pareto front. A run without a value (another data module's param, a run
that failed before testing) has an empty cell. Written to ``DIR/runs.csv`` and ``DIR/runs.md`` with
``metric_vs_retention.png`` (front drawn) and ``metric_vs_<param>.png`` for each param of
``--params``, else each searched key of a sweep, else each differing param if there are at most
:data:`MAX_AUTO_PLOTS` (an experiment of mixed runs plots none). Works against any tracking URI: a
SQLite store or an MLflow tracking server.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from matplotlib.ticker import MaxNLocator

from commands.runner import default_tracking_uri
from commands.tracking_store import open_store
from mlflow.exceptions import MlflowException


THROUGHPUT = re.compile(r"throughput|speedup|tokens_per_s|samples_per_s", re.IGNORECASE)
_HARD = re.compile(r"^metrics\.(?:val|test)/(.+)_hard$")
NOT_TASK_METRICS = ("kept_fraction", "needle_kept")  # <name>_hard metrics that are not the task's
BOOKKEEPING = ("logging.", "trainer.enable_progress_bar")  # params that say nothing about the model
MAX_AUTO_PLOTS = 4  # runs of no sweep, no --params: plot the differing params only if this few


def pareto_front(retention: Sequence[float], metric: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (retention ↓, metric ↑); NaNs are skipped."""
    pts = [i for i in range(len(metric)) if not (math.isnan(retention[i]) or math.isnan(metric[i]))]
    front, best = [], -math.inf
    for i in sorted(pts, key=lambda i: (retention[i], -metric[i])):
        if metric[i] > best:
            front.append(i)
            best = metric[i]
    return front


def fetch_runs(tracking_uri: str, experiment: str | None = None, parent: str | None = None,
               run_ids: Sequence[str] | None = None, filter_string: str = ""):
    """The runs as ``mlflow.search_runs`` returns them (a pandas DataFrame), without sweep parent runs."""
    open_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    clauses = [filter_string] if filter_string else []
    if parent:
        exp_id = mlflow.tracking.MlflowClient().get_run(parent).info.experiment_id
        clauses.append(f"tags.mlflow.parentRunId = '{parent}'")
        df = mlflow.search_runs(experiment_ids=[exp_id], filter_string=" and ".join(clauses))
    elif run_ids:
        clauses.append("attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")")
        df = mlflow.search_runs(search_all_experiments=True, filter_string=" and ".join(clauses))
        missing = sorted(set(run_ids) - set(df["run_id"])) if len(df) else sorted(run_ids)
        if missing:
            raise LookupError(f"run(s) not found at {tracking_uri}: {', '.join(missing)}")
    else:
        if mlflow.get_experiment_by_name(experiment) is None:
            raise LookupError(f"no experiment named {experiment!r} at {tracking_uri}")
        df = mlflow.search_runs(experiment_names=[experiment], filter_string=" and ".join(clauses))
    if "tags.sweep.role" in df.columns:
        df = df[df["tags.sweep.role"] != "parent"]
    return df.reset_index(drop=True)


def _numeric(series):
    """The param column as numbers where every logged value is one (MLflow logs an unset value as
    ``"None"``: missing), else as logged."""
    series = series.mask(series == "None")
    converted = pd.to_numeric(series, errors="coerce")
    return converted if converted.notna().sum() == series.notna().sum() else series


def choose_params(df, requested: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(the table's param columns, the params plotted against the metric).

    ``--params``: those, each plotted. Otherwise the columns are a sweep's searched keys (tag
    ``sweep.params`` of its trials) followed by the params that every run logs and that differ
    between the runs (a key only some runs log, e.g. one data module's, follows from one that all
    log, e.g. ``data.name``); bookkeeping (``logging.*``, the progress bar) is left out, and runs
    that logged no param at all (crashed at once) do not count. Plotted: the searched keys; for runs
    of no sweep, the differing params if there are at most :data:`MAX_AUTO_PLOTS`, else none."""
    logged = [c for c in df.columns if c.startswith("params.") and not c[len("params."):].startswith(BOOKKEEPING)]
    if requested:
        missing = [p for p in requested if f"params.{p}" not in df.columns]
        if missing:
            raise LookupError(f"param {missing[0]!r} is not logged by these runs")
        return list(requested), list(requested)
    swept = df["tags.sweep.params"].dropna() if "tags.sweep.params" in df.columns else []
    swept = [p for p in dict.fromkeys(p for s in swept for p in s.split(",") if p) if f"params.{p}" in df.columns]
    with_params = df[df[[c for c in df.columns if c.startswith("params.")]].notna().any(axis=1)]
    differing = sorted(c[len("params."):] for c in logged
                       if with_params[c].notna().all() and with_params[c].nunique() > 1)
    columns = list(dict.fromkeys([*swept, *differing]))
    if swept:
        return columns, swept
    return columns, differing if len(differing) <= MAX_AUTO_PLOTS else []


def build_table(df, params: Sequence[str] | None = None, metrics: Sequence[str] = ()):
    """(table, primary metric name, param columns, params to plot) from ``fetch_runs``' DataFrame;
    the params as :func:`choose_params` chooses them. A run without a value of a column (a param
    it does not log, a metric it has not got) has an empty cell there."""
    # the task's metric: kept fractions and the needle-kept rate are hard-path figures too, not the task's
    found = Counter(m.group(1) for c in df.columns
                    if (m := _HARD.match(c)) and not m.group(1).startswith(NOT_TASK_METRICS))
    metric = found.most_common(1)[0][0] if found else None
    columns = {"run_id": df["run_id"], "run_name": df.get("tags.mlflow.runName")}  # one DataFrame at the end
    if "tags.optuna.trial_number" in df.columns:
        columns["trial"] = pd.to_numeric(df["tags.optuna.trial_number"], errors="coerce").astype("Int64")
        columns["state"] = df["tags.optuna.trial_state"].fillna(df["status"]) if "tags.optuna.trial_state" in df else df["status"]
    else:
        columns["state"] = df["status"]
    params, plotted = choose_params(df, params)
    for p in params:
        columns[p] = _numeric(df[f"params.{p}"])
    wanted = []
    if metric:
        wanted += [f"val/{metric}_hard", f"test/{metric}_hard", f"test/{metric}_soft", f"test/{metric}_dense",
                   "test/retained_over_dense"]
    wanted += [c[len("metrics."):] for c in df.columns if c.startswith("metrics.") and THROUGHPUT.search(c)]
    for m in metrics:
        if f"metrics.{m}" not in df.columns:
            raise LookupError(f"metric {m!r} is not logged by these runs")
    for m in dict.fromkeys([*wanted, *metrics]):
        if f"metrics.{m}" in df.columns:
            columns[m] = df[f"metrics.{m}"]
    for stage in ("test", "val"):
        kept = [c for c in df.columns if c.startswith(f"metrics.{stage}/kept_fraction_l")]
        if kept:
            columns["retention"] = df[kept].mean(axis=1)
            break
    table = pd.DataFrame(columns)
    y = plot_metric(table, metric)
    if y and "retention" in table:
        front = set(pareto_front(table["retention"].astype(float).tolist(), table[y].astype(float).tolist()))
        table["pareto"] = [i in front for i in range(len(table))]
    return table, metric, params, plotted


def plot_metric(table, metric: str | None) -> str | None:
    """The column plotted against retention and the params: the test metric on the retained path
    when any run has it, else the validation one."""
    for col in (f"test/{metric}_hard", f"val/{metric}_hard"):
        if metric and col in table and table[col].notna().any():
            return col
    return None


def write_plots(table, y: str, params: Sequence[str], out: Path) -> list[Path]:
    written = []
    rows = table[table[y].notna()]
    if "retention" in rows and rows["retention"].notna().any():
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ax.scatter(rows["retention"], rows[y], c="tab:blue", alpha=0.7, label="runs")
        front = rows[rows["pareto"]].sort_values("retention") if "pareto" in rows else rows.iloc[:0]
        if len(front):
            ax.step(front["retention"], front[y], where="post", c="tab:red", lw=1.2)
            ax.scatter(front["retention"], front[y], c="tab:red", label="Pareto front")
        ax.set_xlabel("achieved retention (kept fraction)")
        ax.set_ylabel(y)
        ax.set_title(f"{y} vs retention ({len(rows)} runs)")
        ax.legend()
        written.append(out / "metric_vs_retention.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    for p in params:
        pts = rows[rows[p].notna()]  # a run that does not log the param has no place on its axis
        if pts.empty:
            continue
        x = pts[p]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        if x.dtype.kind in "if":
            ax.scatter(x, pts[y], alpha=0.7)
            if (x > 0).all() and x.max() / x.min() > 20:
                ax.set_xscale("log")
            elif (x == x.round()).all():  # integers (a seed, a size): no ticks between them
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:  # categories, in sorted order
            labels = x.astype(str)
            categories = sorted(labels.unique())
            ax.scatter(labels.map(categories.index), pts[y], alpha=0.7)
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 3 else 0, ha="right" if len(categories) > 3 else "center")
            ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_xlabel(p)
        ax.set_ylabel(y)
        ax.set_title(f"{y} vs {p} ({len(pts)} of {len(rows)} runs)" if len(pts) < len(rows) else f"{y} vs {p} ({len(pts)} runs)", fontsize=9)
        written.append(out / f"metric_vs_{re.sub(r'[^A-Za-z0-9_.-]', '_', p)}.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return written


def run(args: argparse.Namespace) -> int:
    uri = default_tracking_uri(args.tracking_uri)
    try:
        df = fetch_runs(uri, args.experiment, args.parent, args.runs, args.filter)
        if df.empty:
            print(f"retention compare: no runs match at {uri}", file=sys.stderr)
            return 1
        table, metric, params, plotted = build_table(df, args.params, args.metrics)
    except (LookupError, MlflowException) as err:
        print(f"retention compare: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    y = plot_metric(table, metric)
    sort = args.sort or y
    if sort is not None:
        if sort not in table.columns:
            print(f"retention compare: --sort {sort!r} is not a column; columns: {', '.join(table.columns)}", file=sys.stderr)
            return 2
        table = table.sort_values(sort, ascending=args.ascending, na_position="last", kind="stable")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "runs.csv", index=False)
    (out / "runs.md").write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
    plots = write_plots(table, y, plotted, out) if y else []
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\n{len(table)} runs from {uri}; wrote {out / 'runs.csv'}, {out / 'runs.md'}"
          + (f" and {len(plots)} plots ({', '.join(p.name for p in plots)})" if plots else " (no metric to plot)"))
    if y and params and not plotted:
        print(f"{len(params)} params differ between these runs (no sweep): none plotted; "
              f"plot some with --params KEY [KEY ...]")
    return 0
