"""The notebooks ablations and training_dynamics, executed with papermill against the demo store
(tests/notebook_fixtures.py), and the method × ρ summary they share with scripts/summarize_results.py."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest

from commands.evaluation_summary import summarize, to_markdown
from notebooks.execute import demo_params, execute

from .helpers import markdown_rows
from .notebook_fixtures import read_outputs

ROOT = Path(__file__).resolve().parents[1]
RESULTS_HEADER = ["run", "method", "ρ", "acc", "% of dense", "achieved retention", "throughput ratio", "seeds"]


def table_after(text: str, marker: str) -> list[dict[str, str]]:
    """The first Markdown table printed after the line starting with ``marker``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return markdown_rows("\n".join(lines[first:end]))


# ------------------------------------------------------------------------------------ the summary
def evaluate_rows(seed_values: dict[int, float]) -> pd.DataFrame:
    """Rows as `retention evaluate` writes them: one gate run per seed, labelled by run name and id."""
    return pd.DataFrame([
        {"run": f"gate [{seed:08d}]", "run_id": f"{seed:032d}", "trained": f"adaptive-retention seed={seed}",
         "method": "gate", "budget": 0.3, "metric": "acc", "value": v, "dense": 1.0, "pct_of_dense": 100 * v,
         "retention_l0": 0.3, "retention_l1": 0.5, "throughput_ratio": 2.0 + seed}
        for seed, v in seed_values.items()])


def test_summary_pools_the_seeds_of_one_variant():
    """The runs of one variant with different seeds are one row (their `run` labels differ by run id)."""
    table = summarize(evaluate_rows({0: 0.8, 1: 0.6}))
    assert list(table.index) == [("adaptive-retention", "gate", 0.3)]
    row = table.iloc[0]
    assert row[("n", "")] == 2
    assert row[("value", "mean")] == pytest.approx(0.7) and row[("value", "std")] == pytest.approx(0.1414, abs=1e-4)
    assert row[("retention", "mean")] == pytest.approx(0.4)  # mean over the gated layers
    assert row[("throughput_ratio", "mean")] == pytest.approx(2.5)
    (md,) = markdown_rows(to_markdown(table, "acc"))
    assert md == {"run": "adaptive-retention", "method": "gate", "ρ": "0.3", "acc": "0.700 ± 0.141",
                  "% of dense": "70.0 ± 14.1", "achieved retention": "0.400 ± 0.000",
                  "throughput ratio": "2.500 ± 0.707", "seeds": "2"}


def test_summarize_results_script_reads_evaluate_csvs(tmp_path, monkeypatch, capsys):
    """scripts/summarize_results.py on one evaluate CSV per seed (run as ``__main__``, in this process)."""
    for seed, v in {0: 1.0, 1: 0.5}.items():
        evaluate_rows({seed: v}).to_csv(tmp_path / f"seed{seed}.csv", index=False)
    monkeypatch.setattr(sys, "argv", ["summarize_results.py", *sorted(map(str, tmp_path.glob("*.csv")))])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "scripts" / "summarize_results.py"), run_name="__main__")
    assert done.value.code == 0
    (row,) = markdown_rows(capsys.readouterr().out)
    assert row["acc"] == "0.750 ± 0.354" and row["seeds"] == "2"


# ------------------------------------------------------------------------------------ the notebooks
@pytest.mark.slow
def test_ablations_notebook_reproduces_the_results_table_from_the_store(demo_store, tmp_path):
    out = read_outputs(execute("ablations", demo_params(demo_store)["ablations"], tmp_path, html=False))
    assert out.errors == []
    assert out.images == 3  # accuracy vs retention, vs speed-up, kept fraction per layer
    text = out.all_text
    evaluated = table_after(text, "from retention evaluate")
    assert list(evaluated[0]) == RESULTS_HEADER
    assert [(r["run"], r["method"], r["ρ"], r["seeds"]) for r in evaluated] == [
        (kind, method, rho, "2") for kind, method in [("adaptive-retention", "gate"), ("adaptive-retention", "random"),
                                                      ("trained:random", "random"), ("ablation:fixed_lambda", "gate")]
        for rho in ("0.3", "0.5")]
    # the same table as scripts/summarize_results.py prints from the evaluation.csv that evaluate wrote
    csv = pd.read_csv(Path(demo_store.root) / "evaluation" / "evaluation.csv")
    assert "\n".join(f"| {' | '.join(r.values())} |" for r in evaluated) in to_markdown(summarize(csv), "acc")
    assert all(r["throughput ratio"] != "–" for r in evaluated)  # evaluate measured a speed-up for every row
    trained = table_after(text, "from the training runs")
    assert sorted((r["run"], r["method"], r["ρ"], r["seeds"], r["throughput ratio"]) for r in trained) == sorted([
        ("adaptive-retention", "gate", "0.3", "2", "–"), ("adaptive-retention", "gate", "0.5", "2", "–"),
        ("trained:random", "random", "0.3", "2", "–"), ("trained:random", "random", "0.5", "2", "–"),
        ("ablation:fixed_lambda", "gate", "0.3", "2", "–")])


@pytest.mark.slow
def test_training_dynamics_notebook_plots_lambda_and_targets(demo_store, tmp_path):
    out = read_outputs(execute("training_dynamics", demo_params(demo_store)["training_dynamics"], tmp_path, html=False))
    assert out.errors == []
    assert out.images == 1
    rows = markdown_rows(out.text[-1])
    lagrangian, fixed = (r[:8] for r in demo_store.dynamics_run_ids)
    assert [(r["run_id"], r["layer"]) for r in rows] == [(lagrangian, "0"), (lagrangian, "1"), (fixed, "0"), (fixed, "1")]
    for r in rows:
        assert float(r["final target"]) == pytest.approx(0.3)  # the warm-up ended: ρ(t) = ρ
    # the ablation's λ never moves from budget.init_lambda = 1; the Lagrangian's did
    assert [float(r["final λ"]) for r in rows if r["run_id"] == fixed] == [1.0, 1.0]
    assert all(float(r["final λ"]) != 1.0 for r in rows if r["run_id"] == lagrangian)
