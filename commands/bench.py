"""``retention bench``: full vs retained, side by side in one process (speed, memory, gate overhead, training step).

    retention bench                                   # MiniLM, T = 512 … 4096, B = 8, rho = 0.3, 0.5
    retention bench --quick                           # under 2 minutes
    retention bench --backbone random --layers 6 --hidden 384 --heads 12 --lengths 4096 --batch-sizes 2
    retention bench --mlflow                          # also log to MLflow ($MLFLOW_TRACKING_URI or ./mlflow.db)
    retention bench --device cuda --cuda-graphs --sync-debug error   # CUDA graph replays; any host sync fails
    retention bench --gate-layers 0 2 4 --schedule linear --ratios 0.3 --flops 0.25   # progressive, a FLOPs budget
    retention bench --checkpoint ckpt/*/best.ckpt --set data.seq_len=512 --ratios 0.3 --flops 0.25   # trained runs

With ``--checkpoint`` / ``--run-id`` it measures trained runs instead, speed-up and test accuracy per
budget (:mod:`commands.bench_trained`: ``accuracy_speed.csv``/``.md`` and ``pareto.png``).

Writes ``bench.json`` (environment + one record per configuration), ``bench.csv`` (the records) and
``bench.png`` (speed-up and activation-memory reduction against T, one line per budget) to ``--out``.
The measurement core is :mod:`retention.bench`, the records, CSV and plot :mod:`retention.bench_records`;
the summary printed at the end is a Markdown table (``DataFrame.to_markdown``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import torch

from commands import bench_trained
from commands.runner import default_tracking_uri, flatten_params
from commands.tracking_store import open_store
from retention.bench import BenchSpec, run_bench, validate_spec
from retention.bench_records import plot_records, write_csv


EXIT_USAGE = 2
# --quick: the defaults it changes (an explicit flag still wins).
QUICK = {"lengths": [128, 256], "batch_sizes": [2], "reps": 3, "warmup": 1, "train_reps": 2, "train_max_length": 128}


def spec_from_args(args: argparse.Namespace):
    defaults = BenchSpec()

    def pick(name: str):
        """The flag if given, else --quick's value, else BenchSpec's default."""
        value = getattr(args, name)
        if value is not None:
            return value
        return QUICK[name] if args.quick and name in QUICK else getattr(defaults, name)

    return BenchSpec(
        backbone=pick("backbone"),
        lengths=tuple(pick("lengths")),
        batch_sizes=tuple(pick("batch_sizes")),
        ratios=tuple(args.ratios if args.ratios is not None else ([] if args.flops else defaults.ratios)),
        gate_layers=tuple(pick("gate_layers")),
        schedule=pick("schedule"),
        flops=tuple(args.flops or ()),
        shape_ratio=pick("shape_ratio"),
        reps=pick("reps"),
        warmup=pick("warmup"),
        threads=pick("threads"),
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        autocast=args.autocast,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        sync_debug=args.sync_debug,
        memory=not args.no_memory,
        train_max_length=pick("train_max_length"),
        train_reps=pick("train_reps"),
        arch=args.arch, layers=args.layers, hidden=args.hidden, heads=args.heads,
        intermediate=args.intermediate, vocab=args.vocab,
    )


def log_to_mlflow(result: dict, files: list[Path], tracking_uri: str | None, experiment: str) -> str:
    """One MLflow run: environment and spec as params, every record's figures as metrics keyed by configuration."""
    uri = default_tracking_uri(tracking_uri)
    open_store(uri, experiment)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="bench") as run:
        params = flatten_params({"env": result["environment"], "spec": result["spec"]})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics = {}
        for rec in result["records"]:
            budget = f"flops{rec['flops']}" if rec.get("flops") is not None else f"rho{rec['ratio']}"
            tag = f"T{rec['length']}_B{rec['batch']}_{budget}"
            for key, value in rec.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("length", "batch", "ratio", "flops"):
                    metrics[f"{key}/{tag}"] = float(value)
        mlflow.log_metrics(metrics)
        for f in files:
            mlflow.log_artifact(str(f))
        return run.info.run_id


def run(args: argparse.Namespace) -> int:
    if args.checkpoint or args.run_id:
        return bench_trained.run(args)
    try:
        spec = spec_from_args(args)
        validate_spec(spec)
    except ValueError as err:
        print(f"retention bench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_bench(spec, log=lambda msg: print(msg, flush=True))
    result["environment"]["command"] = " ".join(["retention", "bench", *(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])])
    paths = [out / "bench.json", out / "bench.csv", out / "bench.png"]
    paths[0].write_text(json.dumps(result, indent=2))
    write_csv(result["records"], str(paths[1]))
    env = result["environment"]
    plot_records(result["records"], str(paths[2]),
                 title=f"{spec.backbone}, gates {', '.join(map(str, spec.gate_layers))} ({spec.schedule}), on {env['device_name']} "
                       f"({env['threads']} threads, torch {env['torch']}, {env['dtype']})")
    print(summary_table(result["records"]))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    if args.mlflow:
        run_id = log_to_mlflow(result, paths, args.tracking_uri, args.experiment)
        print(f"MLflow run {run_id}")
    return 0


# printed summary: column -> (its value from a record, tabulate float format)
TABLE = {
    "T": (lambda r: r["length"], ""), "B": (lambda r: r["batch"], ""), "rho": (lambda r: r["ratio"], ""),
    "M": (lambda r: r["kept_tokens"], ""),
    "full ms": (lambda r: 1e3 * r["full_latency_median_s"], ".1f"),
    "ret ms": (lambda r: 1e3 * r["retained_latency_median_s"], ".1f"),
    "speed-up": (lambda r: r["speedup"], ".2f"),
    "act MB full": (lambda r: _mb(r["full_activation_bytes"]), ".0f"),
    "act MB ret": (lambda r: _mb(r["retained_activation_bytes"]), ".0f"),
    "act mem -%": (lambda r: _pct(r["activation_memory_reduction"]), ".0f"),
    "gate %": (lambda r: 100 * r["gate_overhead"], ".2f"),
    "train x": (lambda r: r["train_step_ratio"], ".2f"),
    "F": (lambda r: r.get("flops"), ""),  # a FLOPs budget's target (ratio budgets: -)
    "FLOPs": (lambda r: r.get("flops_fraction"), ".3f"),  # the retained forward's analytic FLOPs / dense
}


def _mb(v: int | None) -> float | None:
    return None if v is None else v / 2**20


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def summary_table(records: list[dict]) -> str:
    """The side-by-side summary printed at the end, a Markdown table (``-``: not measured)."""
    df = pd.DataFrame([{col: get(r) for col, (get, _) in TABLE.items()} for r in records], columns=list(TABLE), dtype=object)
    return df.to_markdown(index=False, floatfmt=tuple(fmt for _, fmt in TABLE.values()), missingval="-")
