"""Execute the notebooks: jupytext turns each ``notebooks/<name>.py`` (percent format) into a
notebook, papermill runs it top to bottom with the given parameters (injected after the cell tagged
``parameters``), and nbconvert exports the executed notebook to HTML.

    python -m notebooks.execute [--tracking-uri URI --experiment NAME ...] [--only NAME ...] [--out build/notebooks]

Without ``--tracking-uri`` the demo store (:func:`notebooks.demo_store.build`) is built under
``OUT/demo-store`` first (reused if it is already there) and every notebook runs against it. Writes
``OUT/<name>.ipynb`` and ``OUT/<name>.html``; a notebook whose cell raises stops the run with exit
code 1, naming the notebook and the cell (its partly executed ``.ipynb`` is still written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jupytext
import nbformat
import papermill
from nbconvert import HTMLExporter

from notebooks.demo_store import StoreInfo, build

__all__ = ["NOTEBOOKS", "NOTEBOOK_DIR", "demo_params", "execute", "main"]

NOTEBOOK_DIR = Path(__file__).resolve().parent
REPO = NOTEBOOK_DIR.parent
NOTEBOOKS = ("ablations", "training_dynamics", "sweep_analysis", "what_is_kept")


def demo_params(info: StoreInfo) -> dict[str, dict]:
    """Each notebook's parameters for the demo store."""
    return {
        "ablations": {"tracking_uri": info.tracking_uri, "experiment": info.experiment},
        "training_dynamics": {"tracking_uri": info.tracking_uri, "run_ids": info.dynamics_run_ids},
        "sweep_analysis": {"tracking_uri": info.tracking_uri, "study": info.study, "storage": info.storage,
                           "parent_run_id": info.sweep_parent_run_id},
        "what_is_kept": {"tracking_uri": info.tracking_uri, "run_ids": [info.needle_run_id, info.byo_run_id]},
    }


def execute(name: str, params: dict, out: Path, html: bool = True, timeout: int = 600) -> Path:
    """Run notebook ``name`` (``notebooks/<name>.py``) with ``params``; write ``out/<name>.ipynb``
    (and ``out/<name>.html``); return the ``.ipynb`` path. The kernel runs in the repository root
    with it first on ``PYTHONPATH``, so the notebook imports this tree's packages. Raises
    :class:`papermill.PapermillExecutionError` when a cell raises."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = out / f"{name}.source.ipynb"
    notebook = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, source)
    target = out / f"{name}.ipynb"
    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env_path] if env_path else [])])
    try:
        papermill.execute_notebook(source, target, parameters=params, cwd=str(REPO), kernel_name="python3",
                                   progress_bar=False, execution_timeout=timeout)
    finally:
        if env_path is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = env_path
        source.unlink(missing_ok=True)
        if html and target.is_file():
            body, _ = HTMLExporter().from_notebook_node(nbformat.read(target, as_version=4))
            target.with_suffix(".html").write_text(body)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m notebooks.execute", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/notebooks", help="where the executed notebooks and HTML go")
    p.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="run only these notebooks")
    p.add_argument("--tracking-uri", help="your MLflow store (default: build the demo store under OUT/demo-store)")
    p.add_argument("--experiment", help="ablations: the experiment to analyse")
    p.add_argument("--run-ids", nargs="+", help="training_dynamics / what_is_kept: the runs to show")
    p.add_argument("--study", help="sweep_analysis: the Optuna study name")
    p.add_argument("--storage", help="sweep_analysis: the Optuna storage URL")
    args = p.parse_args(argv)
    out = Path(args.out)
    names = args.only or [n for n in NOTEBOOKS if (NOTEBOOK_DIR / f"{n}.py").is_file()]
    if args.tracking_uri:
        given = {"tracking_uri": args.tracking_uri, "experiment": args.experiment, "run_ids": args.run_ids,
                 "study": args.study, "storage": args.storage}
        params = {n: {k: v for k, v in given.items() if v is not None} for n in names}
    else:
        store = out / "demo-store"
        info_file = store / "store.json"
        if info_file.is_file():
            info = StoreInfo(**json.loads(info_file.read_text()))
        else:
            print(f"building the demo store under {store} ...", flush=True)
            info = build(store)
            info_file.write_text(info.to_json())
        params = demo_params(info)
    failed = []
    for name in names:
        print(f"executing notebooks/{name}.py ...", flush=True)
        try:
            path = execute(name, params[name], out)
        except papermill.PapermillExecutionError as err:
            print(f"notebooks/{name}.py failed in cell {err.exec_count}: {err.ename}: {err.evalue}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"wrote {path} and {path.with_suffix('.html')}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
