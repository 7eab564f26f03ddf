"""``retention compare``: a table and plots of tracked runs, read with ``mlflow.search_runs``.

    retention compare (--experiment NAME | --parent RUN_ID | --runs ID [ID ...])
                      [--tracking-uri URI] [--filter "MLflow filter"] [--sort COLUMN] [--ascending]
                      [--params KEY ...] [--metrics KEY ...] [--out DIR]

Rows: the runs (a sweep's parent run itself is left out; ``--parent`` takes its nested trial runs).
Columns: run, trial number and final state (sweeps), the chosen params (a sweep's searched keys, else
the params that differ between the rows), the primary metric on the hard / soft / dense paths,
retained/dense, the achieved retention (mean over gated layers of ``test/kept_fraction_l<ℓ>``, else
``val/…``), any throughput metric, and ``pareto``: whether the run is on the metric-vs-retention
Pareto front. Written to ``DIR/runs.csv`` and ``DIR/runs.md`` with ``metric_vs_retention.png`` (front
drawn) and ``metric_vs_<param>.png`` per param. Works against any tracking URI: a SQLite store or an
MLflow tracking server.
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
from commands.runner import default_tracking_uri
from mlflow.exceptions import MlflowException


THROUGHPUT = re.compile(r"throughput|speedup|tokens_per_s|samples_per_s", re.IGNORECASE)
_HARD = re.compile(r"^metrics\.(?:val|test)/(.+)_hard$")


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
    converted = pd.to_numeric(series, errors="coerce")
    return converted if converted.notna().sum() == series.notna().sum() else series


def build_table(df, params: Sequence[str] | None = None, metrics: Sequence[str] = ()):
    """(table, primary metric name, param columns) from ``fetch_runs``' DataFrame."""
    found = Counter(m.group(1) for c in df.columns if (m := _HARD.match(c)) and not m.group(1).startswith("kept_fraction"))
    metric = found.most_common(1)[0][0] if found else None
    table = pd.DataFrame({"run_id": df["run_id"], "run_name": df.get("tags.mlflow.runName")})
    if "tags.optuna.trial_number" in df.columns:
        table["trial"] = pd.to_numeric(df["tags.optuna.trial_number"], errors="coerce").astype("Int64")
        table["state"] = df["tags.optuna.trial_state"].fillna(df["status"]) if "tags.optuna.trial_state" in df else df["status"]
    else:
        table["state"] = df["status"]
    if params is None:
        swept = df["tags.sweep.params"].dropna() if "tags.sweep.params" in df.columns else []
        params = list(dict.fromkeys(p for s in swept for p in s.split(",") if p))
        if not params:  # not a sweep: the params that differ between the runs
            params = [c[len("params."):] for c in df.columns if c.startswith("params.")
                      and not c.startswith(("params.logging.", "params.trainer.enable_progress_bar"))
                      and df[c].nunique(dropna=False) > 1]
    for p in params:
        col = f"params.{p}"
        if col not in df.columns:
            raise KeyError(f"param {p!r} is not logged by these runs")
        table[p] = _numeric(df[col])
    wanted = []
    if metric:
        wanted += [f"val/{metric}_hard", f"test/{metric}_hard", f"test/{metric}_soft", f"test/{metric}_dense",
                   "test/retained_over_dense"]
    wanted += [c[len("metrics."):] for c in df.columns if c.startswith("metrics.") and THROUGHPUT.search(c)]
    for m in metrics:
        if f"metrics.{m}" not in df.columns:
            raise KeyError(f"metric {m!r} is not logged by these runs")
    for m in dict.fromkeys([*wanted, *metrics]):
        if f"metrics.{m}" in df.columns:
            table[m] = df[f"metrics.{m}"]
    for stage in ("test", "val"):
        kept = [c for c in df.columns if c.startswith(f"metrics.{stage}/kept_fraction_l")]
        if kept:
            table["retention"] = df[kept].mean(axis=1)
            break
    y = plot_metric(table, metric)
    if y and "retention" in table:
        front = set(pareto_front(table["retention"].astype(float).tolist(), table[y].astype(float).tolist()))
        table["pareto"] = [i in front for i in range(len(table))]
    return table, metric, list(params)


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
        x = rows[p]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        numeric = x.dtype.kind in "if"
        ax.scatter(x if numeric else x.astype(str), rows[y], alpha=0.7)
        if numeric and (x > 0).all() and len(x) and x.max() / x.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(y)
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
        table, metric, params = build_table(df, args.params, args.metrics)
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
    plots = write_plots(table, y, params, out) if y else []
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\n{len(table)} runs from {uri}; wrote {out / 'runs.csv'}, {out / 'runs.md'}"
          + (f" and {len(plots)} plots ({', '.join(p.name for p in plots)})" if plots else " (no metric to plot)"))
    return 0
