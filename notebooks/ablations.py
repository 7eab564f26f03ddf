# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ablations: methods × budgets over seeds
#
# The runs of one experiment (or of several, e.g. one per seed) read from the MLflow store alone:
#
# 1. **the method × ρ table** of [docs/results.md](../docs/results.md): mean ± standard deviation
#    over seeds of the task metric on the hard path (exactly the top-M tokens kept, the rest
#    physically removed), its % of the same model's dense metric, the achieved retention and the
#    throughput ratio. It comes from the `evaluation/evaluation.csv` artifacts that
#    `retention evaluate` logs to every run it evaluates, summarised by
#    `commands.evaluation_summary` — the code behind `scripts/summarize_results.py`, so the numbers
#    are the ones docs/results.md prints. Runs that were never evaluated contribute their own test
#    metrics at the budget they were trained with (a second table, always shown);
# 2. the metric against the **achieved retention**, one line per method;
# 3. the metric against the **measured speed-up** (where runs have a speed metric);
# 4. the **kept fraction per gated layer**.
#
# Parameters: `tracking_uri` (None: `$MLFLOW_TRACKING_URI`, else `./mlflow.db`, as `retention train`
# does) and `experiment` (a name, or a list of names whose runs are pooled, e.g. one experiment
# per seed). `save_figure` (a path) also writes the retention figure there.

# %% tags=["parameters"]
tracking_uri = None
experiment = "demo-ablations"
save_figure = None

# %%
import os
import warnings
from pathlib import Path

# Quiet in a notebook: MLflow's artifact download bars, and tqdm's note that ipywidgets is not installed.
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
warnings.filterwarnings("ignore", message="IProgress not found")

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from commands.compare import build_table, fetch_runs
from commands.evaluation_summary import fetch_evaluations, summarize, to_markdown, training_rows
from commands.runner import default_tracking_uri

uri = default_tracking_uri(tracking_uri)
experiments = [experiment] if isinstance(experiment, str) else list(experiment)
runs = pd.concat([fetch_runs(uri, name) for name in experiments], ignore_index=True)
runs = runs[runs["status"] == "FINISHED"].reset_index(drop=True)
print(f"{len(runs)} finished runs in {', '.join(experiments)} at {uri}")

# %% [markdown]
# ## The runs
#
# One row per finished training run, as `retention compare` tabulates it: the params that differ
# between the runs, the primary metric on the validation and test hard paths, the soft and dense
# test paths, retained/dense, and the achieved retention (mean over gated layers). `pareto` marks the
# runs that no other run beats on both metric (up) and retention (down).

# %%
per_run, metric, params, _ = build_table(runs)
display(per_run.drop(columns=["run_id"]))

# %% [markdown]
# ## The method × ρ table (docs/results.md)
#
# `run` says what the run trained: `adaptive-retention` is our gate; `trained:<x>` a run trained as
# baseline `<x>`; `ablation:<x>` our gate with that part changed. `method` is the selection on the hard
# path: `gate` is the run's own trained scorer, a heuristic name (`random`, `first`, `l2`,
# `attention`) is that selector swapped into the same trained model by `retention evaluate`, so only
# the selection differs. `ρ` is the budget imposed at evaluation. `seeds` counts the runs pooled in a
# row. Read down a column at fixed ρ to compare methods; the `% of dense` column removes the
# differences between the runs' own dense models.

# %%
evaluations = fetch_evaluations(uri, experiments)
if evaluations.empty:
    print("No run of these experiments has been through `retention evaluate` (no evaluation/evaluation.csv "
          "artifact): the table below is built from the runs' own test metrics, one budget per run.")
    rows, source = training_rows(runs), "training runs"
else:
    rows, source = evaluations, "retention evaluate"
summary = summarize(rows)
metric_name = rows["metric"].iloc[0]
print(f"from {source} ({len(rows)} rows):\n")
print(to_markdown(summary, metric_name))

# %% [markdown]
# ## The same, from the training runs' own test metrics
#
# Each run at the budget it was **trained** with (`params.budget.ratio`) and its own selection. This
# covers every finished run, evaluated or not; no throughput here (training logs none).

# %%
trained_rows = training_rows(runs)
trained_summary = summarize(trained_rows)
print(f"from the training runs ({len(trained_rows)} runs, each at its trained budget):\n")
print(to_markdown(trained_summary, trained_rows["metric"].iloc[0]))

# %% [markdown]
# ## Metric against achieved retention
#
# One line per (what was trained, selection method): the mean over seeds at each budget, with
# ± one standard deviation as error bars. The x axis is the fraction of tokens the hard path kept
# (mean over gated layers), so a method that does not control its budget (threshold inference)
# lands where it actually kept, not where ρ asked. Higher and further left is better; a flat line at
# the dense level means nothing is lost by dropping tokens.

# %%
def lines(table: pd.DataFrame):
    """(label, rows sorted by retention) per (kind, method) of a summarize() table."""
    flat = table.copy()
    flat.columns = [f"{a}_{b}" if b else a for a, b in flat.columns]
    flat = flat.reset_index()
    for (kind, method), g in flat.groupby(["kind", "method"], sort=False):
        yield f"{kind} · {method}", g.sort_values("retention_mean")


fig, ax = plt.subplots(figsize=(7.5, 4.2))
for label, g in lines(summary):
    ax.errorbar(g["retention_mean"], g["value_mean"], yerr=g["value_std"].fillna(0), marker="o", capsize=3, label=label)
ax.set_xlabel("achieved retention (fraction of tokens kept, mean over gated layers)")
ax.set_ylabel(f"test {metric_name}, hard top-M path")
ax.set_title(f"{metric_name} vs retention, mean ± std over seeds ({source})")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
if save_figure:
    Path(save_figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_figure, dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Metric against measured speed-up
#
# The speed-up is `retention evaluate`'s throughput ratio: the retained forward's throughput over the
# dense forward's, timed interleaved in the evaluating process on a few test batches. Above 1 the
# retained model is faster. It is a rough in-process figure (small batches, a possibly shared
# machine: read the error bars); `retention bench` measures speed properly. Runs that have no speed
# metric (training runs log none) are left out, and the cell says so.

# %%
speed = summary[summary[("throughput_ratio", "mean")].notna()]
if speed.empty:
    print("No speed metric: none of these rows has a throughput ratio (run `retention evaluate "
          "--throughput-batches N` on the runs to measure one). The retention plot above is what there is.")
else:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, g in lines(speed):
        ax.errorbar(g["throughput_ratio_mean"], g["value_mean"], xerr=g["throughput_ratio_std"].fillna(0),
                    yerr=g["value_std"].fillna(0), marker="o", linestyle="none", capsize=3, label=label)
        for r in g.itertuples():
            ax.annotate(f"ρ={r.budget:g}", (r.throughput_ratio_mean, r.value_mean), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("measured speed-up (throughput retained / dense; > 1 is faster)")
    ax.set_ylabel(f"test {metric_name}, hard top-M path")
    ax.set_title(f"{metric_name} vs measured speed-up, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    plt.show()

# %% [markdown]
# ## Kept fraction per layer
#
# For each row of the method × ρ table, the fraction of tokens the hard path kept at each gated layer
# (mean over seeds). With the constant schedule every layer keeps ⌈ρ·T⌉ of the T tokens it receives;
# a per-layer schedule shows as different bars; an ablation that does not control its budget
# (threshold inference) shows bars far from ρ (the dashed marks).

# %%
layer_cols = sorted(c for c in rows.columns if c.startswith("retention_l"))
per_layer = rows.assign(kind=rows["trained"].str.replace(r"\s*seed=\d+", "", regex=True) if "trained" in rows else rows["run"])
per_layer = per_layer.groupby(["kind", "method", "budget"], sort=False)[layer_cols].mean()
fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(per_layer)), 4.2))
width = 0.8 / len(layer_cols)
for j, col in enumerate(layer_cols):
    ax.bar([i + j * width for i in range(len(per_layer))], per_layer[col], width=width,
           label=f"layer {col.removeprefix('retention_l')}")
for i, (_, _, rho) in enumerate(per_layer.index):
    ax.hlines(rho, i - width / 2, i + 0.8 - width / 2, colors="black", linestyles="dashed", lw=1)
ax.set_xticks([i + 0.4 - width / 2 for i in range(len(per_layer))])
ax.set_xticklabels([f"{k} · {m}\nρ={b:g}" for k, m, b in per_layer.index], rotation=60, ha="right", fontsize=7)
ax.set_xlabel("what was trained · selection method, budget ρ")
ax.set_ylabel("kept fraction (hard path)")
ax.set_title("kept fraction per gated layer (dashed: the budget ρ)")
ax.legend(fontsize=8)
plt.show()
display(per_layer.round(4))
