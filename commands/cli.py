"""The ``retention`` command line: one parser for every command.

    retention train [--config FILE] [--print-config] [--resume RUN_ID|PATH] [group=option ...] [key=value ...]
    retention sweep | compare | evaluate | bench ...

Each command is the module ``commands.<name>`` with ``run(args) -> int`` (the exit code). The parser
lives here, and a command's module is imported only when that command runs, so ``--help`` and a
config error answer without loading Lightning, torch or MLflow. A bad config exits with code 2 and a
one-line error naming the key, before any model is built or data is read; so does bad data (a
:class:`conf.checks.DataError` naming the file, split, line and column) and a checkpoint that
``weights_only`` loading refuses (:mod:`commands.checkpoints`). ``retention train --help`` lists the
config groups and their options, read from conf/.

Adding a command: an ``<name>_arguments(parser)`` function and an entry in :data:`COMMANDS` here,
and a module ``commands/<name>.py`` with ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

from commands.quiet import silence_library_noise
from conf.checks import ConfigError, DataError
from conf.compose import config_groups

__all__ = ["main", "COMMANDS", "EXIT_CONFIG_ERROR", "train_epilog"]

EXIT_CONFIG_ERROR = 2


def train_epilog() -> str:
    """The end of ``retention train --help``: the config groups and their options, read from conf/
    (:func:`conf.compose.config_groups`), and where every key is documented."""
    groups = "\n".join(f"  {name}={'|'.join(options)}" for name, options in config_groups().items())
    return (
        "config groups (group=option loads conf/<group>/<option>.yaml; experiment= presets set several sections):\n"
        f"{groups}\n\n"
        "keys (key=value, e.g. budget.ratio=0.5 trainer.max_epochs=1): every key, its default and what it\n"
        "allows is documented in conf/schema.py (model, gate, budget, optim, trainer, logging) and\n"
        "conf/data_schema.py (data: one schema per data module); conf/config.yaml holds the defaults.\n"
        "--print-config shows the resolved config. A bad key or value exits with code 2 and one line."
    )


def batches_or_fraction(text: str) -> int | float:
    """Lightning's ``limit_*_batches`` convention: an integer is a number of batches (``1``: one batch),
    a number with a point a fraction of them (``1.0``: all)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML file merged over the defaults")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", metavar="RUN_ID|PATH",
                   help="continue a killed or failed run from its last.ckpt (an MLflow run id, a checkpoint file or "
                        "its folder), in the same MLflow run, with the run's own config.yaml; only "
                        "trainer.max_epochs, trainer.max_steps and logging.tracking_uri may be overridden")
    p.add_argument("overrides", nargs="*", help="group=option (e.g. model=minilm) or key=value (e.g. budget.ratio=0.5)")


def sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="sweep config: a path or the name of a conf/sweep/ file (default: default)")
    p.add_argument("--n-trials", type=int, help="trials this run adds to the study (study.n_trials)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds (study.timeout)")
    p.add_argument("--workers", type=int, help="worker processes on this machine sharing the study (study.workers)")
    p.add_argument("--storage", help="Optuna storage: an RDB URL (default: SQLite file ./optuna.db) or a *.log journal file (study.storage)")
    p.add_argument("--study-name", help="study to create or resume (study.name)")
    p.add_argument("--print-config", action="store_true", help="print the resolved sweep config and exit")
    p.add_argument("overrides", nargs="*", help="study.*/base.*/search_space.* change the sweep; any other key=value the trained config")


def compare_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="every run of this MLflow experiment")
    src.add_argument("--parent", help="a sweep's parent run id: its nested trial runs")
    src.add_argument("--runs", nargs="+", metavar="RUN_ID", help="these runs")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--filter", default="", help="MLflow search filter, e.g. \"metrics.`test/acc_hard` > 0.5 and params.`budget.ratio` < '0.4'\"")
    p.add_argument("--sort", help="table column to sort by (default: the plotted metric, best first)")
    p.add_argument("--ascending", action="store_true", help="sort ascending")
    p.add_argument("--params", nargs="+", help="param columns (default: a sweep's searched keys, else params that differ)")
    p.add_argument("--metrics", nargs="+", default=[], help="extra metric columns")
    p.add_argument("--out", default="compare", help="folder for runs.csv, runs.md and the PNG plots (default: ./compare)")


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-id", nargs="+", help="MLflow run id(s) of `retention train` runs")
    src.add_argument("--checkpoint", nargs="+", help="checkpoint file(s); the run's config.yaml must sit beside each")
    src.add_argument("--experiment", help="every finished run of this MLflow experiment that has a checkpoint")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.1, 0.3, 0.5], help="retention ratios rho in (0, 1]")
    p.add_argument("--methods", nargs="+", default=None,
                   help="selection methods (default: all of retention.baselines.SELECTORS)")
    p.add_argument("--out", default="evaluation", help="output folder (default ./evaluation)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--throughput-batches", type=int, default=3,
                   help="test batches timed (dense vs retained, interleaved) per row; 0 skips timing")
    p.add_argument("--limit-test-batches", type=batches_or_fraction, default=None,
                   help="evaluate on part of the test split: N batches, or a fraction such as 0.5")


def bench_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("trained checkpoints (speed against accuracy on the test split; commands/bench_trained.py)")
    which = src.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", nargs="+", help="checkpoint file(s) of `retention train`, config.yaml beside each")
    which.add_argument("--run-id", nargs="+", help="MLflow run id(s) of `retention train` runs (see --tracking-uri)")
    src.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                     help="key=value overrides of each checkpoint's config.yaml, e.g. data.seq_len=512 (an unknown key or a config group: exit 2)")
    src.add_argument("--timing-batches", type=int, default=3,
                     help="test batches (of --batch-sizes rows, at the data's own length) timed per checkpoint (default 3)")
    src.add_argument("--limit-test-batches", type=batches_or_fraction, default=None,
                     help="accuracy on part of the test split: N batches, or a fraction such as 0.5 (default: all of it)")
    p.add_argument("--backbone", default=None, help="minilm (default: packaged pretrained MiniLM-L6), random (sizes below), "
                   "or a Hugging Face name/path of a BERT-family encoder")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 512 1024 2048 4096)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="batch sizes (default 8; with --checkpoint: rows per timed test batch)")
    p.add_argument("--ratios", type=float, nargs="*", default=None,
                   help="budgets rho in (0, 1] (default 0.3 0.5; none when --flops is given)")
    p.add_argument("--gate-layers", type=int, nargs="+", default=None, help="gated layers (default 1: drop entering layer 1)")
    p.add_argument("--schedule", choices=("constant", "linear"), default=None,
                   help="per-gate ratios across several gated layers: constant (default), or linear (falling to rho at the last gate)")
    p.add_argument("--flops", type=float, nargs="+", default=None,
                   help="FLOPs budgets F in (0, 1]: the schedule's shape (at --shape-ratio) scaled to F of the dense FLOPs")
    p.add_argument("--shape-ratio", type=float, default=None, help="the ratio whose schedule --flops scales (default 0.3)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per configuration (default 10; 3 with --checkpoint)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up repetitions (default 2; 1 with --checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch.get_num_threads(); 1 with --checkpoint)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile every transformer layer (hooks stay eager)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="time replays of CUDA graphs, captured once per shape and budget (CUDA only)")
    p.add_argument("--sync-debug", choices=("off", "warn", "error"), default="off",
                   help="torch.cuda.set_sync_debug_mode around every timed forward: a host sync warns / fails (CUDA only)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory phases")
    p.add_argument("--train-max-length", type=int, default=None,
                   help="time dense vs gated training steps for lengths up to this (default 512; 0: never)")
    p.add_argument("--train-reps", type=int, default=None, help="timed training steps per path (default 5)")
    g = p.add_argument_group("random-init backbone (--backbone random; positions extended to the longest length)")
    g.add_argument("--arch", default="bert", help="bert, roberta, distilbert, xlm-roberta")
    g.add_argument("--layers", type=int, default=6)
    g.add_argument("--hidden", type=int, default=384)
    g.add_argument("--heads", type=int, default=12)
    g.add_argument("--intermediate", type=int, default=None, help="default 4 × hidden")
    g.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--quick", action="store_true", help="short run (T 128, 256; B 2; 3 reps; training step at T 128): under 2 minutes")
    p.add_argument("--out", default="bench_out", help="output folder (default ./bench_out)")
    p.add_argument("--mlflow", action="store_true", help="log the run (params, metrics per configuration, files) to MLflow")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="retention-bench", help="MLflow experiment name")


# command -> (one-line help, the function that adds its arguments)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "train": ("train, test and track one run", train_arguments),
    "sweep": ("Optuna sweep over the train config; every trial a nested MLflow run", sweep_arguments),
    "compare": ("table and plots of MLflow runs: an experiment, a sweep's parent run, or run ids", compare_arguments),
    "evaluate": ("evaluate trained runs: methods x budgets on the test split; table, CSV/Markdown, plots, MLflow artifacts", evaluate_arguments),
    "bench": ("measure full vs retained throughput, latency, peak memory, gate overhead and training step time; "
              "with --checkpoint/--run-id: speed-up against test accuracy of trained runs", bench_arguments),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retention", description="Adaptive Retention experiments.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments) in COMMANDS.items():
        extra = {"epilog": train_epilog(), "formatter_class": argparse.RawDescriptionHelpFormatter} if name == "train" else {}
        add_arguments(sub.add_parser(name, help=help_, description=help_, **extra))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command. A :class:`ConfigError` or :class:`DataError` it raises is one line on stderr
    and exit code 2; output cut short by a closed pipe (``--print-config | head -1``) ends quietly.
    Library noise (:mod:`commands.quiet`) is silenced first."""
    args = parser().parse_args(argv)
    silence_library_noise()
    try:
        code = importlib.import_module(f"commands.{args.command}").run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ConfigError as err:
        print(f"retention: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except DataError as err:
        print(f"retention: data error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except BrokenPipeError:
        # The reader has gone: point stdout at /dev/null so the interpreter's final flush does not
        # fail again (the recipe of Python's signal documentation), and end as a closed pipe does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
