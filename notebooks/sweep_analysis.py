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
# # Sweep analysis: an Optuna study joined with its MLflow runs
#
# `retention sweep` runs an Optuna study over the train config; every trial trains one config as a
# nested MLflow run under one parent run per study (README, "Sweeps and comparing runs"). This notebook
# reads both stores and shows what a researcher looks at after a sweep:
#
# 1. the trials table (Optuna's values and params joined with each trial's MLflow run: its state, test
#    metric and run link);
# 2. the optimisation history;
# 3. parameter importances (when the study has enough trials for them to mean something);
# 4. slice and contour plots over the swept parameters (β = `gate.beta`, the Hard-Concrete temperature;
#    ρ = `budget.ratio`, the budget; η = `optim.dual_lr`, the multiplier's step; any other searched key);
# 5. the Pareto front of accuracy (up) against achieved retention (down), with the run links of the
#    Pareto-optimal trials.
#
# The objective `metric` is the task metric on the hard path (exactly the top-M tokens kept, the rest
# removed) at the best validation epoch, `val/<metric>_hard`; `retention` is that epoch's achieved kept
# fraction, the mean over gated layers of `val/kept_fraction_l<ℓ>`.

# %% tags=["parameters"]
tracking_uri = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
study = "needle-sweep"  # the study's name (`study.name` of the sweep config)
storage = None  # as `retention sweep --storage` takes it: an SQLAlchemy URL, a NAME.log journal file, or None for ./optuna.db
parent_run_id = None  # the study's MLflow parent run; None: the one the study records (user attr mlflow_parent_run_id)
save_figure = None  # where to save the Pareto-front figure as PNG (None: not saved)

# %% tags=["setup"]
import math
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when MLflow imports it in a kernel

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
import pandas as pd
from IPython.display import Markdown, display
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState, create_trial
from optuna.visualization import matplotlib as ov

from commands.runner import default_tracking_uri
from commands.sweep_report import importance_evaluator
from commands.sweep_study import PARENT_ATTR, make_storage, storage_url
from conf.sweep_schema import OBJECTIVES, StudyConfig

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # Optuna's matplotlib plots
optuna.logging.set_verbosity(optuna.logging.WARNING)
SYMBOL = {"gate.beta": "β", "budget.ratio": "ρ", "optim.dual_lr": "η"}  # the paper's names of the usual swept keys

uri = default_tracking_uri(tracking_uri)
mlflow.set_tracking_uri(uri)
client = MlflowClient(uri)
# The storage exactly as `retention sweep` opens it (SQLite / PostgreSQL through RDBStorage, a *.log journal file).
st = optuna.load_study(study_name=study, storage=make_storage(StudyConfig(storage=storage)))
parent_id = parent_run_id or st.user_attrs.get(PARENT_ATTR)
parent = client.get_run(parent_id) if parent_id else None
objectives = parent.data.tags.get("sweep.objectives", "").split(",") if parent is not None else []
if len(objectives) != len(st.directions) or not set(objectives) <= set(OBJECTIVES):
    # a study made elsewhere (or under another study's parent run): `metric` first, `retention` second,
    # as `retention sweep` orders them
    objectives = list(OBJECTIVES)[: len(st.directions)]
complete = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
metric = next((t.user_attrs["metric"] for t in complete if "metric" in t.user_attrs), "metric")
swept = list(dict.fromkeys(k for t in st.trials for k in t.params))
print(f"study {study!r} at {storage_url(storage)}: {len(st.trials)} trials "
      f"({', '.join(f'{n} {s.lower()}' for s, n in pd.Series([t.state.name for t in st.trials]).value_counts().items())}); "
      f"objectives {objectives}; swept {swept}")
print(f"MLflow parent run {parent_id} ({uri})" if parent else "no MLflow parent run recorded")

# %% [markdown]
# ## Trials: Optuna joined with MLflow
#
# One row per trial: its state, its objective value(s), its achieved retention, the test metric of its
# checkpointed epoch on the hard path, the swept parameters, and its MLflow run (the id, and the run's
# URI `runs:/<id>`; on a tracking server the row links the run's page). The trial's MLflow run is
# found through the trial's user attr `mlflow_run_id`; the nested runs under the parent run
# (`tags.mlflow.parentRunId`) give its status and metrics.

# %% tags=["trials"]
def run_link(run_id, experiment_id):
    """The run's page on a tracking server, else MLflow's run URI (open it with `mlflow ui`)."""
    if not run_id:
        return ""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"runs:/{run_id}"


nested = pd.DataFrame()
if parent is not None:
    nested = mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent_id}'").set_index("run_id")


def from_run(run_id, column):
    """A column of the trial's nested MLflow run (NaN when the run or the column is missing)."""
    if run_id in nested.index and column in nested.columns:
        return nested.at[run_id, column]
    return float("nan")


def retention_of(trial):
    """Achieved retention of a completed trial: its user attr, else its MLflow run's `objective/retention`."""
    if "retention" in trial.user_attrs:
        return float(trial.user_attrs["retention"])
    return float(from_run(trial.user_attrs.get("mlflow_run_id"), "metrics.objective/retention"))


rows = []
for t in st.trials:
    run_id = t.user_attrs.get("mlflow_run_id", "")
    row = {"trial": t.number, "state": t.state.name}
    for name, value in zip(objectives, t.values or [float("nan")] * len(objectives)):
        row[f"val {metric}_hard" if name == "metric" else f"val {name}"] = value
    if "retention" not in objectives:
        row["val retention"] = retention_of(t) if t.state == TrialState.COMPLETE else float("nan")
    row[f"test {metric}_hard"] = t.user_attrs.get(f"test_{metric}_hard", from_run(run_id, f"metrics.test/{metric}_hard"))
    for k in swept:
        row[f"{SYMBOL[k]} ({k})" if k in SYMBOL else k] = t.params.get(k)
    row["MLflow status"] = from_run(run_id, "status") if run_id in nested.index else ""
    row["MLflow run"] = run_id
    row["link"] = run_link(run_id, parent.info.experiment_id if parent else "")
    rows.append(row)
trials = pd.DataFrame(rows)
print(trials.to_markdown(index=False, floatfmt=".4g"))

# %% [markdown]
# ## Optimisation history
#
# Each completed trial's objective value in the order the trials ran (dots) and the best value so far
# (line). A line that is still rising at the last trial says the study has not converged: add trials
# (`retention sweep` with the same study name and storage resumes it). With two objectives there is
# one panel per objective, each with its own best-so-far.

# %% tags=["history"]
def target_of(i):
    """Optuna's `target` for objective i (None for a single-objective study, whose value is the target)."""
    return None if len(objectives) == 1 else (lambda t: t.values[i])


def tidy(axes):
    """Axis labels with the parameters' symbols (ρ = budget.ratio); log-scaled axes labelled as plain numbers
    at 1, 2 and 5 × 10^k, or, for a range too narrow to hold two of those, at two points inside it
    (Optuna's labels 2×10⁻², 3×10⁻², … overlap on a narrow panel)."""
    for ax in getattr(axes, "flat", [axes]):
        for get, set_ in ((ax.get_xlabel, ax.set_xlabel), (ax.get_ylabel, ax.set_ylabel)):
            if get() in SYMBOL:
                set_(f"{SYMBOL[get()]} = {get()}")
        for axis, scale, (lo, hi) in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()), (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            if scale != "log":
                continue
            axis.set_minor_formatter(NullFormatter())
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for subs in ((1, 2, 5), (1, 5), (1,)):  # at most 3 labels on a panel
                ticks = [m * 10.0**e for e in decades for m in subs if lo <= m * 10.0**e <= hi]
                if len(ticks) <= 3:
                    break
            if len(ticks) < 2:  # two points inside the range, with the fewest digits that keep them apart
                inner = np.geomspace(lo, hi, 5)[1:4:2]
                ticks = next(t for d in range(2, 8) for t in [[float(f"{v:.{d}g}") for v in inner]]
                             if t[0] < t[1] and lo <= t[0] and t[1] <= hi)
            axis.set_major_locator(FixedLocator(ticks))


def label(name):
    return f"val {metric}_hard (hard top-M)" if name == "metric" else f"val {name} (achieved kept fraction)"


if not complete:
    display(Markdown("**No completed trial**: nothing to plot. The trials table above says why each one failed "
                     "(its MLflow run holds `optuna.fail_reason`)."))
else:
    for i, name in enumerate(objectives):
        ax = ov.plot_optimization_history(st, target=target_of(i), target_name=label(name))
        ax.set_title(f"optimisation history: {name} ({st.directions[i].name.lower()})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="best")
        ax.figure.set_size_inches(6.5, 3.6)
        plt.show()

# %% [markdown]
# ## Parameter importances
#
# How much of the objective's variation each swept parameter explains (Optuna's fANOVA evaluator,
# FanovaImportanceEvaluator: a random forest fitted to (params → objective), its variance decomposed per parameter;
# the importances sum to 1). They are only meaningful when the trials are many enough to separate the
# parameters' effects: with d swept parameters they need at least d + 1 completed trials whose
# objective values differ. Below that, every split of the variance fits the trials equally well and
# the bars would be noise, so none are drawn.

# %% tags=["importances"]
def constant(i):
    """Why objective i cannot be explained by the params: every completed trial has the same value (None if not)."""
    values = {t.values[i] for t in complete}
    if len(values) == 1:
        return f"every completed trial has the same {objectives[i]} value ({values.pop():.4g}): there is no variation to explain"
    return None


def importances_undefined(i):
    """Why the importances of objective i are not defined (None when they are)."""
    if len(complete) < len(swept) + 1:
        return (f"the study has {len(complete)} completed trial(s) for {len(swept)} swept parameters; "
                f"fANOVA needs at least {len(swept) + 1}")
    return constant(i)


for i, name in enumerate(objectives):
    why = importances_undefined(i) if complete else "no completed trial"
    if why:
        display(Markdown(f"**Parameter importances for `{name}` are undefined here**: {why}. "
                         "Run more trials (the same `retention sweep` command adds trials to the study) and run this notebook again."))
        continue
    # fANOVA, seeded, as the sweep's own summary ranks them (Optuna's default evaluator, PED-ANOVA, ranks
    # params for reaching *low* target values, which is backwards for the maximised metric)
    ax = ov.plot_param_importances(st, evaluator=importance_evaluator(), target=target_of(i), target_name=label(name))
    ax.set_xlabel(f"importance for {label(name)} (fANOVA, sums to 1)")
    ax.set_ylabel("swept parameter")
    ax.set_yticks(ax.get_yticks(), [f"{SYMBOL[k]} = {k}" if k in SYMBOL else k for k in (t.get_text() for t in ax.get_yticklabels())])
    ax.set_title(f"parameter importances: {name}", loc="left")
    ax.get_legend().remove()  # its one entry is the objective, named on the x axis
    ax.figure.set_size_inches(6.5, 0.6 + 0.5 * len(swept))
    plt.show()

# %% [markdown]
# ## Slices and contours over the swept parameters
#
# **Slice plot**: the objective against each swept parameter, one dot per completed trial, coloured by
# trial number (later trials darker). A clear trend along one axis says that parameter matters; a flat
# cloud says it does not (within its range). **Contour plot**: the objective interpolated over each pair
# of swept parameters (dots: the trials); it needs at least three completed trials and an objective that
# varies, so otherwise it is left out.

# %% tags=["slices"]
for i, name in enumerate(objectives):
    if not complete:
        break
    axes = ov.plot_slice(st, params=swept, target=target_of(i), target_name=label(name))
    fig = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
    tidy(axes)
    fig.suptitle(f"slice: {label(name)} against each swept parameter")
    fig.set_size_inches(4 * len(swept), 3.4)
    plt.show()

# %% tags=["contours"]
for i, name in enumerate(objectives):
    why = None
    if len(swept) < 2 or len(complete) < 3:
        why = (f"they interpolate the objective over a pair of parameters and need at least three completed trials and "
               f"two swept parameters; this study has {len(complete)} completed trial(s) and {len(swept)} swept parameter(s)")
    why = why or constant(i)
    if why:
        display(Markdown(f"**Contour plot for `{name}` left out**: {why}."))
        continue
    axes = ov.plot_contour(st, params=swept, target=target_of(i), target_name=label(name))
    fig = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
    tidy(axes)
    fig.suptitle(f"contour: {label(name)} over pairs of swept parameters")
    fig.set_size_inches(3.6 * len(swept), 3.2 * len(swept))
    plt.show()

# %% [markdown]
# ## Pareto front: accuracy against achieved retention
#
# Each completed trial as a point (x: its validation metric on the hard path, y: its achieved
# retention); the Pareto-optimal trials — no other trial is at least as accurate while keeping at most
# as many tokens, and better in one — are highlighted. For a two-objective study (`--config pareto`)
# these are the study's own objectives and its `best_trials`; for a single-objective study the
# retention comes from each trial's user attr `retention` (or its MLflow run's `objective/retention`),
# and the front is computed by Optuna over a two-objective view of the same trials.

# %% tags=["pareto"]
if len(objectives) == 2:
    front_study = st
else:  # the same trials as a two-objective study held in memory (nothing is written to the storage)
    front_study = optuna.create_study(directions=[OBJECTIVES["metric"], OBJECTIVES["retention"]])
    front_study.add_trials([
        create_trial(state=TrialState.COMPLETE, values=[t.value, retention_of(t)], params=t.params,
                     distributions=t.distributions, user_attrs=t.user_attrs)
        for t in complete if not math.isnan(retention_of(t))
    ])
pareto_trials = [] if not complete else front_study.best_trials
if pareto_trials:
    ax = ov.plot_pareto_front(front_study, target_names=[label("metric"), label("retention")])
    at = {}  # trials at the same point share one label
    for t in front_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        at.setdefault((t.values[0], t.values[1]), []).append(f"#{t.number}")
    for xy, names in at.items():
        ax.annotate(", ".join(names), xy, textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_title(f"study {study!r}: {len(pareto_trials)} Pareto-optimal of {len(complete)} completed trials")
    for lim, get, set_ in ((0, ax.get_xlim, ax.set_xlim), (1, ax.get_ylim, ax.set_ylim)):  # room for the labels
        lo, hi = get()
        set_(lo - 0.08 * (hi - lo), hi + 0.12 * (hi - lo))
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, [{"Best Trial": "Pareto-optimal", "Trial": "dominated"}.get(n, n) for n in names], fontsize=8, loc="best")
    ax.figure.set_size_inches(6.5, 4.2)
    if save_figure:
        Path(save_figure).parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(save_figure, dpi=120, bbox_inches="tight")
    plt.show()
else:
    display(Markdown("**No Pareto front**: the study has no completed trial with both an accuracy and a retention."))

# %% [markdown]
# ## The best trials and their runs
#
# The Pareto-optimal trials (above), best accuracy first, with their parameters and MLflow runs; with a
# single objective the study's best trial is marked (the parent run's tags `best_trial_number` and
# `best_run_id` name the same trial). Open a run with `mlflow ui --backend-store-uri <tracking URI>`, or
# load it in Python: `mlflow.get_run("<id>")`.

# %% tags=["best"]
best_number = st.best_trial.number if len(objectives) == 1 and complete else None
best_rows = []
for t in sorted(pareto_trials, key=lambda t: (-t.values[0], t.values[1])):
    run_id = t.user_attrs.get("mlflow_run_id", "")
    best_rows.append({
        "trial": t.number, f"val {metric}_hard": t.values[0], "val retention": t.values[1],
        **{(f"{SYMBOL[k]} ({k})" if k in SYMBOL else k): v for k, v in t.params.items()},
        **({"best (single objective)": t.number == best_number} if best_number is not None else {}), "MLflow run": run_id,
        "link": run_link(run_id, parent.info.experiment_id if parent else ""),
    })
best = pd.DataFrame(best_rows)
print(best.to_markdown(index=False, floatfmt=".4g") if best_rows else "no Pareto-optimal trial")
if parent is not None and best_number is not None:
    print(f"parent run {parent_id}: best_trial_number = {parent.data.tags.get('best_trial_number')}, "
          f"best_run_id = {parent.data.tags.get('best_run_id')}")
