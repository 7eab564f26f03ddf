"""Running one training: the MLflow logger, warm start, ``train`` (fit, test on the dense / soft /
retained paths, track) and its printed summary. Every command that trains (``retention train``,
a sweep's trials) goes through :func:`train`; the run's statuses, ownership and resume are
:mod:`commands.run_state`'s."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import DummyLogger
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from datamodules import build_datamodule
from lightning_modules import build_system
from retention.baselines import selector_for
from retention.methods import Method

from .backbone_checks import check_config as check_config_and_files
from .checkpoints import load_checkpoint
from .device_checks import check_devices
from .run_state import (CONFIG_NEXT_TO_CHECKPOINT, LAST, TAG_CKPT_DIR, RngState, RunKilled, SharedRun, SignalStop, killed_by,
                        mark_ended, owner_tags, reap_orphan_runs, resume_target, run_name)
from .tracking_store import open_store

__all__ = ["BUDGET_TOLERANCE", "CONFIG_NEXT_TO_CHECKPOINT", "RunKilled", "check_config", "check_run", "default_tracking_uri",
           "flatten_params", "format_summary", "make_logger", "reap_orphan_runs", "resume_target", "train", "warm_start"]


# At the end of training every gated layer's expected retention ĝ_ℓ should be this close to ρ_ℓ: the
# model is evaluated keeping ρ_ℓ of the tokens, so it should have trained on about as many.
BUDGET_TOLERANCE = 0.05


def default_tracking_uri(configured: str | None) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else a SQLite database in the working directory
    (MLflow 3 rejects its old ``./mlruns`` file store)."""
    if configured:
        return configured
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def flatten_params(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = v
    return out


def check_run(cfg) -> None:
    """The checks before a run starts that need torch: the machine has the configured accelerator
    (:func:`commands.device_checks.check_devices`), and ``model.init_from`` loads with
    ``weights_only`` (:func:`commands.checkpoints.load_checkpoint`: a file that would run code is
    refused before any MLflow run exists)."""
    check_devices(cfg)
    if cfg.model.init_from:
        load_checkpoint(cfg.model.init_from, "model.init_from")


def check_config(cfg) -> None:
    """Every check before a run starts: the backbone's config and the data files
    (:func:`commands.backbone_checks.check_config`), then :func:`check_run`. Raises
    :class:`conf.schema.ConfigError` naming the key, or :class:`conf.checks.DataError` naming the file."""
    check_config_and_files(cfg)
    check_run(cfg)


def warm_start(system, path: str) -> dict[str, list[str]]:
    """Load every tensor of checkpoint ``path`` whose name and shape match ``system``'s, except the
    method's own state (the gates and the dual variables λ, λ₂: :meth:`RetentionSystem.dual_and_gate_parameters`),
    which starts as this run configures it (``gate.init_log_alpha``, ``budget.init_lambda``): a stage-2
    run from a dense checkpoint would otherwise inherit its λ = 0, and a fixed-λ ablation or LTP's
    fixed penalty would train with no penalty at all. Print what was not loaded (nothing is skipped
    silently). Returns ``{"missing": [...], "unused": [...]}``."""
    state = load_checkpoint(path, "model.init_from")["state_dict"]
    adapt = getattr(system.encoder, "adapt_dense_state", None)  # a sparse comparator maps dense names onto its own
    if adapt is not None:
        state = adapt(state, prefix="encoder.backbone.")
    own = system.state_dict()
    fresh = {id(p) for p in system.dual_and_gate_parameters()}
    method_state = {name for name, p in system.named_parameters() if id(p) in fresh}
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and k not in method_state}
    report = {"missing": sorted(set(own) - set(loadable)), "unused": sorted(set(state) - set(loadable))}
    system.load_state_dict(loadable, strict=False)
    print(f"warm start from {path}: {len(loadable)} of {len(own)} tensors loaded; "
          f"kept fresh: {report['missing'] or 'none'}; in the checkpoint but not used: {report['unused'] or 'none'}", flush=True)
    return report


def new_logger(cfg, run_id: str | None = None) -> MLFlowLogger:
    """An MLflow logger for ``cfg``: the existing run ``run_id``, or a new run named :func:`run_name`.
    Lazy: it creates the run when first used, so a Trainer can be built with it before. The store and
    the experiment are made first (:func:`commands.tracking_store.open_store`: MLFlowLogger opens the
    store when built, and two runs started at once on a fresh SQLite store raced there)."""
    uri = default_tracking_uri(cfg.logging.tracking_uri)
    open_store(uri, cfg.logging.experiment)
    return MLFlowLogger(experiment_name=cfg.logging.experiment, run_name=run_name(cfg), tracking_uri=uri, run_id=run_id)


def log_run_config(logger: MLFlowLogger, cfg) -> None:
    """The resolved config as flattened params and as a ``config.yaml`` artifact."""
    logger.log_hyperparams(flatten_params(OmegaConf.to_container(cfg, resolve=True)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_NEXT_TO_CHECKPOINT
        OmegaConf.save(cfg, path, resolve=True)
        logger.experiment.log_artifact(logger.run_id, str(path))


def make_logger(cfg, run_id: str | None = None) -> MLFlowLogger:
    """MLflow logger for ``cfg`` (a new run, or the existing ``run_id``), with the resolved config
    logged as flattened params and as a ``config.yaml`` artifact."""
    logger = new_logger(cfg, run_id)
    log_run_config(logger, cfg)
    return logger


class ConfigBesideCheckpoint(L.Callback):
    """Writes ``config.yaml`` into the checkpoint folder (``shared.folder``, a :class:`SharedRun`) when
    fitting starts (what ``retention evaluate --checkpoint`` and ``--resume PATH`` read), on global
    rank 0 only: after :class:`ModelCheckpoint`'s setup, so that its "directory exists and is not
    empty" warning does not fire on every new run."""

    def __init__(self, cfg, shared: SharedRun) -> None:
        self.cfg, self.shared = cfg, shared

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.shared.folder.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.cfg, self.shared.folder / CONFIG_NEXT_TO_CHECKPOINT, resolve=True)


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "-"


def train(cfg, callbacks: Sequence = (), logger=None, print_summary: bool = True, resume=None) -> dict[str, object]:
    """Fit, test (dense / soft / retained) and track one run. Returns the summary.

    Everything that can fail on the input runs before the MLflow run exists: the data module prepares
    and sets up its fit splits (files read), the system is built (backbone loaded), the warm start
    loads, the Trainer checks its arguments. Then the run is created (or, with ``logger``, used),
    tagged with its owner (:func:`commands.run_state.owner_tags`), and trained; an exception marks it
    FAILED and SIGINT / SIGTERM mark it KILLED (:func:`commands.run_state.mark_ended`; a ``logger``'s
    run only when killed), then the exception propagates. ``retention train`` first marks KILLED the runs that dead processes of this
    host left RUNNING (:func:`commands.run_state.reap_orphan_runs`).

    ``callbacks`` are added to the Trainer's (e.g. a pruning callback of a sweep); ``logger`` is
    an :class:`MLFlowLogger` to use instead of a new run (e.g. a sweep trial's nested run);
    ``resume`` (a :class:`commands.run_state.ResumeTarget`) continues that run from its checkpoint.
    Checkpoints (unless ``logging.save_checkpoints=false``): ``best.ckpt``, the best
    ``val/<METRIC>_hard`` (the system's primary metric on the hard path), and ``last.ckpt``, the full
    trainer state after the latest validation, in ``<logging.checkpoint_dir>/<run id>/``.

    Several processes (DDP, any launcher): only global rank 0 (``trainer.is_global_zero``, which the
    Trainer reads from torchrun's, SLURM's or Lightning's own environment variables) reaps orphans,
    creates or resumes the run, tags and logs it, writes ``config.yaml``, marks it FAILED / KILLED and
    prints the summary; the other ranks get a :class:`DummyLogger` and never open the tracking store.
    Every rank learns rank 0's run id and checkpoint folder from :class:`commands.run_state.SharedRun`.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    system = build_system(cfg, dm)
    if cfg.model.init_from and resume is None:
        warm_start(system, cfg.model.init_from)
    metric = system.METRIC

    own_run = logger is None
    tracking_uri = default_tracking_uri(cfg.logging.tracking_uri)
    shared = SharedRun()
    stop = SignalStop()
    all_callbacks = [shared, stop, LearningRateMonitor(logging_interval="step"), RngState(), *callbacks]
    ckpt = None
    if cfg.logging.save_checkpoints and not cfg.trainer.fast_dev_run:
        ckpt = ModelCheckpoint(filename="best", monitor=f"val/{metric}_hard", mode="max", save_top_k=1,
                               enable_version_counter=False)
        # last.ckpt at the end of every training epoch only, where a resume is exact (Lightning resumes
        # the data position at epoch boundaries; a mid-epoch validation does not write it)
        last = ModelCheckpoint(filename="last", monitor=None, save_top_k=1, save_on_train_epoch_end=True,
                               every_n_epochs=1, enable_version_counter=False)
        all_callbacks += [ckpt, last]
        shared.checkpoints = [ckpt, last]
        all_callbacks.append(ConfigBesideCheckpoint(cfg, shared))
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    trainer = L.Trainer(
        logger=logger if not own_run else False,  # an own run's logger is chosen below, once the rank is known
        callbacks=all_callbacks,
        gradient_clip_val=cfg.optim.grad_clip or None,
        default_root_dir=cfg.logging.checkpoint_dir,
        enable_checkpointing=ckpt is not None,
        **trainer_kwargs,
    )
    # The Trainer knows the global rank under every launcher (torchrun's RANK, SLURM_PROCID, Lightning's
    # NODE_RANK and LOCAL_RANK). Only rank 0 opens the tracking store; the others log nowhere.
    zero = trainer.is_global_zero
    if own_run:
        logger = new_logger(cfg, run_id=resume.run_id if resume is not None else None) if zero else DummyLogger()
        trainer.logger = logger
    if zero:
        if own_run:
            reap_orphan_runs(MlflowClient(tracking_uri))
        run_id = _open_run(cfg, logger, own_run, resume)
        shared.own(run_id, Path(cfg.logging.checkpoint_dir) / run_id if ckpt is not None else None)
        if ckpt is not None:
            logger.experiment.set_tag(run_id, TAG_CKPT_DIR, str(shared.folder.resolve()))
    try:
        with stop.raising(), warnings.catch_warnings():
            if resume is not None:  # the folder holds the run's own checkpoints: expected
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            summary = _fit_and_test(cfg, trainer, system, dm, logger, ckpt, resume, tracking_uri, shared)
    except BaseException as err:
        # a sweep trial: the caller records its failure or pruning; a rank > 0: rank 0 owns the run
        if (not own_run and killed_by(err) is None) or not zero:
            raise
        run_id, client = shared.run_id, logger.experiment
        status = mark_ended(client, run_id, err)
        folder = shared.folder
        if folder is not None and folder.is_dir() and not any(folder.glob("*.ckpt")):
            (folder / CONFIG_NEXT_TO_CHECKPOINT).unlink(missing_ok=True)  # no checkpoint to go with it
            if not any(folder.iterdir()):
                folder.rmdir()
        last = folder / LAST if folder is not None else None
        again = (f"; continue it with `retention train --resume {run_id}`" if last is not None and last.is_file()
                 else "")
        print(f"retention: run {run_id} marked {status} ({type(err).__name__}: {err}){again}", file=sys.stderr, flush=True)
        raise
    if trainer.is_global_zero and print_summary:
        print(format_summary(summary), flush=True)
    return summary


def _open_run(cfg, logger: MLFlowLogger, own_run: bool, resume) -> str:
    """Global rank 0: create the run of ``logger`` (or mark the resumed one RUNNING again), log the
    config of a new own run, tag the owner. Returns the run id."""
    client = logger.experiment  # creates the run of a new logger
    run_id = logger.run_id
    if resume is not None:
        client.update_run(run_id, status="RUNNING")
        for stale in {"retention.killed_reason", "retention.error"} & set(client.get_run(run_id).data.tags):
            client.delete_tag(run_id, stale)  # how it ended before; it runs again
        client.set_tag(run_id, "retention.resumed_from", str(resume.checkpoint.resolve()))
    elif own_run:
        log_run_config(logger, cfg)
    for key, value in owner_tags().items():
        client.set_tag(run_id, key, value)
    return run_id


def _fit_and_test(cfg, trainer, system, dm, logger, ckpt, resume, tracking_uri, shared) -> dict[str, object]:
    metric = system.METRIC
    trainer.fit(system, datamodule=dm, ckpt_path=str(resume.checkpoint) if resume is not None else None)
    run_id = shared.run_id  # every rank's, since the fit's setup (SharedRun)
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if best and trainer.is_global_zero:
        logger.experiment.set_tag(run_id, "checkpoint_path", str(Path(best).resolve()))
    trainer.test(system, datamodule=dm, ckpt_path=best, verbose=False)

    m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    summary: dict[str, object] = {
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "checkpoint": best,
        "checkpoint_size": (f"best {_megabytes(Path(best))}, last {_megabytes(Path(ckpt.dirpath) / 'last.ckpt')}"
                            if best else None),
        "metric": metric,
        "metric_label": system.METRIC_LABEL,
        "dense": m.get(f"test/{metric}_dense"),
        "soft": m.get(f"test/{metric}_soft"),
        "retained": m.get(f"test/{metric}_hard"),
        "test_metrics": m,
        "ratio": cfg.budget.ratio,
        "tokens": cfg.budget.tokens,
        "flops": cfg.budget.get("flops"),
        "budget_form": (cfg.budget.constraint, cfg.budget.lagrangian),
        "flops_fraction": m.get("test/flops_fraction"),  # FLOPs budgets: the hard path's, mean over test examples
        "kept": {layer: m.get(f"test/kept_fraction_l{layer}") for layer in system.encoder.gate_layers},
        "lambda": {layer: float(v) for layer, v in zip(system.encoder.gate_layers, system.lam.detach().cpu())},
    }
    if getattr(system, "flops_budget", None) is not None:  # λ's last entry: the FLOPs constraint's
        summary["lambda_flops"] = float(system.lam[-1].detach())
    summary["needle_kept"] = m.get("test/needle_kept_hard")
    summary["budget_gap"] = budget_gaps(system)
    if system.method == Method.gate and trainer.world_size == 1:
        random = random_selection(cfg, system, dm)
        summary.update(random=random.get(f"test/{metric}_hard"), random_needle_kept=random.get("test/needle_kept_hard"))
        logger.log_metrics({f"{k}_random": v for k, v in random.items() if k in (f"test/{metric}_hard", "test/needle_kept_hard")})
    if summary["dense"]:
        summary["retained_over_dense"] = summary["retained"] / summary["dense"]
        if trainer.is_global_zero:
            logger.log_metrics({"test/retained_over_dense": summary["retained_over_dense"]})
    return summary


def budget_gaps(system) -> dict[int, float]:
    """ĝ_ℓ − ρ_ℓ per gated layer at the end of training, both over the sequences of the last gated steps
    (:attr:`lightning_modules.system.RetentionSystem.recent_expected_retention`; empty when no step gated)."""
    achieved, targets = system.recent_expected_retention, system.recent_budget_targets
    if achieved is None:
        return {}
    return {layer: float(a) - float(t) for layer, a, t in zip(system.encoder.gate_layers, achieved, targets)}


def random_selection(cfg, system, dm) -> dict[str, float]:
    """The test metrics of the hard path of the same trained model with random selection at the same
    budget (:class:`retention.baselines.RandomSelector`, seeded with ``cfg.seed``), on a Trainer of its
    own without a logger, so the run's test metrics stay those of its own selection."""
    own_selector, own_paths = system.selector, system.eval_paths
    system.selector, system.eval_paths = selector_for(Method.random, seed=cfg.seed), ("hard",)
    try:
        tester = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                           accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                           limit_test_batches=cfg.trainer.limit_test_batches)
        tester.test(system, datamodule=dm, verbose=False)
        return {k: float(v) for k, v in tester.callback_metrics.items() if k.startswith("test/")}
    finally:
        system.selector, system.eval_paths = own_selector, own_paths


def _number(v: float | None) -> str:
    """A metric for the summary; "-" for a path the run has not got (a sparse comparator has one)."""
    return "-" if v is None else f"{v:.4f}"


def format_summary(s: dict) -> str:
    """The run's printed summary: the test results (dense, soft, retained; random selection on the same
    model and how often the needle survived, when the run has them), then where the run is and how
    close training came to its budget, with one warning line per layer whose |ĝ − ρ| exceeds
    :data:`BUDGET_TOLERANCE`."""
    budget = f"rho = {s['ratio']}" if s["ratio"] is not None else f"M = {s['tokens']}"
    if s.get("flops") is not None:
        budget = f"FLOPs <= {s['flops']} of dense"
    label = s["metric_label"]

    def kept(rate: float | None) -> str:
        return "" if rate is None else f"needle kept in {100 * rate:.1f} % of test sequences"

    results = [
        (f"dense {label} (nothing dropped)", _number(s["dense"]), ""),
        (f"soft-gate {label}", _number(s["soft"]), ""),
        (f"retained {label} (top-M, {budget})", _number(s["retained"]), kept(s.get("needle_kept"))),
    ]
    if s.get("random") is not None:
        results.append((f"random selection {label} (same model, {budget})", _number(s["random"]), kept(s.get("random_needle_kept"))))
    if "retained_over_dense" in s:
        random_ratio = (f"random / dense {s['random'] / s['dense']:.3f}" if s.get("random") is not None and s["dense"]
                        else "")
        results.append(("retained / dense", f"{s['retained_over_dense']:.3f}", random_ratio))
    details = [
        ("MLflow run id", s["run_id"]),
        ("tracking URI", s["tracking_uri"]),
        ("checkpoint", s["checkpoint"] or "-"),
        ("checkpoint size", s.get("checkpoint_size") or "-"),
    ]
    for layer, kept_fraction in s["kept"].items():
        details.append((f"achieved retention, layer {layer}", f"{kept_fraction:.4f}"))
    if s.get("flops_fraction") is not None:
        details.append(("achieved FLOPs fraction (hard path, mean)", f"{s['flops_fraction']:.4f}"))
    for layer, lam in s["lambda"].items():
        details.append((f"final lambda, layer {layer}", f"{lam:.4f}"))
    if s.get("lambda_flops") is not None:
        details.append(("final lambda, FLOPs", f"{s['lambda_flops']:.4f}"))
    gaps = s.get("budget_gap") or {}
    for layer, gap in gaps.items():
        details.append((f"end of training |g-hat - rho|, layer {layer}", f"{abs(gap):.4f}"))
    width = max(len(r[0]) for r in [*results, *details])
    value_width = max(len(r[1]) for r in results)
    lines = [f"{k:<{width}}  {v:<{value_width}}  {note}".rstrip() for k, v, note in results]
    lines += [f"{k:<{width}}  {v}" for k, v in details]
    rule = "-" * max(len(line) for line in lines)
    out = [rule, *lines[: len(results)], rule, *lines[len(results):], rule]
    above = ", ".join(f"layer {layer} {gap:+.3f}" for layer, gap in gaps.items() if gap > BUDGET_TOLERANCE)
    below = ", ".join(f"layer {layer} {gap:+.3f}" for layer, gap in gaps.items() if gap < -BUDGET_TOLERANCE)
    if above:
        out.append(f"warning: training ended with g-hat - rho > {BUDGET_TOLERANCE} ({above}): the model trained on more "
                   f"tokens than evaluation keeps; give the gates more steps (budget.dense_fraction, "
                   f"budget.warmup_fraction, trainer.max_epochs) or a larger optim.gate_lr / optim.dual_lr")
    if below:
        if s.get("budget_form") == ("equality", "augmented"):  # the form that holds g-hat at rho, still below
            hint = ("the gates overshot below rho and lambda had not brought them back when training ended; give "
                    "them more steps (trainer.max_epochs) or a smaller optim.gate_lr")
        else:
            hint = ("with budget.constraint=inequality g-hat <= rho holds and lambda stops pushing; "
                    "budget.constraint=equality budget.lagrangian=augmented holds g-hat at rho")
        out.append(f"warning: training ended with g-hat - rho < -{BUDGET_TOLERANCE} ({below}): the gates closed below "
                   f"the budget ({hint}); evaluation keeps more tokens than training did")
    return "\n".join(out)
