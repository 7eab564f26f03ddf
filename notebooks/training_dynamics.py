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
# # Training dynamics: λ, ĝ, the target ρ(t) and the task loss
#
# The budget of Adaptive Retention (Rafiuddin & Khan, EMNLP 2025 Findings, arXiv 2510.08798) is a
# constraint, enforced by a Lagrange multiplier per gated layer ℓ: the training loss is
# L_task + Σ_ℓ λ_ℓ (ĝ_ℓ − ρ_ℓ(t)), where ĝ_ℓ is the expected retention (the mean probability that a
# Hard-Concrete gate is open, Louizos et al. 2018) and ρ_ℓ(t) the target at step t (annealed from 1
# to ρ over the budget warm-up). λ_ℓ ≥ 0 rises by dual ascent, λ ← max(0, λ + η (ĝ − ρ(t))), while
# the gates keep more than the target, and falls back once they keep less. The `fixed_lambda`
# ablation keeps λ constant (η = 0): a penalty that does not adapt to how far ĝ is from ρ.
#
# This notebook reads the runs' MLflow metric histories and plots, for each chosen run side by side:
#
# * λ_ℓ against step (`train/lambda_l<ℓ>`),
# * ĝ_ℓ (`train/expected_retention_l<ℓ>_step`) with the target ρ_ℓ(t) (`train/target_l<ℓ>`),
# * the task loss (`train/task_loss_step`).
#
# These metrics are logged from the step the gates switch on (after `budget.dense_steps` of dense
# training); before it, nothing is dropped and there is no constraint.
#
# Parameters: `tracking_uri` (None: as `retention train` chooses it); `run_ids` (the runs to show);
# with `run_ids = None`, `experiment`'s Lagrangian run and its `fixed_lambda` ablation at the same ρ
# and seed (else its two newest runs). `save_figure` (a path) also writes the figure there.

# %% tags=["parameters"]
tracking_uri = None
run_ids = None
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
import mlflow
import pandas as pd
from IPython.display import display
from mlflow.tracking import MlflowClient

from commands.runner import default_tracking_uri

uri = default_tracking_uri(tracking_uri)
client = MlflowClient(uri)

LAMBDA, EXPECTED, TARGET, LOSS = "train/lambda_l{}", "train/expected_retention_l{}_step", "train/target_l{}", "train/task_loss_step"


def choose_runs(name: str) -> list[str]:
    """The Lagrangian run and its fixed_lambda ablation with the same ρ and seed, else the two newest runs."""
    runs = mlflow.search_runs(experiment_names=[name], filter_string="attributes.status = 'FINISHED'")
    if runs.empty:
        raise LookupError(f"no finished run in experiment {name!r} at {uri}")
    gate = runs[runs["params.method"] == "gate"]
    fixed, lagrangian = gate[gate["params.ablation"] == "fixed_lambda"], gate[gate["params.ablation"] == "none"]
    for _, f in fixed.iterrows():
        same = lagrangian[(lagrangian["params.budget.ratio"] == f["params.budget.ratio"])
                          & (lagrangian["params.seed"] == f["params.seed"])]
        if len(same):
            return [same["run_id"].iloc[0], f["run_id"]]
    return list(runs["run_id"].iloc[:2])


mlflow.set_tracking_uri(uri)
chosen = list(run_ids) if run_ids else choose_runs(experiment)
runs = {r: client.get_run(r) for r in chosen}


def label(run) -> str:
    p = run.data.params
    what = "fixed λ" if p.get("ablation") == "fixed_lambda" else ("Lagrangian" if p.get("method") == "gate" else p.get("method"))
    return f"{run.info.run_name} [{run.info.run_id[:8]}]\n{what}, ρ={p.get('budget.ratio')}, seed={p.get('seed')}"


def gated_layers(run) -> list[int]:
    return sorted(int(k.rsplit("_l", 1)[1]) for k in run.data.metrics if k.startswith("train/lambda_l"))


def history(run_id: str, key: str) -> pd.Series:
    """The metric's values by step; a KeyError naming what the run logs if it logged no ``key``."""
    points = client.get_metric_history(run_id, key)
    if not points:
        logged = sorted(k for k in runs[run_id].data.metrics if k.startswith("train/"))
        raise KeyError(f"run {run_id} logged no metric {key!r}; its train/ metrics: {', '.join(logged)}")
    return pd.Series({p.step: p.value for p in points}, name=key).sort_index()


for r, run in runs.items():
    print(label(run).replace("\n", ": "), "- gated layers", gated_layers(run))

# %% [markdown]
# ## The figure
#
# One column per run. **Top:** λ_ℓ per gated layer. Under the Lagrangian it climbs while ĝ is above
# the target and comes down once the gates keep less; under the fixed penalty it is a flat line.
# **Middle:** ĝ_ℓ (solid) and the target ρ_ℓ(t) (dashed, same colour). The target anneals from 1 to ρ
# over the warm-up; how closely ĝ follows it, and whether it settles at ρ or overshoots, is the
# budget enforcement at work. **Bottom:** the task loss per step (the constraint term excluded).
# Rows share their y axis, so the columns compare directly.

# %%
fig, axes = plt.subplots(3, len(runs), figsize=(4.6 * len(runs), 8.2), sharex="col", sharey="row", squeeze=False)
for j, (r, run) in enumerate(runs.items()):
    layers = gated_layers(run)
    if not layers:
        raise KeyError(f"run {r} logged no {LAMBDA.format('<l>')!r}: not a gated run")
    for k, layer in enumerate(layers):
        colour = plt.cm.tab10(k % 10)
        lam = history(r, LAMBDA.format(layer))
        axes[0, j].plot(lam.index, lam.values, color=colour, label=f"λ, layer {layer}")
        g, target = history(r, EXPECTED.format(layer)), history(r, TARGET.format(layer))
        axes[1, j].plot(g.index, g.values, color=colour, label=f"ĝ, layer {layer}")
        axes[1, j].plot(target.index, target.values, color=colour, ls="--", label=f"target ρ(t), layer {layer}")
    loss = history(r, LOSS)
    axes[2, j].plot(loss.index, loss.values, color="tab:gray", lw=1)
    axes[0, j].set_title(label(run), fontsize=9)
    axes[2, j].set_xlabel("training step")
    for ax in axes[:, j]:
        ax.grid(alpha=0.3)
axes[0, 0].set_ylabel("λ (Lagrange multiplier)")
axes[1, 0].set_ylabel("expected retention ĝ / target ρ(t)")
axes[2, 0].set_ylabel("task loss")
for row in range(2):
    axes[row, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
fig.tight_layout()
if save_figure:
    Path(save_figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_figure, dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Numbers behind the figure
#
# Per run and gated layer: λ at the last step, ĝ and the target there, and the mean |ĝ − ρ(t)| over
# the last quarter of the logged steps (how far from its budget the layer trained at the end), with
# the run's test metric on the hard path. A fixed penalty shows in a larger gap when its λ is too
# small for the task, or in a task loss that pays for a λ that is too large.

# %%
records = []
for r, run in runs.items():
    for layer in gated_layers(run):
        g, target = history(r, EXPECTED.format(layer)), history(r, TARGET.format(layer))
        gap = (g - target).abs().dropna()
        tail = gap.iloc[-max(1, len(gap) // 4):]
        records.append({"run": run.info.run_name, "run_id": r[:8], "layer": layer,
                        "final λ": history(r, LAMBDA.format(layer)).iloc[-1],
                        "final ĝ": g.iloc[-1], "final target": target.iloc[-1], "mean |ĝ − ρ(t)|, last quarter": tail.mean(),
                        **{k: v for k, v in run.data.metrics.items() if k.startswith("test/") and k.endswith("_hard")}})
numbers = pd.DataFrame(records)
display(numbers)
print(numbers.to_markdown(index=False, floatfmt=".4f"))
