"""The notebooks ``sweep_analysis`` and ``what_is_kept`` executed against the demo store (tiny real runs,
:mod:`notebooks.demo_store`): no cell raises, each figure is drawn, and the tables hold what the stores
hold — the study's trials and their MLflow runs, the Pareto set, and the hard path's kept fractions and
accuracy as the training run logged them. A cell is found by its tag (``# %% tags=["trials"]``). The
session's demo store is the ``demo_store`` fixture (tests/notebook_fixtures.py, registered in conftest)."""

from __future__ import annotations

import math
import random
import re

import mlflow
import nbformat
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from commands.sweep_study import PARENT_ATTR
from notebooks.execute import demo_params, execute

from .helpers import markdown_rows

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- outputs
def cell(nb, tag: str):
    """The code cell tagged ``tag``."""
    found = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(found) == 1, f"{len(found)} cells tagged {tag!r}"
    return found[0]


def stdout(c) -> str:
    return "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def rich(c, mime: str) -> list[str]:
    """The cell's outputs of one MIME type (``image/png``, ``text/html``, ``text/markdown``)."""
    return [o.data[mime] for o in c.outputs if o.output_type in ("display_data", "execute_result") and mime in o.data]


def assert_no_error(nb) -> None:
    errors = [(c.metadata.get("tags"), o.ename, o.evalue) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors


def close(a: str | float, b: float, rel: float = 2e-3) -> bool:
    """A table cell (printed with 4 significant digits) against the value it shows."""
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-4)


# ---------------------------------------------------------------------------------------------- sweep_analysis
def nested_runs(info) -> dict[str, object]:
    """run id -> the trial's MLflow run, from the parent run's nested runs (read here, not by the notebook)."""
    client = mlflow.tracking.MlflowClient(info.tracking_uri)
    parent = client.get_run(info.sweep_parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{info.sweep_parent_run_id}'")
    return {r.info.run_id: r for r in runs}


def test_sweep_analysis_on_the_demo_sweep(demo_store, tmp_path):
    """Two trials, two objectives: the table joins every trial with its MLflow run, importances and
    contours are explained away in markdown (too few trials), the other figures exist, the Pareto table
    holds the study's best trials."""
    info = demo_store
    png = tmp_path / "pareto.png"
    nb = nbformat.read(execute("sweep_analysis", {**demo_params(info)["sweep_analysis"], "save_figure": str(png)},
                               tmp_path, html=False), as_version=4)
    assert_no_error(nb)
    study = optuna.load_study(study_name=info.study, storage=info.storage)
    runs = nested_runs(info)
    assert len(study.trials) == 2 and len(runs) == 2

    rows = markdown_rows(stdout(cell(nb, "trials")))
    assert [int(r["trial"]) for r in rows] == [t.number for t in study.trials]
    assert {"state", "val acc_hard", "val retention", "test acc_hard", "β (gate.beta)", "ρ (budget.ratio)",
            "η (optim.dual_lr)", "MLflow status", "MLflow run", "link"} <= set(rows[0])
    for row, t in zip(rows, study.trials):
        run = runs[row["MLflow run"]]
        assert row["MLflow run"] == t.user_attrs["mlflow_run_id"] and row["link"] == f"runs:/{row['MLflow run']}"
        assert row["state"] == "COMPLETE" and row["MLflow status"] == run.info.status == "FINISHED"
        assert close(row["val acc_hard"], t.values[0]) and close(row["val retention"], t.values[1])
        assert close(row["val retention"], run.data.metrics["objective/retention"])
        assert close(row["test acc_hard"], run.data.metrics["test/acc_hard"])
        assert close(row["ρ (budget.ratio)"], t.params["budget.ratio"]) and close(row["β (gate.beta)"], t.params["gate.beta"])

    assert len(rich(cell(nb, "history"), "image/png")) == 2  # one per objective
    importances = cell(nb, "importances")
    assert not rich(importances, "image/png")
    notes = rich(importances, "text/markdown")
    assert len(notes) == 2 and all("undefined" in n and "2 completed trial(s) for 3 swept parameters" in n for n in notes)
    assert len(rich(cell(nb, "slices"), "image/png")) == 2
    contours = cell(nb, "contours")
    assert not rich(contours, "image/png") and len(rich(contours, "text/markdown")) == 2
    assert len(rich(cell(nb, "pareto"), "image/png")) == 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = markdown_rows(stdout(cell(nb, "best")))
    assert sorted(int(r["trial"]) for r in best) == sorted(t.number for t in study.best_trials)
    assert all(r["MLflow run"] in runs for r in best)


def pareto_front(points: dict[int, tuple[float, float]]) -> set[int]:
    """Trials no other trial dominates (accuracy at least as high, retention at most as high, one strictly)."""
    return {n for n, (a, r) in points.items()
            if not any(a2 >= a and r2 <= r and (a2, r2) != (a, r) for a2, r2 in points.values())}


def test_sweep_analysis_of_a_single_objective_journal_study(demo_store, tmp_path):
    """A single-objective study in a journal file (the storage `retention sweep --storage NAME.log` writes)
    holding the demo's two trials (their runs, user attrs and accuracy) and four more made with
    ``optuna.trial.create_trial`` (no MLflow run): with six trials for three parameters the importances
    and contours are drawn; the Pareto front takes each trial's retention from its user attr."""
    info = demo_store
    demo = optuna.load_study(study_name=info.study, storage=info.storage)
    journal = tmp_path / "study.log"
    study = optuna.create_study(study_name="journal", storage=JournalStorage(JournalFileBackend(str(journal))),
                                direction="maximize")
    study.set_user_attr(PARENT_ATTR, demo.user_attrs[PARENT_ATTR])  # the demo's parent run: its trials' runs join
    dists = demo.trials[0].distributions
    study.add_trials([create_trial(state=TrialState.COMPLETE, value=t.values[0], params=t.params, distributions=dists,
                                   user_attrs=t.user_attrs) for t in demo.trials])
    rng = random.Random(0)
    for _ in range(4):
        params = {k: rng.uniform(d.low, d.high) for k, d in dists.items()}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=1 - abs(params["budget.ratio"] - 0.3), params=params,
                                     distributions=dists, user_attrs={"metric": "acc", "retention": params["budget.ratio"]}))
    params = {"tracking_uri": info.tracking_uri, "study": "journal", "storage": str(journal)}
    nb = nbformat.read(execute("sweep_analysis", params, tmp_path, html=False), as_version=4)
    assert_no_error(nb)

    rows = markdown_rows(stdout(cell(nb, "trials")))
    assert [int(r["trial"]) for r in rows] == list(range(6))
    assert [r["MLflow run"] for r in rows[:2]] == [t.user_attrs["mlflow_run_id"] for t in demo.trials]
    assert [r["MLflow run"] for r in rows[2:]] == [""] * 4
    for row, t in zip(rows, study.trials):
        assert close(row["val acc_hard"], t.value) and close(row["val retention"], t.user_attrs["retention"])
    assert len(rich(cell(nb, "history"), "image/png")) == 1
    assert len(rich(cell(nb, "importances"), "image/png")) == 1 and not rich(cell(nb, "importances"), "text/markdown")
    assert len(rich(cell(nb, "contours"), "image/png")) == 1
    assert len(rich(cell(nb, "pareto"), "image/png")) == 1
    best = markdown_rows(stdout(cell(nb, "best")))
    front = pareto_front({t.number: (t.value, t.user_attrs["retention"]) for t in study.trials})
    assert {int(r["trial"]) for r in best} == front
    assert {int(r["trial"]) for r in best if r["best (single objective)"] == "True"} <= {study.best_trial.number}


# ---------------------------------------------------------------------------------------------- what_is_kept
LAYER_LINE = re.compile(r"layer (\d+): kept (\d+) of (\d+)</span>(.*?)</div>")


def test_what_is_kept_on_the_needle_and_byo_runs(demo_store, tmp_path):
    """Both demo checkpoints: every highlighted line keeps M = ⌈ρ·T_valid⌉ tokens, the kept fraction and the
    hard accuracy over the whole test split equal what the training run logged (test/kept_fraction_l<ℓ>,
    test/acc_hard of the same checkpoint), and the BYO run gets its token table."""
    info = demo_store
    png = tmp_path / "kept.png"
    params = {**demo_params(info)["what_is_kept"], "n_batches": 100, "save_figure": str(png)}  # the whole test split
    nb = nbformat.read(execute("what_is_kept", params, tmp_path, html=False), as_version=4)
    assert_no_error(nb)
    client = mlflow.tracking.MlflowClient(info.tracking_uri)
    runs = {rid: client.get_run(rid) for rid in (info.needle_run_id, info.byo_run_id)}

    checked = re.findall(r"\[(\w{8})\].*?checked (\d+) \(sequence, gated layer\) pairs: the highlighted tokens are exactly",
                         stdout(cell(nb, "load")))
    assert [c[0] for c in checked] == [info.needle_run_id[:8], info.byo_run_id[:8]]

    pages = rich(cell(nb, "highlight"), "text/html")
    assert len(pages) == 2
    for page, rid in zip(pages, runs):
        rho = float(runs[rid].data.params["budget.ratio"])
        lines = LAYER_LINE.findall(page)
        assert lines
        for layer, kept, total, spans in lines:
            assert int(kept) == max(math.ceil(round(rho * int(total), 9)), 2)  # [CLS] and [SEP] are protected
            assert spans.count("background:rgba") == int(kept) and spans.count("<span") == int(total)
    assert len(rich(cell(nb, "figures"), "image/png")) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = markdown_rows(stdout(cell(nb, "per_layer")))
    expected = [(rid, int(layer)) for rid in runs for layer in runs[rid].data.params["gate.layers"].strip("[]").split(",")]
    assert [(r["run"][-9:-1], int(r["gated layer"])) for r in rows] == [(rid[:8], layer) for rid, layer in expected]
    for row, (rid, layer) in zip(rows, expected):
        logged = runs[rid].data.metrics
        assert close(row["kept fraction"], logged[f"test/kept_fraction_l{layer}"])
        assert close(row["hard accuracy"], logged["test/acc_hard"])
    assert rows[0]["data"] == "needle" and rows[-1]["data"] == "byo" and rows[-1]["needles kept"] == "nan"

    tokens = markdown_rows(stdout(cell(nb, "tokens")))
    assert tokens and set(tokens[0]) == {"token", "seen", "kept", "kept fraction"}
    assert all(close(r["kept fraction"], int(r["kept"]) / int(r["seen"]), rel=5e-3) for r in tokens)
