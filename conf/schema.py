"""Structured schema of the config tree, and the range checks that run before any work starts.

OmegaConf's structured mode rejects unknown keys and wrong types; :func:`validate` adds the
ranges. Every error names the dotted key and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from retention.methods import Method

__all__ = ["Config", "ConfigError", "validate"]

class ConfigError(ValueError):
    """A bad config value; the message names the key and the allowed range."""

@dataclass
class ModelConfig:
    backbone: str = "random"  # "random", "minilm", or any HF BERT-family name / local path
    arch: str = "bert"  # for backbone=random: bert | roberta | distilbert | xlm-roberta; bart | t5 (summarization)
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 2
    intermediate_size: int = 128
    max_positions: int = 0  # 0: data.seq_len
    attn_implementation: str = "sdpa"
    dropout: float = 0.1  # classifier-head dropout
    num_labels: int = 0  # 0: taken from the data module
    # A checkpoint of a run whose weights start this one (warm start: every tensor whose name and
    # shape match is loaded; what is not is listed). None: fresh weights.
    init_from: Optional[str] = None

@dataclass
class GateConfig:
    layers: list[int] = field(default_factory=lambda: [1])
    hidden: int = 0  # 0: d/2
    context: str = "mean"  # mean | running | none
    running_decay: float = 0.9
    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    init_log_alpha: float = 2.0
    protect_special_tokens: bool = True
    ltp_temperature: float = 0.1  # method=ltp: log α = (s·N − θ)/τ on relative attention received
    relaxation: str = "hard_concrete"  # hard_concrete | sigmoid (ablation: no relaxation) | straight_through

@dataclass
class BudgetConfig:
    ratio: Optional[float] = 0.3
    tokens: Optional[int] = None
    schedule: str = "constant"  # constant | linear
    dense_steps: int = 0  # first train the task densely (gates open, λ term × 0) for these steps
    warmup_steps: int = 0  # then anneal the training target from 1 to rho over these steps
    inference: str = "top_m"  # top_m (exact M) | threshold (ablation: keep P(kept) >= 1/2)
    init_lambda: float = 0.0  # λ's initial value (with optim.dual_lr=0: the fixed-λ penalty ablation)

@dataclass
class OptimConfig:
    lr: float = 1e-3  # backbone and head
    gate_lr: float = 1e-2
    dual_lr: float = 1e-2  # η, the dual ascent step of λ
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "linear"  # linear | cosine | constant (warm-up then shape; λ's lr never changes)
    warmup_steps: int = 50
    grad_clip: float = 1.0  # 0 disables; clips backbone and gate only

@dataclass
class DataConfig:
    name: str = "needle"
    seq_len: int = 512
    min_seq_len: int = 0  # 0: = seq_len (no padding); smaller: lengths vary, batches are padded
    vocab_size: int = 128
    num_classes: int = 4
    num_needles: int = 1
    tokens_per_class: int = 4
    train_size: int = 4096
    val_size: int = 512
    test_size: int = 1024
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    # Hugging Face datasets (datamodules/hf.py). None: the data module's own default (its public
    # dataset name, its column names, the backbone's tokenizer). seq_len is the maximum length.
    path: Optional[str] = None  # load_dataset(path, subset); e.g. glue
    subset: Optional[str] = None  # the dataset's config name; e.g. sst2
    data_files: Any = None  # local CSV/JSON/JSONL/Parquet: a file, a list, or {split: file(s)}
    cache_dir: Optional[str] = None  # None: $HF_DATASETS_CACHE (tokenized splits under <dir>/retention)
    train_split: str = "train"
    val_split: Optional[str] = "validation"  # missing: carved from train (val_fraction, seed)
    test_split: Optional[str] = "test"  # missing or unlabeled: validation becomes test
    text_column: Optional[str] = None
    label_column: Optional[str] = None
    labels: Optional[list[str]] = None  # the label set; None: fixed by the dataset, else from train
    tokenizer: Optional[str] = None  # None: the backbone's; for backbone=random the packaged MiniLM's
    truncation: str = "head"  # head | tail | sliding_window
    stride: int = 128  # sliding_window: tokens shared by consecutive windows
    val_fraction: float = 0.1
    on_invalid: str = "error"  # error | skip (skips bad examples and reports the count)
    max_answer_tokens: int = 30  # extractive QA: longest predicted answer span, in tokens
    target_len: int = 256  # summarization: target summary tokens (also the generation length)
    num_beams: int = 1  # summarization: beam search width (1: greedy)
    # Synthetic suite (datamodules/synthetic.py): key-value retrieval, associative recall, ListOps.
    num_keys: int = 32  # kv_retrieval, mqar: distinct key tokens
    num_pairs: int = 4  # kv_retrieval, mqar: key-value pairs hidden in each sequence
    num_queries: int = 4  # mqar: queries before [SEP]
    max_depth: int = 10  # listops: nesting depth (LRA: 10)
    max_args: int = 10  # listops: arguments per operator (LRA: 10)

@dataclass
class TrainerConfig:
    max_epochs: int = 2
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    log_every_n_steps: int = 10
    # As in Lightning: an int counts batches, a float in (0, 1] is a fraction of the epoch (Any, so that
    # ``trainer.limit_train_batches=20`` stays the int 20 instead of becoming the fraction-looking 20.0).
    val_check_interval: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    enable_progress_bar: bool = True
    deterministic: bool = False
    fast_dev_run: bool = False

@dataclass
class LoggingConfig:
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "adaptive-retention"
    run_name: Optional[str] = None
    checkpoint_dir: str = "checkpoints"
    save_checkpoint: bool = True

@dataclass
class Config:
    seed: int = 0
    # What the run trains and how it selects tokens (retention.methods.Method): gate (ours), a heuristic
    # selector (the backbone trains densely and the selector picks the tokens), ltp, or a sparse comparator.
    method: Method = Method.gate
    # Which ablation of our method this run is (set by the conf/ablation/<name>.yaml presets, which
    # also set the switches it stands for); "none" for the method as designed.
    ablation: str = "none"
    model: ModelConfig = field(default_factory=ModelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

ABLATIONS = ("none", "no_relaxation", "straight_through", "fixed_lambda", "threshold_inference", "no_context")

_Check = tuple[str, Callable[[Any], bool], str]

_CHECKS: list[_Check] = [
    ("budget.ratio", lambda v: v is None or 0.0 < v <= 1.0, "(0, 1]"),
    ("budget.tokens", lambda v: v is None or v >= 1, ">= 1"),
    ("budget.schedule", lambda v: v in ("constant", "linear"), "one of constant, linear"),
    ("budget.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("budget.dense_steps", lambda v: v >= 0, ">= 0"),
    ("gate.beta", lambda v: v > 0, "> 0"),
    ("gate.gamma", lambda v: v < 0, "< 0"),
    ("gate.zeta", lambda v: v > 1, "> 1"),
    ("gate.hidden", lambda v: v >= 0, ">= 0 (0 means d/2)"),
    ("gate.context", lambda v: v in ("mean", "running", "none"), "one of mean, running, none"),
    ("gate.running_decay", lambda v: 0.0 <= v < 1.0, "[0, 1)"),
    ("gate.layers", lambda v: len(v) > 0, "a non-empty list of layer indices"),
    ("gate.relaxation", lambda v: v in ("hard_concrete", "sigmoid", "straight_through"), "one of hard_concrete, sigmoid, straight_through"),
    ("budget.inference", lambda v: v in ("top_m", "threshold"), "one of top_m, threshold"),
    ("budget.init_lambda", lambda v: v >= 0, ">= 0"),
    ("gate.ltp_temperature", lambda v: v > 0, "> 0"),
    ("ablation", lambda v: v in ABLATIONS, "one of " + ", ".join(ABLATIONS)),
    ("optim.lr", lambda v: v >= 0, ">= 0"),
    ("optim.gate_lr", lambda v: v >= 0, ">= 0"),
    ("optim.dual_lr", lambda v: v >= 0, ">= 0"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.betas", lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "two values in [0, 1)"),
    ("optim.scheduler", lambda v: v in ("linear", "cosine", "constant"), "one of linear, cosine, constant"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optim.grad_clip", lambda v: v >= 0, ">= 0 (0 disables)"),
    ("model.arch", lambda v: v in ("bert", "distilbert", "roberta", "xlm-roberta", "bart", "t5"), "one of bert, distilbert, roberta, xlm-roberta, bart, t5 (retention.encoder.SUPPORTED_MODEL_TYPES; bart and t5 for summarization)"),
    ("model.hidden_size", lambda v: v >= 1, ">= 1"),
    ("model.num_layers", lambda v: v >= 1, ">= 1"),
    ("model.num_heads", lambda v: v >= 1, ">= 1"),
    ("model.intermediate_size", lambda v: v >= 1, ">= 1"),
    ("model.max_positions", lambda v: v >= 0, ">= 0 (0 means data.seq_len)"),
    ("model.attn_implementation", lambda v: v in ("sdpa", "eager"), "one of sdpa, eager"),
    ("model.dropout", lambda v: 0.0 <= v < 1.0, "[0, 1)"),
    ("model.num_labels", lambda v: v >= 0, ">= 0 (0 means from the data)"),
    ("model.init_from", lambda v: v is None or Path(v).is_file(), "null or an existing checkpoint file"),
    ("data.seq_len", lambda v: v >= 8, ">= 8"),
    ("data.min_seq_len", lambda v: v >= 0, ">= 0"),
    ("data.num_classes", lambda v: v >= 2, ">= 2"),
    ("data.num_needles", lambda v: v >= 1, ">= 1"),
    ("data.tokens_per_class", lambda v: v >= 1, ">= 1"),
    ("data.train_size", lambda v: v >= 1, ">= 1"),
    ("data.val_size", lambda v: v >= 1, ">= 1"),
    ("data.test_size", lambda v: v >= 1, ">= 1"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    ("data.truncation", lambda v: v in ("head", "tail", "sliding_window"), "one of head, tail, sliding_window"),
    ("data.stride", lambda v: v >= 0, ">= 0"),
    ("data.val_fraction", lambda v: 0.0 < v < 1.0, "(0, 1)"),
    ("data.on_invalid", lambda v: v in ("error", "skip"), "one of error, skip"),
    ("data.max_answer_tokens", lambda v: v >= 1, ">= 1"),
    ("data.target_len", lambda v: v >= 1, ">= 1"),
    ("data.num_beams", lambda v: v >= 1, ">= 1"),
    ("data.num_keys", lambda v: v >= 1, ">= 1"),
    ("data.num_pairs", lambda v: v >= 1, ">= 1"),
    ("data.num_queries", lambda v: v >= 1, ">= 1"),
    ("data.max_depth", lambda v: v >= 1, ">= 1"),
    ("data.max_args", lambda v: v >= 2, ">= 2"),
    ("trainer.max_epochs", lambda v: v >= 1 or v == -1, ">= 1 (or -1)"),
    ("trainer.log_every_n_steps", lambda v: v >= 1, ">= 1"),
    ("trainer.num_nodes", lambda v: v >= 1, ">= 1"),
    *((f"trainer.{k}", lambda v, lo=lo: _batches_or_fraction(v, lo),
       f"null, an int >= {lo} (batches) or a float in (0, 1] (fraction)")
      for k, lo in (("val_check_interval", 1), ("limit_train_batches", 0), ("limit_val_batches", 0),
                    ("limit_test_batches", 0))),
]

def _batches_or_fraction(value: Any, lowest_int: int) -> bool:
    """Lightning's convention for ``limit_*_batches`` / ``val_check_interval``: int = batches, float = fraction."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= lowest_int
    return isinstance(value, float) and 0.0 < value <= 1.0

def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)

def validate(cfg: DictConfig, num_backbone_layers: int | None = None) -> None:
    """Raise :class:`ConfigError` for the first out-of-range value, naming the key and the allowed range.

    ``num_backbone_layers`` (when known) bounds ``gate.layers``.
    """
    for key, ok, allowed in _CHECKS:
        value = _get(cfg, key)
        if isinstance(value, float) and math.isnan(value) or not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range; allowed: {allowed}")
    if (cfg.budget.ratio is None) == (cfg.budget.tokens is None):
        raise ConfigError(
            f"budget.ratio={cfg.budget.ratio!r} and budget.tokens={cfg.budget.tokens!r}: set exactly one (the other to null)"
        )
    if cfg.data.min_seq_len > cfg.data.seq_len:
        raise ConfigError(f"data.min_seq_len={cfg.data.min_seq_len} is out of range; allowed: <= data.seq_len ({cfg.data.seq_len})")
    if cfg.data.truncation == "sliding_window" and not cfg.data.stride < cfg.data.seq_len // 2:
        raise ConfigError(f"data.stride={cfg.data.stride} is out of range; allowed: < data.seq_len // 2 ({cfg.data.seq_len // 2}) with sliding_window")
    if num_backbone_layers is not None:
        for i in cfg.gate.layers:
            if not 0 <= i < num_backbone_layers:
                raise ConfigError(
                    f"gate.layers contains {i}, out of range; allowed: 0..{num_backbone_layers - 1} "
                    f"(the backbone has {num_backbone_layers} layers)"
                )
    if len(set(cfg.gate.layers)) != len(cfg.gate.layers):
        raise ConfigError(f"gate.layers={list(cfg.gate.layers)} has duplicates; allowed: distinct layer indices")

