"""Running one training: the MLflow logger, warm start, ``train`` (fit, test on the dense / soft /
retained paths, track) and its printed summary. Every command that trains (``retention train``,
a sweep's trials) goes through :func:`train`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import OmegaConf

from datamodules import build_datamodule
from lightning_modules import build_system

from .backbone_checks import check_config as check_config_and_files
from .checkpoints import load_checkpoint
from .device_checks import check_devices

__all__ = ["CONFIG_NEXT_TO_CHECKPOINT", "check_config", "check_run", "default_tracking_uri", "flatten_params",
           "format_summary", "make_logger", "train", "warm_start"]

CONFIG_NEXT_TO_CHECKPOINT = "config.yaml"


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
    """Load every tensor of checkpoint ``path`` whose name and shape match ``system``'s; print what was
    not loaded (nothing is skipped silently). Returns ``{"missing": [...], "unused": [...]}``."""
    state = load_checkpoint(path, "model.init_from")["state_dict"]
    adapt = getattr(system.encoder, "adapt_dense_state", None)  # a sparse comparator maps dense names onto its own
    if adapt is not None:
        state = adapt(state, prefix="encoder.backbone.")
    own = system.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = {"missing": sorted(set(own) - set(loadable)), "unused": sorted(set(state) - set(loadable))}
    system.load_state_dict(loadable, strict=False)
    print(f"warm start from {path}: {len(loadable)} of {len(own)} tensors loaded; "
          f"kept fresh: {report['missing'] or 'none'}; in the checkpoint but not used: {report['unused'] or 'none'}", flush=True)
    return report


def make_logger(cfg, run_id: str | None = None):
    """MLflow logger for ``cfg`` (a new run, or the existing ``run_id``), with the resolved config
    logged as flattened params and as a ``config.yaml`` artifact."""
    logger = MLFlowLogger(
        experiment_name=cfg.logging.experiment,
        run_name=cfg.logging.run_name,
        tracking_uri=default_tracking_uri(cfg.logging.tracking_uri),
        run_id=run_id,
    )
    logger.log_hyperparams(flatten_params(OmegaConf.to_container(cfg, resolve=True)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        OmegaConf.save(cfg, path, resolve=True)
        logger.experiment.log_artifact(logger.run_id, str(path))
    return logger


def train(cfg, callbacks: Sequence = (), logger=None, print_summary: bool = True) -> dict[str, object]:
    """Fit, test (dense / soft / retained) and track one run. Returns the summary.

    ``callbacks`` are added to the Trainer's (e.g. a pruning callback of a sweep); ``logger`` is
    an :class:`MLFlowLogger` to use instead of a new run (e.g. a sweep trial's nested run).
    The checkpoint monitors the system's primary metric on the hard path, ``val/<METRIC>_hard``.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    logger = logger if logger is not None else make_logger(cfg)
    run_id = logger.run_id

    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    if cfg.model.init_from:
        warm_start(system, cfg.model.init_from)
    metric = system.METRIC

    all_callbacks = [LearningRateMonitor(logging_interval="step"), *callbacks]
    ckpt = None
    if cfg.logging.save_checkpoint and not cfg.trainer.fast_dev_run:
        ckpt_dir = Path(cfg.logging.checkpoint_dir) / run_id
        ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best",
                               monitor=f"val/{metric}_hard", mode="max", save_top_k=1)
        all_callbacks.append(ckpt)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, ckpt_dir / CONFIG_NEXT_TO_CHECKPOINT, resolve=True)  # `retention evaluate --checkpoint`
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    trainer = L.Trainer(
        logger=logger,
        callbacks=all_callbacks,
        gradient_clip_val=cfg.optim.grad_clip or None,
        default_root_dir=cfg.logging.checkpoint_dir,
        enable_checkpointing=ckpt is not None,
        **trainer_kwargs,
    )
    trainer.fit(system, datamodule=dm)
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if best:
        logger.experiment.set_tag(run_id, "checkpoint_path", str(Path(best).resolve()))
    trainer.test(system, datamodule=dm, ckpt_path=best, verbose=False)

    m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    summary: dict[str, object] = {
        "run_id": run_id,
        "tracking_uri": default_tracking_uri(cfg.logging.tracking_uri),
        "checkpoint": best,
        "metric": metric,
        "metric_label": system.METRIC_LABEL,
        "dense": m.get(f"test/{metric}_dense"),
        "soft": m.get(f"test/{metric}_soft"),
        "retained": m.get(f"test/{metric}_hard"),
        "test_metrics": m,
        "ratio": cfg.budget.ratio,
        "tokens": cfg.budget.tokens,
        "kept": {layer: m.get(f"test/kept_fraction_l{layer}") for layer in system.encoder.gate_layers},
        "lambda": {layer: float(v) for layer, v in zip(system.encoder.gate_layers, system.lam.detach().cpu())},
    }
    if summary["dense"]:
        summary["retained_over_dense"] = summary["retained"] / summary["dense"]
        if trainer.is_global_zero:
            logger.log_metrics({"test/retained_over_dense": summary["retained_over_dense"]})
    if trainer.is_global_zero and print_summary:
        print(format_summary(summary), flush=True)
    return summary


def _number(v: float | None) -> str:
    """A metric for the summary; "-" for a path the run has not got (a sparse comparator has one)."""
    return "-" if v is None else f"{v:.4f}"


def format_summary(s: dict) -> str:
    budget = f"rho = {s['ratio']}" if s["ratio"] is not None else f"M = {s['tokens']}"
    label = s["metric_label"]
    rows = [
        ("MLflow run id", s["run_id"]),
        ("tracking URI", s["tracking_uri"]),
        ("checkpoint", s["checkpoint"] or "-"),
        (f"dense {label} (nothing dropped)", _number(s["dense"])),
        (f"soft-gate {label}", _number(s["soft"])),
        (f"retained {label} (top-M, {budget})", _number(s["retained"])),
    ]
    if "retained_over_dense" in s:
        rows.append(("retained / dense", f"{s['retained_over_dense']:.3f}"))
    for layer, kept in s["kept"].items():
        rows.append((f"achieved retention, layer {layer}", f"{kept:.4f}"))
    for layer, lam in s["lambda"].items():
        rows.append((f"final lambda, layer {layer}", f"{lam:.4f}"))
    width = max(len(r[0]) for r in rows)
    line = "-" * (width + 2 + max(len(str(r[1])) for r in rows))
    return "\n".join([line, *(f"{k:<{width}}  {v}" for k, v in rows), line])
