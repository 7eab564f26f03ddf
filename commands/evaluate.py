"""``retention evaluate``: one or more trained runs × selection methods × budgets on the test split.

    retention evaluate --run-id ID [ID ...] | --checkpoint PATH [PATH ...] | --experiment NAME
                       [--budgets 0.1 0.3 0.5] [--methods gate random first l2 attention]
                       [--out DIR] [--tracking-uri URI] [--throughput-batches N]

For each run, each method (the learned gate or a baseline of :mod:`retention.baselines`, swapped
into the same trained encoder) and each budget ρ, the run's own test loop (``Trainer.test``) gives
the task metric on the hard top-M path, the dense metric of the same weights, and the achieved
retention per gated layer; the throughput ratio is the retained forward's throughput over the
dense forward's, timed interleaved in this process with ``retention bench``'s timer. Writes
``evaluation.csv``, ``evaluation.md`` (a Markdown table, also printed), ``pareto.png`` (metric vs
retention, one line per method) and ``layer_retention.png``, and logs them as artifacts of every
evaluated MLflow run. A row names its run by the MLflow run name and the run id's first 8
characters (``run``, unique per run, see :func:`label_sources`) and says what the run trained
(``trained``: our method, a trained baseline or an ablation, and the seed).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import pandas as pd
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from commands.checkpoints import load_checkpoint
from conf.compose import load_run_config
from commands.runner import CONFIG_NEXT_TO_CHECKPOINT, default_tracking_uri
from commands.tracking_store import open_store
from datamodules import build_datamodule
from lightning_modules import build_system
from retention.baselines import selector_for
from retention.bench import interleaved_times
from retention.budget import Budget
from retention.methods import Method


MARKERS = "osD^vP*Xh<>"  # one per run in pareto.png


@dataclass
class Source:
    """One evaluated run: its config, best checkpoint, run id (a bare checkpoint's: its folder's
    name) and MLflow run name (None for a bare checkpoint); ``label`` is set by :func:`label_sources`."""

    config: object  # DictConfig
    checkpoint: Path
    run_id: str | None
    run_name: str | None
    label: str = ""

    @property
    def name(self) -> str:
        return self.run_name or self.config.logging.get("run_name") or describe(self.config)


def _check_args(args) -> None:
    bad = [b for b in args.budgets if not 0.0 < b <= 1.0]
    if bad:
        raise ValueError(f"--budgets: {bad} outside (0, 1]")
    valid = Method.selections()
    methods = args.methods or [m.value for m in valid]
    unknown = [m for m in methods if m not in valid]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    if args.throughput_batches < 0:
        raise ValueError(f"--throughput-batches={args.throughput_batches}: must be >= 0")
    args.methods = methods


def describe(cfg) -> str:
    """What a run trained, from its config: our method, a trained baseline or an ablation, and the seed."""
    name = "adaptive-retention"
    if cfg.method != "gate":
        name = f"trained:{cfg.method}"
    elif cfg.ablation != "none":
        name = f"ablation:{cfg.ablation}"
    return f"{name} seed={cfg.seed}"


def label_sources(sources: list[Source]) -> None:
    """Set each source's ``label``, the ``run`` column and plot legend: ``<name> [<id[:8]>]``, with
    the MLflow run name (or, for a bare checkpoint, ``logging.run_name`` or :func:`describe` of its
    config) and the run id (a checkpoint's folder name). Labels that still coincide (ids or folders
    alike in their first 8 characters) get the whole run id, or the checkpoint path."""
    for src in sources:
        src.label = f"{src.name} [{src.run_id[:8]}]" if src.run_id else src.name
    counts = Counter(src.label for src in sources)
    for src in sources:
        if counts[src.label] > 1:
            src.label = f"{src.name} [{src.run_id if src.run_name else src.checkpoint}]"


def load_sources(checkpoints=None, run_ids=None, experiment: str | None = None, tracking_uri: str | None = None) -> list[Source]:
    """The runs to evaluate, labelled (:func:`label_sources`): checkpoint files (each with the run's
    ``config.yaml`` beside it), MLflow run ids, or every finished run of an MLflow ``experiment``
    that has a checkpoint. A ``ValueError`` naming the option for one that cannot be loaded."""
    out = []
    if checkpoints:
        for ck in checkpoints:
            path = Path(ck)
            cfg_path = path.parent / CONFIG_NEXT_TO_CHECKPOINT
            if not path.is_file():
                raise ValueError(f"--checkpoint {ck}: no such file")
            if not cfg_path.is_file():
                raise ValueError(f"--checkpoint {ck}: no {CONFIG_NEXT_TO_CHECKPOINT} beside it (written by `retention train`)")
            cfg = load_run_config(cfg_path)
            out.append(Source(cfg, path, path.parent.name, None))
        label_sources(out)
        return out

    client = open_store(default_tracking_uri(tracking_uri))
    run_ids = list(run_ids or [])
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"--experiment {experiment!r}: no such experiment")
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
        run_ids = [r.info.run_id for r in runs if "checkpoint_path" in r.data.tags]
        if not run_ids:
            raise ValueError(f"--experiment {experiment!r}: no finished run with a checkpoint")
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except Exception as err:  # mlflow raises its own exception types per store
            raise ValueError(f"--run-id {run_id}: {str(err).splitlines()[0]}") from None
        ck = run.data.tags.get("checkpoint_path")
        if not ck or not Path(ck).is_file():
            raise ValueError(f"--run-id {run_id}: the run has no checkpoint on this machine (tag checkpoint_path={ck!r})")
        cfg = load_run_config(Path(ck).parent / CONFIG_NEXT_TO_CHECKPOINT)
        out.append(Source(cfg, Path(ck), run_id, run.info.run_name))
    label_sources(out)
    return out


def load_system(src: Source):
    """(data module, system with the checkpoint's weights) of ``src``, built from ``src.config``."""
    state = load_checkpoint(src.checkpoint, "--checkpoint")["state_dict"]  # weights_only: no code runs
    dm = build_datamodule(src.config)
    system = build_system(src.config, dm)
    system.load_state_dict(state)
    return dm, system


def test_loop_metrics(system, dm, path: str, limit_test_batches=None) -> dict[str, float]:
    """The run's own test loop (``Trainer.test`` on the CPU) on one path (``hard``, ``dense``, ...):
    every logged ``test/...`` figure. Leaves ``system.eval_paths`` at ``(path,)``."""
    system.eval_paths = (path,)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_test_batches=limit_test_batches)
    trainer.test(system, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def throughput_ratio(system, dm, n_batches: int, reps: int = 3) -> float | None:
    """thr_retained / thr_dense over the first ``n_batches`` test batches: Σ_b median dense time_b ÷
    Σ_b median retained (hard top-M) time_b, each batch's forwards timed by
    :func:`retention.bench.interleaved_times` (the timer of ``retention bench``: ``reps`` repetitions,
    dense and retained interleaved in rotating order, after one warm-up of each). A rough figure on a
    shared machine and small batches: ``retention bench`` measures speed properly. None if ``n_batches`` is 0."""
    if n_batches == 0:
        return None
    dense = retained = 0.0
    system.eval()
    for batch in itertools.islice(dm.test_dataloader(), n_batches):
        ids, mask = batch["input_ids"], batch["attention_mask"]

        def forward(mode: str, ids=ids, mask=mask):
            def fn() -> None:
                with torch.no_grad():
                    system.encoder(ids, mask, mode=mode)
            return fn

        times = interleaved_times({"dense": forward("dense"), "hard": forward("hard")}, reps, 1, torch.get_num_threads())
        dense += statistics.median(times["dense"])
        retained += statistics.median(times["hard"])
    return dense / retained if retained else None


def applicable_methods(cfg, requested: list[str]) -> list[str]:
    """The baseline selectors are swapped into runs of our method with its default settings. A run
    trained as a heuristic baseline trained its backbone densely, whichever selector it names, so
    every heuristic selector applies to it (none has parameters; there is no trained ``gate``). A
    trained baseline (LTP) or an ablation is evaluated with its own selection only (``gate``: the
    run's trained scorer)."""

    if cfg.method == Method.gate and cfg.ablation == "none":
        return requested
    method = Method(cfg.method)
    if method.is_heuristic:
        return [m for m in requested if Method(m).is_heuristic]
    own = method.selection
    return [own.value] if own in requested else []


def evaluate_source(src: Source, budgets, methods, throughput_batches: int, limit_test_batches) -> list[dict]:
    cfg = src.config
    dm, system = load_system(src)
    metric = system.METRIC
    trained_budget = system.encoder.budget
    rows = []
    sparse = Method(cfg.method).is_sparse
    own_paths = system.eval_paths

    def test(path: str) -> dict[str, float]:
        return test_loop_metrics(system, dm, path, limit_test_batches)

    methods = applicable_methods(cfg, methods)
    # Once per run: the dense path drops nothing, whatever the selector. A sparse comparator has none.
    dense = test("dense")[f"test/{metric}_dense"] if methods and not sparse else None
    for method in methods:
        # A sparse-attention comparator keeps every token at the attention budget it was built with.
        for rho in [system.encoder.fraction] if sparse else budgets:
            system.selector = selector_for(method)
            if not sparse:
                system.encoder.budget = Budget(ratio=rho, schedule=trained_budget.schedule, num_layers=trained_budget.num_layers)
            m = test("hard")
            with system.selector(system.encoder):
                thr = throughput_ratio(system, dm, throughput_batches)
            row = {
                "run": src.label, "run_id": src.run_id, "trained": describe(cfg), "method": method, "budget": rho,
                "metric": metric, "value": m[f"test/{metric}_hard"], "dense": dense,
            }
            row["pct_of_dense"] = 100.0 * row["value"] / row["dense"] if row["dense"] else float("nan")
            for layer in system.encoder.gate_layers:
                row[f"retention_l{layer}"] = m[f"test/kept_fraction_l{layer}"]
            row["throughput_ratio"] = thr
            rows.append(row)
    system.selector = selector_for(Method(cfg.method).selection)
    system.encoder.budget = trained_budget
    system.eval_paths = own_paths  # popping the instance attribute would drop a sparse system's own
    return rows


def write_outputs(rows: list[dict], out: Path) -> list[Path]:
    """CSV, Markdown, the Pareto plot and the per-layer retention plot."""
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    csv, md = out / "evaluation.csv", out / "evaluation.md"
    df.to_csv(csv, index=False)
    md.write_text(markdown_table(df) + "\n")
    layer_cols = [c for c in df.columns if c.startswith("retention_l")]
    df["retention"] = df[layer_cols].mean(axis=1)

    # colour = selection method, marker = run; the legend beside the axes, where it hides no point
    methods = list(dict.fromkeys(df["method"]))
    runs = list(dict.fromkeys(df["run"]))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for (run, method), g in df.groupby(["run", "method"], sort=False):
        g = g.sort_values("retention")
        ax.plot(g["retention"], g["value"], color=plt.cm.tab10(methods.index(method) % 10),
                marker=MARKERS[runs.index(run) % len(MARKERS)], alpha=0.85, label=f"{method} ({run})")
    ax.set_xlabel("achieved retention (mean over gated layers)")
    ax.set_ylabel(f"test {df['metric'].iloc[0]} (hard top-M path)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    pareto = out / "pareto.png"
    fig.savefig(pareto, dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(df)), 4))
    labels = [f"{r.method} ({r.run}) ρ={r.budget}" for r in df.itertuples()]
    width = 0.8 / max(1, len(layer_cols))
    for j, col in enumerate(layer_cols):
        ax.bar([i + j * width for i in range(len(df))], df[col], width=width, label=col.replace("retention_l", "layer "))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(df))])
    ax.set_xticklabels(labels, rotation=75, fontsize=6, ha="right", rotation_mode="anchor")
    ax.set_ylabel("achieved retention")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    per_layer = out / "layer_retention.png"
    fig.savefig(per_layer, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [csv, md, pareto, per_layer]


def markdown_table(df) -> str:
    """The evaluation table as Markdown (``DataFrame.to_markdown``; floats to 4 decimals, run id and metric name left out)."""
    cols = [c for c in df.columns if c not in ("run_id", "metric")]
    return df[cols].to_markdown(index=False, floatfmt=".4f")


def run(args) -> int:
    # Every row tests with a fresh CPU Trainer: Lightning's INFO lines (device banner, litlogger tip,
    # "Restoring states ...") would repeat per row, and its warning "GPU available but not used" is
    # not a mistake here (evaluation and its throughput timing run on the CPU by design).
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="GPU available but not used", category=PossibleUserWarning)
    try:
        _check_args(args)
        sources = load_sources(args.checkpoint, args.run_id, args.experiment, args.tracking_uri)
    except ValueError as err:
        print(f"retention evaluate: {err}", file=sys.stderr)
        return 2
    rows = []
    for src in sources:
        rows += evaluate_source(src, args.budgets, args.methods, args.throughput_batches, args.limit_test_batches)
    files = write_outputs(rows, Path(args.out))

    print(markdown_table(pd.DataFrame(rows)))
    print("wrote " + ", ".join(str(f) for f in files))
    run_ids = [s.run_id for s in sources if s.run_id and not args.checkpoint]
    if run_ids:
        client = open_store(default_tracking_uri(args.tracking_uri))
        for run_id in run_ids:
            for f in files:
                client.log_artifact(run_id, str(f), artifact_path="evaluation")
        print(f"logged as artifacts (evaluation/) of run(s) {', '.join(run_ids)}")
    return 0
