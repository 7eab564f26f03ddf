"""Structured schema of the config tree, and the checks that run before any work starts.

OmegaConf's structured mode rejects unknown keys, wrong types and choices outside their Enum (every
choice field is a :class:`conf.checks.Choice` Enum, typed by member name: ``gate.context=running``).
Ranges are declared beside their fields (``metadata=above(0)``) and :func:`validate` checks them all
in one loop. Every error names the dotted key and what is allowed. The ``data`` section's schema is
the selected module's (:mod:`conf.data_schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from conf.checks import Choice, ConfigError, at_least, above, below, checks_of, satisfies, within
from conf.data_schema import DATA_SCHEMAS, DataConfig, NeedleDataConfig
from retention.methods import Method

__all__ = ["Config", "ConfigError", "validate", "Method", "ABLATIONS", "ARCHS", "SEQ2SEQ_ARCHS", "PRECISIONS",
           "STRATEGIES", "ACCELERATORS", "Ablation", "Context",
           "Relaxation", "Schedule", "Inference", "Scheduler", "AttnImplementation"]

# model.arch for backbone=random: retention.encoder.SUPPORTED_MODEL_TYPES. A string, not an Enum:
# OmegaConf reads an Enum by member name, and "xlm-roberta" cannot be one.
ARCHS = ("bert", "distilbert", "roberta", "xlm-roberta", "bart", "t5")
SEQ2SEQ_ARCHS = ("bart", "t5")  # the encoder–decoders (retention.encoder.SEQ2SEQ_MODEL_TYPES)

# What Lightning 2.6's Trainer accepts, copied here because conf/ imports no Lightning (config errors
# answer before torch loads); tests/test_cli.py checks them against Lightning's own lists: the
# ``precision`` Literals of ``Trainer.__init__`` (strings; an int like 16 arrives as the string "16"),
# ``StrategyRegistry.available_strategies()`` and ``AcceleratorRegistry.available_accelerators()``
# (plus "auto", and "gpu": CUDA or MPS, whichever the machine has).
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_false",
              "ddp_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_false",
              "ddp_spawn_find_unused_parameters_true", "ddp_fork_find_unused_parameters_false",
              "ddp_fork_find_unused_parameters_true", "ddp_notebook_find_unused_parameters_false",
              "ddp_notebook_find_unused_parameters_true", "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2",
              "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
              "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload", "single_device", "single_xla",
              "xla_debug", "xla", "single_tpu")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")


def _one_of(values: tuple[str, ...]) -> dict:
    return satisfies(lambda v: v in values, "one of " + ", ".join(values))


class Context(Choice):
    """The scorer's context vector: the masked mean of the layer input, a running (causal) mean, or none."""

    mean = "mean"
    running = "running"
    none = "none"


class Relaxation(Choice):
    """The gate relaxation: Hard-Concrete (Louizos et al. 2018), plain sigmoid (ablation: no
    relaxation), or straight-through binary gates."""

    hard_concrete = "hard_concrete"
    sigmoid = "sigmoid"
    straight_through = "straight_through"


class Constraint(Choice):
    """The budget constraint's form: ĝ_ℓ ≤ ρ_ℓ with λ_ℓ ≥ 0 (the paper's, λ projected onto ≥ 0), or
    ĝ_ℓ = ρ_ℓ with λ_ℓ unconstrained in sign (CoFiPruning's Lagrangian, Xia et al., ACL 2022), which
    also pushes ĝ_ℓ up when it falls below ρ_ℓ."""

    inequality = "inequality"
    equality = "equality"


class Lagrangian(Choice):
    """The budget term: the paper's λ_ℓ(ĝ_ℓ − ρ_ℓ), or CoFiPruning's augmented Lagrangian (Xia et al.,
    ACL 2022) that adds λ₂_ℓ(ĝ_ℓ − ρ_ℓ)², λ₂ ascended as λ (retention.budget.lagrangian_term)."""

    linear = "linear"
    augmented = "augmented"


class DualStep(Choice):
    """How λ (and λ₂) take their ascent step of size η = ``optim.dual_lr``: AdamW's normalised step
    (about η a step whatever the violation), or the paper's plain gradient ascent
    λ ← λ + η(ĝ − ρ) (retention.budget.dual_ascent), whose step is proportional to the violation."""

    adam = "adam"
    sgd = "sgd"


class Schedule(Choice):
    """The per-layer budget across gated layers: the same ρ everywhere, or linearly decreasing."""

    constant = "constant"
    linear = "linear"


class Inference(Choice):
    """Selection at inference: exactly the top M (ours), or P(kept) >= 1/2 (ablation)."""

    top_m = "top_m"
    threshold = "threshold"


class Scheduler(Choice):
    """Learning-rate shape after the warm-up (λ's lr never changes)."""

    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class AttnImplementation(Choice):
    sdpa = "sdpa"
    eager = "eager"


class Ablation(Choice):
    """Which ablation of our method a run is (set by conf/ablation/<name>.yaml with its switches)."""

    none = "none"
    no_relaxation = "no_relaxation"
    straight_through = "straight_through"
    fixed_lambda = "fixed_lambda"
    threshold_inference = "threshold_inference"
    no_context = "no_context"
    ranking_distill = "ranking_distill"


ABLATIONS = tuple(a.value for a in Ablation)


def _batches_or_fraction(lowest_int: int) -> dict:
    """Lightning's convention for ``limit_*_batches`` / ``val_check_interval``: int = batches, float = fraction."""

    def ok(value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return value >= lowest_int
        return isinstance(value, float) and 0.0 < value <= 1.0

    return satisfies(ok, f"null, an int >= {lowest_int} (batches) or a float in (0, 1] (fraction)")


@dataclass
class ModelConfig:
    backbone: str = "random"  # "random", "minilm", or any HF BERT-family name / local path
    # for backbone=random (bart and t5 for summarization)
    arch: str = field(default="bert", metadata=satisfies(
        lambda v: v in ARCHS, "one of " + ", ".join(ARCHS) + " (retention.encoder.SUPPORTED_MODEL_TYPES; bart and t5 for summarization)"))
    hidden_size: int = field(default=64, metadata=at_least(1))
    num_layers: int = field(default=4, metadata=at_least(1))
    num_heads: int = field(default=2, metadata=at_least(1))
    intermediate_size: int = field(default=128, metadata=at_least(1))
    max_positions: int = field(default=0, metadata=at_least(0, "0 means data.seq_len"))
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    dropout: float = field(default=0.1, metadata=within(0.0, 1.0, hi_open=True))  # classifier-head dropout
    num_labels: int = field(default=0, metadata=at_least(0, "0 means from the data"))
    # A checkpoint of a run whose weights start this one (warm start: every tensor whose name and
    # shape match is loaded; what is not is listed). None: fresh weights.
    init_from: Optional[str] = field(default=None, metadata=satisfies(
        lambda v: Path(v).is_file(), "null or an existing checkpoint file"))


@dataclass
class GateConfig:
    layers: list[int] = field(default_factory=lambda: [1], metadata=satisfies(
        lambda v: len(v) > 0, "a non-empty list of layer indices"))
    hidden: int = field(default=0, metadata=at_least(0, "0 means d/2"))
    context: Context = Context.mean
    running_decay: float = field(default=0.9, metadata=within(0.0, 1.0, hi_open=True))
    beta: float = field(default=2.0 / 3.0, metadata=above(0))
    gamma: float = field(default=-0.1, metadata=below(0))
    zeta: float = field(default=1.1, metadata=above(1))
    init_log_alpha: float = 2.0
    # true: each gate starts where P(kept) = its share of the budget at data.seq_len tokens (the
    # relaxation's inverse law; RetentionEncoder.start_at_budget), instead of log alpha = init_log_alpha
    start_at_budget: bool = False
    protect_special_tokens: bool = True
    # method=ltp: log α = (s·N − θ)/τ on relative attention received
    ltp_temperature: float = field(default=0.1, metadata=above(0))
    relaxation: Relaxation = Relaxation.hard_concrete


@dataclass
class BudgetConfig:
    ratio: Optional[float] = field(default=0.3, metadata=within(0.0, 1.0, lo_open=True))
    tokens: Optional[int] = field(default=None, metadata=at_least(1))
    schedule: Schedule = Schedule.constant
    # first train the task densely (gates open, λ term × 0) for this fraction of the fit's optimizer steps
    dense_fraction: float = field(default=0.0, metadata=within(0.0, 1.0))
    # then anneal the training target from 1 to rho over this fraction of them (dense + warm-up <= 1)
    warmup_fraction: float = field(default=0.0, metadata=within(0.0, 1.0))
    # step counts that replace the fractions when set (null: the fraction); when the fit starts, the
    # two must fit in its total steps, else a ConfigError
    dense_steps: Optional[int] = field(default=None, metadata=at_least(0))
    warmup_steps: Optional[int] = field(default=None, metadata=at_least(0))
    inference: Inference = Inference.top_m
    # inequality: g-hat <= rho, lambda projected onto >= 0 (the paper); equality: g-hat = rho, lambda any sign
    constraint: Constraint = Constraint.inequality
    # linear: lambda (g-hat - rho) (the paper); augmented: + lambda2 (g-hat - rho)^2 with lambda2 >= 0 ascended
    # too (CoFiPruning): a restoring force proportional to the violation that damps lambda's overshoot
    lagrangian: Lagrangian = Lagrangian.linear
    # λ's initial value (with optim.dual_lr=0: the fixed-λ penalty ablation)
    init_lambda: float = field(default=0.0, metadata=at_least(0))
    # λ₂'s initial value under budget.lagrangian=augmented: the quadratic term's pull 2·λ₂·(ĝ − ρ) back to
    # ρ acts from the first gated step instead of after λ₂ has grown (it grows by its ascent only)
    init_lambda2: float = field(default=0.0, metadata=at_least(0))
    # a compute budget: the retained forward's FLOPs at most this fraction of the dense forward's
    # (retention/flops.py); budget.ratio and budget.schedule then give the per-gate ratios' shape only
    flops: Optional[float] = field(default=None, metadata=within(0.0, 1.0, lo_open=True))


@dataclass
class DistillConfig:
    # ranking distillation (ToP, Li et al., KDD 2023): every gate's log α learns the dense forward's
    # final-layer token ranking (attention received), a listwise KL added to the loss on gated steps
    ranking: bool = False
    weight: float = field(default=1.0, metadata=at_least(0))


@dataclass
class OptimConfig:
    lr: float = field(default=1e-3, metadata=at_least(0))  # backbone and head
    gate_lr: float = field(default=1e-2, metadata=at_least(0))
    dual_lr: float = field(default=1e-2, metadata=at_least(0))  # η, the dual ascent step of λ
    dual_step: DualStep = DualStep.adam  # AdamW's normalised step, or the paper's λ ← λ + η(ĝ − ρ)
    weight_decay: float = field(default=0.01, metadata=at_least(0))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=satisfies(
        lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "two values in [0, 1)"))
    scheduler: Scheduler = Scheduler.linear
    warmup_steps: int = field(default=50, metadata=at_least(0))
    # run the primal LR schedule (warm-up, then decay) over the dense phase, then afresh over the
    # budget phase, as two training stages in one run (lightning_modules.system.restarted_lr_factor)
    restart_after_dense: bool = False
    grad_clip: float = field(default=1.0, metadata=at_least(0, "0 disables"))  # clips backbone and gate only


@dataclass
class TrainerConfig:
    max_epochs: int = field(default=2, metadata=satisfies(lambda v: v >= 1 or v == -1, ">= 1 (or -1)"))
    max_steps: int = -1
    # whether the machine has the accelerator is checked when a run starts (commands.device_checks)
    accelerator: str = field(default="auto", metadata=_one_of(ACCELERATORS))
    devices: Any = "auto"
    strategy: str = field(default="auto", metadata=_one_of(STRATEGIES))
    num_nodes: int = field(default=1, metadata=at_least(1))
    precision: str = field(default="32-true", metadata=_one_of(PRECISIONS))
    log_every_n_steps: int = field(default=10, metadata=at_least(1))
    # As in Lightning: an int counts batches, a float in (0, 1] is a fraction of the epoch (Any, so that
    # ``trainer.limit_train_batches=20`` stays the int 20 instead of becoming the fraction-looking 20.0).
    val_check_interval: Any = field(default=None, metadata=_batches_or_fraction(1))
    limit_train_batches: Any = field(default=None, metadata=_batches_or_fraction(0))
    limit_val_batches: Any = field(default=None, metadata=_batches_or_fraction(0))
    limit_test_batches: Any = field(default=None, metadata=_batches_or_fraction(0))
    enable_progress_bar: bool = True
    deterministic: bool = False
    fast_dev_run: bool = False


@dataclass
class LoggingConfig:
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "adaptive-retention"
    run_name: Optional[str] = None
    checkpoint_dir: str = "checkpoints"
    save_checkpoints: bool = True  # best.ckpt and last.ckpt in checkpoint_dir/<run id>/; false: none


@dataclass
class Config:
    seed: int = 0
    # What the run trains and how it selects tokens (retention.methods.Method): gate (ours), a heuristic
    # selector (the backbone trains densely and the selector picks the tokens), ltp, or a sparse comparator.
    method: Method = Method.gate
    # Which ablation of our method this run is; "none" for the method as designed.
    ablation: Ablation = Ablation.none
    model: ModelConfig = field(default_factory=ModelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # typed by the selected module's schema (conf.data_schema.DATA_SCHEMAS[data.name]) when composed
    data: DataConfig = field(default_factory=lambda: NeedleDataConfig(name="needle"))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def data_schema(name: Any) -> type[DataConfig]:
    """The schema of data module ``name``; an unknown name is a :class:`ConfigError`."""
    if name not in DATA_SCHEMAS:
        raise ConfigError(f"data.name={name!r} is not a known data module; allowed: {', '.join(DATA_SCHEMAS)}")
    return DATA_SCHEMAS[name]


def validate(cfg: DictConfig, num_backbone_layers: int | None = None) -> None:
    """Raise :class:`ConfigError` for the first value outside what its field allows, naming the key and
    what is allowed: every :class:`conf.checks.Check` of :class:`Config` and of the selected data
    module's schema, then the checks across fields. ``num_backbone_layers`` (when known) bounds
    ``gate.layers``."""
    schema = data_schema(cfg.data.name)
    for key, check in (*checks_of(Config, exclude=("data",)), *checks_of(schema, "data.")):
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if value is not None and not check.ok(value):
            raise ConfigError(f"{key}={value!r} is out of range; allowed: {check.allowed}")
    schema(**OmegaConf.to_container(cfg.data, resolve=True))  # its __post_init__: the data checks across keys
    _check_flops_and_distill(cfg, num_backbone_layers)
    if (cfg.budget.ratio is None) == (cfg.budget.tokens is None):
        raise ConfigError(
            f"budget.ratio={cfg.budget.ratio!r} and budget.tokens={cfg.budget.tokens!r}: set exactly one (the other to null)"
        )
    b = cfg.budget
    if b.dense_fraction + b.warmup_fraction > 1.0:
        raise ConfigError(f"budget.dense_fraction={b.dense_fraction} and budget.warmup_fraction={b.warmup_fraction} "
                          f"add up to more than 1; allowed: a sum <= 1 (the target must reach rho within the run)")
    if num_backbone_layers is not None:
        for i in cfg.gate.layers:
            if not 0 <= i < num_backbone_layers:
                raise ConfigError(
                    f"gate.layers contains {i}, out of range; allowed: 0..{num_backbone_layers - 1} "
                    f"(the backbone has {num_backbone_layers} layers)"
                )
    if len(set(cfg.gate.layers)) != len(cfg.gate.layers):
        raise ConfigError(f"gate.layers={list(cfg.gate.layers)} has duplicates; allowed: distinct layer indices")
    if cfg.gate.start_at_budget and cfg.method == "ltp":
        raise ConfigError("gate.start_at_budget=true with method=ltp: LTP's thresholds replace the gates' scores, so "
                          "nothing would start at the budget; allowed: gate.start_at_budget=false (method/ltp.yaml's)")


def _check_flops_and_distill(cfg: DictConfig, num_backbone_layers: int | None) -> None:
    """The cross-field checks of ``budget.flops`` and ``distill.ranking``: a FLOPs budget scales the
    ratio schedule (so it needs ``budget.ratio``, not ``budget.tokens``), needs exact top-M inference
    and gates (not a sparse comparator), and must exceed the share of the dense layers before the
    first gate, which no selection saves; ranking distillation trains our gates (``method=gate``)."""
    b, m = cfg.budget, cfg.method
    if b.flops is not None:
        if b.tokens is not None:
            raise ConfigError(f"budget.flops={b.flops} with budget.tokens={b.tokens}: a FLOPs budget scales the ratio "
                              f"schedule; allowed: budget.tokens=null with budget.ratio (the schedule's shape)")
        if b.ratio is None:
            raise ConfigError(f"budget.flops={b.flops} needs budget.ratio (the shape of the per-gate ratios it scales); "
                              f"allowed: a ratio in (0, 1], e.g. budget.ratio=0.3")
        if str(b.inference) == "threshold":
            raise ConfigError(f"budget.flops={b.flops} with budget.inference=threshold: the threshold rule keeps no exact "
                              f"budget; allowed: budget.inference=top_m")
        if Method(str(m)).is_sparse:
            raise ConfigError(f"budget.flops={b.flops} with method={m}: a sparse comparator keeps every token; "
                              f"allowed: budget.flops=null")
        if num_backbone_layers is not None and b.flops <= min(cfg.gate.layers) / num_backbone_layers:
            first = min(cfg.gate.layers)
            raise ConfigError(f"budget.flops={b.flops} is out of reach: layers 0..{first - 1} run before the first gate, "
                              f"{first}/{num_backbone_layers} of the dense forward; allowed: budget.flops > "
                              f"{first / num_backbone_layers:.3f}, or a gate at an earlier layer (gate.layers)")
    if cfg.distill.ranking and str(m) != "gate":
        raise ConfigError(f"distill.ranking=true with method={m}: ranking distillation trains our gates; allowed: method=gate")
