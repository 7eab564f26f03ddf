"""``retention bench --checkpoint CK [CK ...]`` (or ``--run-id ID ...``): speed against accuracy of
trained runs, each budget measured both ways in one process.

    retention bench --checkpoint ckpt/a/best.ckpt ckpt/b/best.ckpt --set data.seq_len=512 \\
        --ratios 0.1 0.3 0.5 --flops 0.15 0.25 0.4 --batch-sizes 8 --threads 1 --out pareto

For every checkpoint (loaded as ``retention evaluate`` loads it, :func:`commands.evaluate.load_sources`
and :func:`commands.evaluate.load_system`; ``--set`` overrides its ``config.yaml``,
:func:`apply_overrides`: a key it does not have, or a value of another type, exits 2 naming it) and every budget:

* **accuracy**: the task metric of the hard top-M path on the test split, by the run's own test loop
  (``Trainer.test``, :func:`commands.evaluate.test_loop_metrics`), and the dense path's once per checkpoint;
* **speed-up** of the retained forward over the full forward of the same weights: the first
  ``--timing-batches`` batches of the test split, ``--batch-sizes`` rows each at the data's own
  length, every forward (full and every budget) timed interleaved by the bench's timer
  (:func:`retention.bench.interleaved_times`) with ``--threads`` threads; speed-up = Σ_b median full
  time_b ÷ Σ_b median retained time_b. The retained call builds its host plan inside the timing, as
  ``retention bench`` does;
* **FLOPs**: the analytic fraction of the dense forward (:func:`retention.flops.flops_fraction`) of the
  lengths the timed retained forwards ran on (mean and max over their sequences).

Budgets: ``--ratios`` ρ keep the checkpoint's own schedule (the per-gate shape it trained with);
``--flops`` F scale that schedule's shape at the checkpoint's own ``budget.ratio`` to F of the dense
FLOPs (:func:`retention.flops.flops_keep_counts`). An F at or below the share of the dense layers
before the first gate cannot be met by any selection: its row is written with a note and no figures.
The machine's load average (``os.getloadavg``) is recorded before and after each checkpoint.

Writes ``accuracy_speed.csv``, ``accuracy_speed.md`` (also printed) and ``pareto.png`` (accuracy
against speed-up, one line per checkpoint from its dense point at 1.0x) to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import sys
import warnings
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader

from commands.evaluate import Source, describe, load_sources, load_system, test_loop_metrics
from conf.checks import ConfigError
from conf.compose import config_groups
from retention.bench import BenchSpec, interleaved_times
from retention.budget import Budget
from retention.flops import flops_fraction
from retention.methods import Method

__all__ = ["run", "trained_label", "checkpoint_budgets", "time_budgets", "write_outputs"]

EXIT_USAGE = 2
# flags of the synthetic bench that do not apply to trained checkpoints (the data sets T, the run its gates)
SYNTHETIC_ONLY = {"lengths": "--lengths (the data's own length: --set data.seq_len=N)", "backbone": "--backbone",
                  "gate_layers": "--gate-layers", "schedule": "--schedule", "shape_ratio": "--shape-ratio",
                  "quick": "--quick", "compile": "--compile", "cuda_graphs": "--cuda-graphs", "no_memory": "--no-memory",
                  "train_max_length": "--train-max-length", "train_reps": "--train-reps", "mlflow": "--mlflow"}
DEFAULT_REPS, DEFAULT_WARMUP, DEFAULT_THREADS = 3, 1, 1
_ABSENT = object()


def trained_label(cfg) -> str:
    """What a run trained, for the plot's legend: ``single gate at layer L`` or ``progressive gates
    L1, L2, ...``, its budget (ρ or F), ``+ ranking distillation``, another method or ablation
    (:func:`commands.evaluate.describe`) and the seed."""
    layers = list(cfg.gate.layers)
    b = cfg.budget
    gates = f"single gate at layer {layers[0]}" if len(layers) == 1 else f"progressive gates {', '.join(map(str, layers))}"
    flops = b.flops
    budget = f"F {flops}" if flops is not None else (f"ρ {b.ratio}" if b.ratio is not None else f"M {b.tokens}")
    label = f"{gates}, {budget}"
    if cfg.distill.ranking:
        label += " + ranking distillation"
    what = describe(cfg).rsplit(" seed=", 1)[0]
    if what != "adaptive-retention" and what != "ablation:ranking_distill":
        label += f" ({what})"
    return f"{label}, seed {cfg.seed}"


def checkpoint_budgets(trained: Budget, gate_layers: list[int], num_layers: int, ratios, flops) -> dict[str, Budget | str]:
    """Label → budget for one checkpoint: ``rho<ρ>`` keeps the trained schedule at ratio ρ, ``flops<F>``
    scales the trained shape (schedule at the trained ratio) to F; a string instead of a budget says
    why F cannot be met (the dense layers before the first gate cost more)."""
    out: dict[str, Budget | str] = {f"rho{r}": Budget(ratio=r, schedule=trained.schedule, num_layers=trained.num_layers)
                                    for r in ratios}
    dense_share = min(gate_layers) / num_layers
    for f in flops:
        if f <= dense_share:
            out[f"flops{f}"] = (f"F {f} unreachable: the {min(gate_layers)} dense layer(s) before the first gate "
                                f"cost {dense_share:.3f} of the dense forward")
        elif trained.ratio is None:
            out[f"flops{f}"] = "a FLOPs budget scales a ratio schedule; this run trained with budget.tokens"
        else:
            out[f"flops{f}"] = Budget(ratio=trained.ratio, schedule=trained.schedule, num_layers=trained.num_layers, flops=f)
    return out


def timing_batches(dm, batch_size: int, n: int) -> list[dict]:
    """The first ``n`` batches of ``batch_size`` rows of the test split, collated as the data module does."""
    loader = DataLoader(dm.datasets["test"], batch_size=batch_size, shuffle=False, collate_fn=dm.collate_fn)
    return list(itertools.islice(loader, n))


def time_budgets(system, batches: list[dict], budgets: dict[str, Budget], reps: int, warmup: int, threads: int) -> dict[str, dict]:
    """Per budget label: ``full_s`` and ``retained_s`` (Σ over batches of the median time), ``speedup``
    (their ratio) and the analytic FLOPs fraction of the lengths its timed forwards ran on
    (``flops_mean``, ``flops_max`` over sequences). Per batch, the full forward and every budget's
    retained forward run interleaved (:func:`retention.bench.interleaved_times`)."""
    enc = system.encoder
    trained = enc.budget
    full = {k: 0.0 for k in budgets}
    ret = {k: 0.0 for k in budgets}
    fractions: dict[str, list[torch.Tensor]] = {k: [] for k in budgets}
    system.eval()
    try:
        for batch in batches:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            prot = system.protected(batch)
            prot = enc.protected_mask(ids) if prot is None else prot
            last = {}

            def retained(label: str, ids=ids, mask=mask, prot=prot):
                def fn() -> None:
                    enc.budget = budgets[label]
                    plan = enc.batch_plan(ids, mask, prot)  # host work: inside the timing
                    with torch.inference_mode():
                        last[label] = enc(ids, mask, protected=prot, mode="hard", plan=plan)
                return fn

            def dense(ids=ids, mask=mask, prot=prot) -> None:
                with torch.inference_mode():
                    enc(ids, mask, protected=prot, mode="dense")

            times = interleaved_times({"full": dense, **{k: retained(k) for k in budgets}}, reps, warmup, threads)
            n_valid = mask.sum(1)
            for k in budgets:
                full[k] += statistics.median(times["full"])
                ret[k] += statistics.median(times[k])
                fractions[k].append(flops_fraction(torch.stack(last[k].retained_counts), n_valid, enc.flops_shape))
    finally:
        enc.budget = trained
    out = {}
    for k in budgets:
        f = torch.cat(fractions[k])
        out[k] = {"full_s": full[k], "retained_s": ret[k], "speedup": full[k] / ret[k],
                  "flops_mean": float(f.mean()), "flops_max": float(f.max())}
    return out


def measure_source(src: Source, args, log) -> list[dict]:
    """Every row of one checkpoint: accuracy on the test split and speed on its first batches, per budget."""
    try:
        dm, system = load_system(src)
    except RuntimeError as err:  # load_state_dict: a --set that changed the model's shapes
        raise ConfigError(f"{src.checkpoint}: its weights do not fit the model its config{' with --set' if args.set else ''} "
                          f"builds: {' '.join(str(err).split())[:300]}") from None
    dm.setup("test")
    cfg = src.config
    enc = system.encoder
    metric = system.METRIC
    budgets = checkpoint_budgets(enc.budget, list(enc.gate_layers), enc.flops_shape.num_layers, args.ratios, args.flops)
    runnable = {k: b for k, b in budgets.items() if isinstance(b, Budget)}
    trained, own_paths = enc.budget, system.eval_paths
    torch.set_num_threads(args.threads)
    label = trained_label(cfg)
    log(f"{src.label}: {label}; test split, dense path")
    dense = test_loop_metrics(system, dm, "dense", args.limit_test_batches)[f"test/{metric}_dense"]
    accuracy = {}
    for k, b in runnable.items():
        enc.budget = b
        log(f"{src.label}: test split, hard path, {k}")
        accuracy[k] = test_loop_metrics(system, dm, "hard", args.limit_test_batches)
    enc.budget, system.eval_paths = trained, own_paths
    rows = []
    for batch_size in args.batch_sizes:
        batches = timing_batches(dm, batch_size, args.timing_batches)
        t = int(batches[0]["input_ids"].shape[1])
        load_start = os.getloadavg()
        log(f"{src.label}: timing full and {list(runnable)} on {len(batches)} test batch(es) of {batch_size} at T {t} "
            f"({args.reps} interleaved reps, {args.threads} thread(s)), load {load_start[0]:.2f}")
        timed = time_budgets(system, batches, runnable, args.reps, args.warmup, args.threads)
        load_end = os.getloadavg()
        for k, b in budgets.items():
            row = {"run": src.label, "trained": label, "budget": k, "ratio": b.ratio if isinstance(b, Budget) and b.flops is None else None,
                   "flops_target": float(k.removeprefix("flops")) if k.startswith("flops") else None,
                   "metric": metric, "value": None, "dense": dense, "pct_of_dense": None,
                   "batch": batch_size, "length": t, "timed_batches": len(batches), "threads": args.threads,
                   "load_start": load_start[0], "load_end": load_end[0], "note": "" if isinstance(b, Budget) else b}
            if isinstance(b, Budget):
                m = accuracy[k]
                row["value"] = m[f"test/{metric}_hard"]
                row["pct_of_dense"] = 100.0 * row["value"] / dense if dense else float("nan")
                row.update({f"kept_l{layer}": m[f"test/kept_fraction_l{layer}"] for layer in enc.gate_layers})
                tm = timed[k]
                row.update(speedup=tm["speedup"], full_ms=1e3 * tm["full_s"] / len(batches),
                           retained_ms=1e3 * tm["retained_s"] / len(batches),
                           flops_fraction=tm["flops_mean"], flops_fraction_max=tm["flops_max"])
                if b.flops is not None and tm["flops_max"] > b.flops:  # the floor (protected tokens) costs more
                    row["note"] = f"over F: the kept floor costs up to {tm['flops_max']:.3f}"
            rows.append(row)
    return rows


# the Markdown table: column -> (header, float format)
TABLE = {"run": ("run", ""), "trained": ("trained", ""), "budget": ("budget", ""), "value": ("accuracy", ".4f"), "dense": ("dense", ".4f"),
         "pct_of_dense": ("% of dense", ".1f"), "speedup": ("speed-up", ".2f"), "full_ms": ("full ms", ".0f"),
         "retained_ms": ("retained ms", ".0f"), "flops_fraction": ("FLOPs", ".3f"), "load_start": ("load", ".2f"),
         "note": ("note", "")}


def markdown_table(df: pd.DataFrame) -> str:
    """The rows as a Markdown table (``DataFrame.to_markdown``; ``-``: not measured); the ``run``
    column only where two runs trained alike."""
    cols = [c for c in TABLE if c in df.columns and c != "run"]
    if df.groupby("trained")["run"].nunique().max() > 1:
        cols.insert(0, "run")
    view = df[cols].astype(object).where(df[cols].notna(), None).rename(columns={c: TABLE[c][0] for c in cols})
    return view.to_markdown(index=False, floatfmt=tuple(TABLE[c][1] for c in cols), missingval="-")


def write_outputs(rows: list[dict], out: Path, header: str) -> list[Path]:
    """``accuracy_speed.csv``, ``accuracy_speed.md`` (``header`` above the table) and ``pareto.png``."""
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    csv, md, png = out / "accuracy_speed.csv", out / "accuracy_speed.md", out / "pareto.png"
    df.to_csv(csv, index=False)
    md.write_text(header + "\n\n" + markdown_table(df) + "\n")
    names = Counter(t for _, t in dict.fromkeys(zip(df["run"], df["trained"])))  # legend: the run only where needed
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, ((run, trained), g) in enumerate(df.groupby(["run", "trained"], sort=False)):
        color = plt.cm.tab10(i % 10)
        g = g.dropna(subset=["speedup"]).sort_values("speedup")
        dense = float(df[df["run"] == run]["dense"].iloc[0])
        xs, ys = [1.0, *g["speedup"]], [dense, *g["value"]]
        name = trained if names[trained] == 1 else f"{trained} [{run}]"
        ax.plot(xs, ys, color=color, marker="o", alpha=0.85, label=name)
        ax.plot([1.0], [dense], color=color, marker="s", markersize=9, markerfacecolor="none")
        ax.axhline(0.99 * dense, color=color, linestyle=":", linewidth=0.8)
        for r in g.itertuples():
            tag = f"F {r.flops_target:g}" if pd.notna(r.flops_target) else f"ρ {r.ratio:g}"
            ax.annotate(tag, (r.speedup, r.value), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel("speed-up of the retained forward over the full forward (same weights)")
    ax.set_ylabel(f"test {df['metric'].iloc[0]} (hard top-M path)")
    ax.set_title(header, fontsize=7)  # the setting and the machine's load beside the figures
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title="□ dense (1.0x); ⋯ 99 % of dense", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [csv, md, png]


def apply_overrides(cfg, overrides: list[str], checkpoint) -> DictConfig:
    """The run's own config with the ``key=value`` overrides: each key must exist in it and the value
    keep the type it has there (a :class:`ConfigError` naming the key otherwise). Applied to the saved
    config itself rather than recomposed through the schema, so a run written by an older or newer
    version of the code (a key this version does not know) can still be measured."""
    try:
        given = OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as err:
        raise ConfigError(f"--set: {str(err).splitlines()[0]}") from None
    for key in (k.split("=", 1)[0] for k in overrides):
        old, new = OmegaConf.select(cfg, key, default=_ABSENT), OmegaConf.select(given, key)
        if old is _ABSENT:
            raise ConfigError(f"--set {key}: no such key in the config.yaml of {checkpoint}")
        numeric = isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(new, bool)
        if old is not None and new is not None and type(old) is not type(new) and not (isinstance(old, float) and numeric):
            raise ConfigError(f"--set {key}={new!r}: expected a {type(old).__name__} like the run's {old!r}")
    return OmegaConf.merge(cfg, given)


def check_args(args: argparse.Namespace) -> None:
    """Fill the checkpoint mode's defaults; a ``ValueError`` for a flag or value it cannot take."""
    given = [flag for name, flag in SYNTHETIC_ONLY.items() if getattr(args, name, None) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: only for the synthetic bench, not with --checkpoint / --run-id")
    if args.device not in (None, "cpu") or args.sync_debug != "off":
        raise ValueError("--device / --sync-debug: trained checkpoints are measured on the CPU")
    args.ratios = list(args.ratios) if args.ratios is not None else ([] if args.flops else list(BenchSpec().ratios))
    args.flops = list(args.flops or [])
    for name in ("ratios", "flops"):
        bad = [v for v in getattr(args, name) if not 0.0 < v <= 1.0]
        if bad:
            raise ValueError(f"--{name}: {bad} outside (0, 1]")
    if not args.ratios and not args.flops:
        raise ValueError("give at least one budget: --ratios or --flops")
    groups = [item for item in args.set if item.split("=", 1)[0] in config_groups()]
    if groups:  # a group's file sets several keys of several sections; --set changes keys of the run's own config
        raise ValueError(f"--set {' '.join(groups)}: config groups cannot be swapped on a trained run; give keys (data.seq_len=512)")
    args.batch_sizes = args.batch_sizes or [8]
    args.reps = DEFAULT_REPS if args.reps is None else args.reps
    args.warmup = DEFAULT_WARMUP if args.warmup is None else args.warmup
    args.threads = DEFAULT_THREADS if args.threads is None else args.threads
    for name in ("batch_sizes", "reps", "threads", "timing_batches"):
        value = getattr(args, name)
        if min(value if isinstance(value, list) else [value]) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {value}")
    if args.warmup < 0:
        raise ValueError(f"--warmup: must be >= 0, got {args.warmup}")


def run(args: argparse.Namespace) -> int:
    # Every budget tests with a fresh CPU Trainer (as `retention evaluate`): its INFO lines would repeat
    # per row, and neither "GPU available but not used" nor the note that the system's own
    # on_before_batch_transfer (the host plans) is used is a mistake here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="GPU available but not used", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer`")
    try:
        check_args(args)
        sources = load_sources(args.checkpoint, args.run_id, tracking_uri=args.tracking_uri)
    except ValueError as err:
        print(f"retention bench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    for src in sources:  # every --set key is checked (a ConfigError: exit 2) before anything is measured
        if args.set:
            src.config = apply_overrides(src.config, args.set, src.checkpoint)
        if Method(src.config.method).is_sparse:
            raise ConfigError(f"--checkpoint {src.checkpoint}: method={src.config.method} is a sparse-attention comparator; "
                              "it keeps every token, so there is no retained forward to time")
    start = os.getloadavg()
    rows = []
    for src in sources:
        rows += measure_source(src, args, lambda msg: print(msg, flush=True))
    end = os.getloadavg()
    t = sorted({r["length"] for r in rows})
    header = (f"retention bench --checkpoint: T {', '.join(map(str, t))}, B {', '.join(map(str, args.batch_sizes))}, "
              f"{args.threads} thread(s), {args.timing_batches} timed test batch(es) x {args.reps} reps\n"
              f"load average (1/5/15 min) {' / '.join(f'{v:.2f}' for v in start)} at the start, "
              f"{' / '.join(f'{v:.2f}' for v in end)} at the end; {os.cpu_count()} CPUs")
    files = write_outputs(rows, Path(args.out), header)
    print(header)
    print(markdown_table(pd.DataFrame(rows)))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
