"""The summary of a ``retention sweep`` study, logged to its MLflow parent run and printed.

Counts per trial state (metrics ``trials_<state>``), the best trial (metric ``best_value``, tags
``best_trial_number``, ``best_run_id``, ``best.<param>``, ``best_trial.json``) or, with two objectives,
the Pareto set (``pareto_set.json``, tag ``pareto_trials``), ``trials.csv``, the parameter importances
per objective (``param_importances.json``, printed too) and Optuna's plots as PNG: optimisation history,
parameter importances, Pareto front.

Parameter importances are fANOVA's (Hutter, Hoos & Leyton-Brown, ICML 2014; Optuna's
``FanovaImportanceEvaluator``, :func:`importance_evaluator`): a random forest fitted to params → objective,
its variance split per parameter, the shares summing to 1. A variance share does not depend on the sign
of the objective, so it ranks a maximised objective (``metric``) as it ranks a minimised one. Optuna's
default evaluator (PED-ANOVA) instead ranks the parameters that separate the trials of *lowest* target
value whenever a ``target`` is given (each objective of a two-objective study), which is backwards for
``metric``.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ov

from commands.sweep_study import storage_url

__all__ = ["summarize", "importance_evaluator", "param_importances", "IMPORTANCE_SEED"]

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
IMPORTANCE_SEED = 0  # the fANOVA forest's seed: a summary made twice draws the same importances


def summarize(study, scfg, client, parent_run_id: str) -> str:
    """Log the study's state to the parent run (counts, best trial or Pareto set, the trials table,
    Optuna's plots as PNG), mark the parent run finished and return a printable summary."""
    s = scfg.study
    trials = study.get_trials(deepcopy=False)
    counts = {st: sum(t.state == getattr(TrialState, st) for t in trials) for st in STATES}
    step = len(trials)
    for st, n in counts.items():
        client.log_metric(parent_run_id, f"trials_{st.lower()}", n, step=step)
    lines = [f"study {s.name!r} ({storage_url(s.storage)}): {len(trials)} trials: "
             + ", ".join(f"{n} {st.lower()}" for st, n in counts.items() if n)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        undefined = list(s.objectives)
        if counts["COMPLETE"]:
            lines += _best(study, s.objectives, client, parent_run_id, step, out)
            more, undefined = _importances(study, s.objectives, out)
            lines += more
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        for name, make in _plots(study, s.objectives, undefined).items():
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
    for t in trials:
        if t.state == TrialState.FAIL:
            lines.append(f"  trial {t.number} failed: {t.user_attrs.get('fail_reason', 'see its MLflow run / the log')}")
    client.set_terminated(parent_run_id, status="FINISHED")
    lines.append(f"MLflow parent run {parent_run_id} (artifacts: trials.csv, plots)")
    return "\n".join(lines)


def _best(study, objectives: Sequence[str], client, parent_run_id: str, step: int, out: Path) -> list[str]:
    """The best trial (one objective) or the Pareto set (two): written to ``out``, tagged on the parent run."""
    multi = len(objectives) > 1
    best = study.best_trials if multi else [study.best_trial]
    rows = [{"number": t.number, "values": dict(zip(objectives, t.values)), "params": t.params,
             "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for t in best]
    (out / ("pareto_set.json" if multi else "best_trial.json")).write_text(json.dumps(rows, indent=2))
    if multi:
        client.set_tag(parent_run_id, "pareto_trials", ",".join(str(r["number"]) for r in rows))
        lines = [f"Pareto set ({', '.join(objectives)}):"]
    else:
        b = rows[0]
        client.log_metric(parent_run_id, "best_value", best[0].value, step=step)
        client.set_tag(parent_run_id, "best_trial_number", str(b["number"]))
        client.set_tag(parent_run_id, "best_run_id", str(b["mlflow_run_id"]))
        for k, v in b["params"].items():
            client.set_tag(parent_run_id, f"best.{k}", str(v))
        lines = ["best trial:"]
    for r in rows:
        vals = ", ".join(f"{k} = {v:.4f}" for k, v in r["values"].items())
        ps = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in r["params"].items())
        lines.append(f"  #{r['number']}: {vals}; {ps}; MLflow run {r['mlflow_run_id']}")
    return lines


def importance_evaluator() -> FanovaImportanceEvaluator:
    """The evaluator of every parameter-importance figure and table: fANOVA, seeded (module docstring)."""
    return FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)


def _target(objectives: Sequence[str], i: int):
    """Optuna's ``target`` for objective ``i`` (None for one objective: the trial's value)."""
    return None if len(objectives) == 1 else (lambda t: t.values[i])


def param_importances(study, objectives: Sequence[str]) -> dict[str, dict[str, float]]:
    """Objective name -> {param: fANOVA importance}, most important first (shares of the objective's
    variance over the completed trials, summing to 1). Raises Optuna's error where the importances are
    undefined (fewer than two completed trials; a RuntimeError where every completed trial has the same value)."""
    return {name: _importance(study, objectives, i) for i, name in enumerate(objectives)}


def _importance(study, objectives: Sequence[str], i: int) -> dict[str, float]:
    imp = get_param_importances(study, evaluator=importance_evaluator(), target=_target(objectives, i))
    return {k: float(v) for k, v in imp.items()}


def _importances(study, objectives: Sequence[str], out: Path) -> tuple[list[str], list[str]]:
    """(summary lines, the objectives whose importances are undefined); the defined importances go to
    ``param_importances.json`` in ``out``. An objective that every completed trial scored alike has nothing
    to explain, so no importances (PED-ANOVA would still rank the parameters, by noise)."""
    values = [t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    lines, table, undefined = [], {}, []
    for i, name in enumerate(objectives):
        why = ("they need two completed trials" if len(values) < 2 else
               f"every completed trial has {name} = {values[0][i]:.4g}" if len({v[i] for v in values}) == 1 else None)
        if why:
            lines.append(f"parameter importances for {name} undefined: {why}")
            undefined.append(name)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                table[name] = _importance(study, objectives, i)
            except Exception as err:  # Optuna's own refusal, with its reason
                lines.append(f"parameter importances for {name} not computed: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}")
                undefined.append(name)
                continue
        lines.append(f"parameter importances for {name} (fANOVA): " + ", ".join(f"{k} {v:.3f}" for k, v in table[name].items()))
    if table:
        (out / "param_importances.json").write_text(json.dumps(table, indent=2))
    return lines, undefined


def _plots(study, objectives: Sequence[str], undefined: Sequence[str] = ()) -> dict[str, Any]:
    """Plot name -> a function drawing it with ``optuna.visualization.matplotlib`` (no importance plot for
    the objectives in ``undefined``)."""
    plots: dict[str, Any] = {}
    for i, name in enumerate(objectives):
        suffix = "" if len(objectives) == 1 else f"_{name}"
        target = _target(objectives, i)
        plots[f"optimization_history{suffix}"] = lambda target=target, name=name: ov.plot_optimization_history(
            study, target=target, target_name=name)
        if name not in undefined:
            plots[f"param_importances{suffix}"] = lambda target=target, name=name: ov.plot_param_importances(
                study, evaluator=importance_evaluator(), target=target, target_name=name)
    if len(objectives) > 1:
        plots["pareto_front"] = lambda: ov.plot_pareto_front(study, target_names=list(objectives))
    return plots
