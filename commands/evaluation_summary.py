"""The method × ρ table of docs/results.md: ``retention evaluate``'s rows summarised over seeds.

One row per (what the run trained, selection method, budget ρ): what the run trained is
``evaluate``'s ``trained`` column without its seed (``adaptive-retention``, ``trained:ltp``,
``ablation:fixed_lambda``), so the runs of one variant with different seeds fall into one row. Each
of the task metric on the hard path (``value``), its % of dense, the achieved retention (mean over
gated layers) and the throughput ratio is given as mean and standard deviation over the seeds found
(``n``: their number). The rows come from ``evaluation.csv`` files (``scripts/summarize_results.py``),
from the ``evaluation/evaluation.csv`` artifacts that ``retention evaluate`` logs to every run it
evaluates (:func:`fetch_evaluations`: from the MLflow store alone), or, for runs never evaluated,
from their own test metrics (:func:`training_rows`: the run's trained budget and selection only).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import mlflow
import pandas as pd

from commands.compare import build_table
from commands.evaluate import describe

__all__ = ["ARTIFACT", "COLUMNS", "fetch_evaluations", "summarize", "to_markdown", "training_rows"]

ARTIFACT = "evaluation/evaluation.csv"  # where `retention evaluate` logs its table on each evaluated run
COLUMNS = ["value", "pct_of_dense", "retention", "throughput_ratio"]
_SEED = re.compile(r"\s*seed=\d+")


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (kind, method, budget), in the rows' order; columns
    ``(col, "mean")``, ``(col, "std")`` for each of :data:`COLUMNS`, and ``("n", "")``. ``rows`` has
    ``retention evaluate``'s columns (``trained`` or, in files older than that column, ``run``,
    holding ``seed=N``)."""
    df = rows.copy()
    df["kind"] = df["trained" if "trained" in df.columns else "run"].str.replace(_SEED, "", regex=True)
    df["retention"] = df[[c for c in df.columns if c.startswith("retention_l")]].mean(axis=1)
    df["throughput_ratio"] = pd.to_numeric(df.get("throughput_ratio"), errors="coerce")
    g = df.groupby(["kind", "method", "budget"], sort=False)
    out = g[COLUMNS].agg(["mean", "std"])
    out[("n", "")] = g.size()
    return out


def to_markdown(table: pd.DataFrame, metric: str) -> str:
    """:func:`summarize`'s table as docs/results.md prints it (``mean ± std``; ``–`` where no run has a value)."""
    def cell(mean: float, std: float, fmt: str = ".3f") -> str:
        if pd.isna(mean):
            return "–"
        return f"{mean:{fmt}}" if pd.isna(std) else f"{mean:{fmt}} ± {std:{fmt}}"

    head = f"| run | method | ρ | {metric} | % of dense | achieved retention | throughput ratio | seeds |"
    lines = [head, "|" + "---|" * 8]
    for (kind, method, budget), r in table.iterrows():
        lines.append(f"| {kind} | {method} | {budget:g} | {cell(r[('value', 'mean')], r[('value', 'std')])} | "
                     f"{cell(r[('pct_of_dense', 'mean')], r[('pct_of_dense', 'std')], '.1f')} | "
                     f"{cell(r[('retention', 'mean')], r[('retention', 'std')])} | "
                     f"{cell(r[('throughput_ratio', 'mean')], r[('throughput_ratio', 'std')])} | {int(r[('n', '')])} |")
    return "\n".join(lines)


def fetch_evaluations(tracking_uri: str, experiments: Sequence[str]) -> pd.DataFrame:
    """Every ``retention evaluate`` row logged to the runs of ``experiments`` (their
    ``evaluation/evaluation.csv`` artifacts; one evaluation logs the same file to each run it
    evaluated, so rows repeat and are kept once per (run, method, budget)). Empty if none was logged."""
    client = mlflow.tracking.MlflowClient(tracking_uri)
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise LookupError(f"no experiment named {name!r} at {tracking_uri}")
            for run in client.search_runs([exp.experiment_id]):
                if not any(f.path == ARTIFACT for f in client.list_artifacts(run.info.run_id, "evaluation")):
                    continue
                path = client.download_artifacts(run.info.run_id, ARTIFACT, str(Path(tmp) / run.info.run_id))
                frames.append(pd.read_csv(path))
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(["run_id", "method", "budget"], keep="last").reset_index(drop=True)


def training_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """``retention evaluate``-shaped rows from training runs' own test metrics (``runs`` as
    :func:`commands.compare.fetch_runs` returns them): one row per run, at its trained budget
    (``params.budget.ratio``) and its own selection; ``trained`` as :func:`commands.evaluate.describe`
    names it; no throughput (training logs none); in the order the runs started."""
    runs = runs.sort_values("start_time", kind="stable").reset_index(drop=True) if "start_time" in runs else runs
    table, metric, _, _ = build_table(runs)
    if metric is None:
        raise LookupError("these runs log no test/<metric>_hard metric")
    method, ablation = runs["params.method"], runs.get("params.ablation", pd.Series("none", index=runs.index))
    heuristic = method.isin(["random", "first", "l2", "attention"])
    trained = [describe(SimpleNamespace(method=m, ablation=a, seed=s))
               for m, a, s in zip(method, ablation.fillna("none"), runs["params.seed"])]
    out = pd.DataFrame({
        "run": table["run_name"], "run_id": table["run_id"], "trained": trained,
        "method": method.where(heuristic, "gate"), "budget": pd.to_numeric(runs["params.budget.ratio"], errors="coerce"),
        "metric": metric, "value": runs[f"metrics.test/{metric}_hard"], "dense": runs.get(f"metrics.test/{metric}_dense"),
    })
    out["pct_of_dense"] = 100.0 * out["value"] / out["dense"]
    for col in sorted(c for c in runs.columns if c.startswith("metrics.test/kept_fraction_l")):
        out["retention_l" + col.rsplit("_l", 1)[1]] = runs[col]
    out["throughput_ratio"] = float("nan")
    return out[out["value"].notna()].reset_index(drop=True)
