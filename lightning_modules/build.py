"""Building a task's system from a config: the stock backbone, the encoder around it, then the
LightningModule that receives them.

:func:`build_system` is the one place that reads the ``model``/``gate``/``budget``/``optim`` config
sections and the data module; the systems take built modules and typed settings:

* :func:`build_encoder`: a :class:`retention.encoder.RetentionEncoder` with Adaptive Retention gates on the
  stock encoder (Hard-Concrete gates, Louizos et al. 2018; the method of Rafiuddin & Khan, EMNLP 2025
  Findings, arXiv 2510.08798), with LTP's learned-threshold scorers installed for ``method=ltp``; or
  the Longformer / BigBird comparator at attention budget ρ (``method=longformer|bigbird``);
* :func:`optimisation`: the :class:`Optimisation` settings;
* the system of the data module's ``task`` (:data:`TASK_SYSTEMS`) with its head's sizes.

Choice values (method, scheduler, schedule, ...) reach the modules as plain strings (``str()``), so
the checkpoint's hyperparameters hold plain values whatever type the config gives them.
"""

from __future__ import annotations

from torch import nn

from conf.schema import ConfigError
from retention.budget import Budget
from retention.encoder import RetentionEncoder
from retention.backbones import build_backbone, build_seq2seq
from retention.baselines import install_ltp
from retention.hard_concrete import make_relaxation
from retention.sparse import SPARSE_METHODS, build_sparse_encoder

from .classification import RetentionClassifier, RetentionMultiLabelClassifier, RetentionMultiQueryClassifier
from .qa import RetentionQA
from .summarization import RetentionSummarizer
from .system import Optimisation, RetentionSystem

__all__ = ["TASK_SYSTEMS", "build_encoder", "build_system", "max_positions", "optimisation", "task_of"]

# data module's ``task`` attribute -> the LightningModule class that trains it
TASK_SYSTEMS: dict[str, type[RetentionSystem]] = {
    "classification": RetentionClassifier,
    "multilabel": RetentionMultiLabelClassifier,
    "multiquery": RetentionMultiQueryClassifier,
    "qa": RetentionQA,
    "summarization": RetentionSummarizer,
}


def task_of(dm) -> str:
    """The data module's ``task`` (``classification`` when it declares none)."""
    return getattr(dm, "task", "classification")


def optimisation(cfg) -> Optimisation:
    """The :class:`Optimisation` settings of ``cfg`` (``optim.*``; ``budget.dense_fraction``,
    ``budget.warmup_fraction``, ``budget.dense_steps``, ``budget.warmup_steps``, ``budget.init_lambda``, ``budget.constraint`` and ``budget.lagrangian``;
    ``distill.*``). ``cfg`` is composed (:func:`conf.compose.compose`) or a saved run's
    (:func:`conf.compose.load_run_config`, which gives keys newer than the run their schema defaults)."""
    o, b, distill = cfg.optim, cfg.budget, cfg.distill
    return Optimisation(
        lr=o.lr, gate_lr=o.gate_lr, dual_lr=o.dual_lr, dual_step=str(o.dual_step), weight_decay=o.weight_decay,
        betas=(float(o.betas[0]), float(o.betas[1])), scheduler=str(o.scheduler), warmup_steps=o.warmup_steps,
        restart_after_dense=bool(o.restart_after_dense),
        dense_steps=b.dense_steps, budget_warmup_steps=b.warmup_steps, init_lambda=float(b.init_lambda),
        init_lambda2=float(b.init_lambda2),
        dense_fraction=float(b.dense_fraction), warmup_fraction=float(b.warmup_fraction),
        constraint=str(b.constraint), lagrangian=str(b.lagrangian),
        distill_ranking=bool(distill.ranking), distill_weight=float(distill.weight),
    )


def max_positions(cfg, dm) -> int:
    """Position table of a random-init backbone: ``model.max_positions``, else ``data.seq_len``
    (for an encoder–decoder, at least the target length + 2, since its decoder shares the table size)."""
    if cfg.model.max_positions:
        return cfg.model.max_positions
    if task_of(dm) == "summarization":
        return max(cfg.data.seq_len, dm.target_len + 2)
    return cfg.data.seq_len


def _random_init(cfg, dm) -> dict:
    """The size arguments of a random-init backbone (ignored for a pretrained one)."""
    m = cfg.model
    return dict(arch=str(m.arch), vocab_size=getattr(dm, "vocab_size", None), hidden_size=m.hidden_size,
                num_layers=m.num_layers, num_heads=m.num_heads, intermediate_size=m.intermediate_size,
                max_positions=max_positions(cfg, dm))


def build_encoder(cfg, dm, backbone: nn.Module | None = None) -> nn.Module:
    """The encoder of ``cfg.method`` on the stock ``backbone`` (built from ``model.*`` when None):
    a :class:`RetentionEncoder` with gates at ``gate.layers`` under the ``budget.*`` budget (LTP's
    scorers for ``method=ltp``), or, for a sparse comparator, that sparse-attention model."""
    protected = tuple(dm.special_token_ids)
    g, b = cfg.gate, cfg.budget
    method = str(cfg.method)
    if method in SPARSE_METHODS:
        if backbone is not None:
            raise ValueError(f"method={method!r} is an encoder-only comparator; it cannot replace the encoder of {type(backbone).__name__}")
        m = _random_init(cfg, dm)
        return build_sparse_encoder(
            SPARSE_METHODS[method], ratio=b.ratio or 0.3, seq_len=m["max_positions"], vocab_size=m["vocab_size"],
            hidden_size=m["hidden_size"], num_layers=m["num_layers"], num_heads=m["num_heads"],
            intermediate_size=m["intermediate_size"], gate_layers=list(g.layers), protected_token_ids=protected,
        )
    if backbone is None:
        backbone = build_backbone(cfg.model.backbone, attn_implementation=str(cfg.model.attn_implementation),
                                  **_random_init(cfg, dm))
    layers = list(g.layers)
    encoder = RetentionEncoder(
        backbone,
        gate_layers=layers,
        budget=Budget(ratio=b.ratio, tokens=b.tokens, schedule=str(b.schedule), num_layers=len(layers),
                      flops=b.flops),
        relaxation=make_relaxation(str(g.relaxation), beta=g.beta, gamma=g.gamma, zeta=g.zeta),
        protected_token_ids=protected if g.protect_special_tokens else (),
        scorer_hidden=g.hidden or None,
        context=str(g.context),
        running_decay=g.running_decay,
        init_log_alpha=g.init_log_alpha,
        inference=str(b.inference),
    )
    if g.start_at_budget:  # (not with method=ltp: conf.schema.validate)
        encoder.start_at_budget(cfg.data.seq_len)
    if method == "ltp":
        install_ltp(encoder, temperature=g.ltp_temperature)  # its hooks stay for the encoder's lifetime
    return encoder


def build_system(cfg, dm) -> RetentionSystem:
    """The LightningModule of the data module's task (:data:`TASK_SYSTEMS`), given the encoder
    (:func:`build_encoder`), the :func:`optimisation` settings, ``method`` and its head's sizes."""
    task = task_of(dm)
    if task not in TASK_SYSTEMS:
        raise ConfigError(f"data.name={cfg.data.name!r} declares task {task!r}; known tasks: {', '.join(sorted(TASK_SYSTEMS))}")
    optim, method = optimisation(cfg), str(cfg.method)
    if task == "summarization":
        seq2seq = build_seq2seq(cfg.model.backbone, attn_implementation=str(cfg.model.attn_implementation),
                                special_ids=dict(dm.seq2seq_special_ids), **_random_init(cfg, dm))
        return RetentionSummarizer(build_encoder(cfg, dm, backbone=seq2seq.get_encoder()), seq2seq, optim,
                                   tokenizer=dm.tokenizer, generation=dict(dm.generation), method=method)
    encoder = build_encoder(cfg, dm)
    if task == "qa":
        return RetentionQA(encoder, optim, dropout=cfg.model.dropout, max_answer_tokens=cfg.data.max_answer_tokens,
                           method=method)
    return TASK_SYSTEMS[task](encoder, optim, num_labels=cfg.model.num_labels or dm.num_labels,
                              dropout=cfg.model.dropout, method=method)
