"""The optimisation core shared by every task: backbone + gates + the dual variable λ.

One optimizer, three param groups:
  0. backbone and task head (lr, weight decay),
  1. gates (gate_lr, weight decay),
  2. λ, one per gated layer: ``maximize=True`` (projected gradient *ascent*), no weight decay,
     its own lr η, and a constant LR-schedule factor so warm-up/decay never changes η.
After every optimizer step λ is projected onto λ ≥ 0; gradient clipping touches groups 0 and 1 only.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import lightning as L
import torch
from torch import nn

from retention.budget import Budget, annealed_targets, lagrangian_term
from retention.encoder import RetentionEncoder
from retention.baselines import install_ltp, selector_for
from retention.hard_concrete import make_relaxation
from retention.methods import Method
from retention.sparse import SPARSE_METHODS, build_sparse_encoder
from retention.backbones import build_backbone

__all__ = ["RetentionSystem", "build_retention_encoder", "PRIMAL_GROUPS", "DUAL_GROUP"]

PRIMAL_GROUPS = (0, 1)
DUAL_GROUP = 2

# A system's hparams hold the run's Method; Lightning loads checkpoints with weights_only=True.
torch.serialization.add_safe_globals([Method])


def build_retention_encoder(model: dict, gate: dict, budget: dict, vocab_size: int | None,
                            max_positions: int, protected_token_ids: tuple[int, ...], method: str = "gate",
                            backbone: nn.Module | None = None) -> RetentionEncoder:
    """The wrapped stock encoder from the ``model``/``gate``/``budget`` config sections (or the given
    ``backbone``, e.g. the encoder stack of an encoder–decoder); with ``method="ltp"`` its scorers are
    LTP's learned thresholds on attention received; with ``method="longformer"``/``"bigbird"`` it is
    that sparse-attention model at attention budget ρ."""
    if method in SPARSE_METHODS:
        if backbone is not None:
            raise ValueError(f"method='{method}' is an encoder-only comparator; it cannot replace the encoder of {type(backbone).__name__}")
        return build_sparse_encoder(
            SPARSE_METHODS[method], ratio=budget["ratio"] or 0.3, seq_len=model["max_positions"] or max_positions,
            vocab_size=vocab_size, hidden_size=model["hidden_size"], num_layers=model["num_layers"],
            num_heads=model["num_heads"], intermediate_size=model["intermediate_size"],
            gate_layers=list(gate["layers"]), protected_token_ids=protected_token_ids,
        )
    backbone = backbone if backbone is not None else build_backbone(
        model["backbone"],
        attn_implementation=model["attn_implementation"],
        arch=model["arch"],
        vocab_size=vocab_size,
        hidden_size=model["hidden_size"],
        num_layers=model["num_layers"],
        num_heads=model["num_heads"],
        intermediate_size=model["intermediate_size"],
        max_positions=model["max_positions"] or max_positions,
    )
    layers = list(gate["layers"])
    encoder = RetentionEncoder(
        backbone,
        gate_layers=layers,
        budget=Budget(ratio=budget["ratio"], tokens=budget["tokens"], schedule=budget["schedule"], num_layers=len(layers)),
        relaxation=make_relaxation(gate["relaxation"], beta=gate["beta"], gamma=gate["gamma"], zeta=gate["zeta"]),
        protected_token_ids=protected_token_ids if gate["protect_special_tokens"] else (),
        scorer_hidden=gate["hidden"] or None,
        context=gate["context"],
        running_decay=gate["running_decay"],
        init_log_alpha=gate["init_log_alpha"],
        inference=budget["inference"],
    )
    if method == "ltp":
        encoder._ltp_hooks = install_ltp(encoder, temperature=gate["ltp_temperature"])
    return encoder


# soft: same length, deterministic gates; hard: exact top-M, tokens physically removed;
# dense: the same model with nothing dropped.
EVAL_PATHS = ("soft", "hard", "dense")


class RetentionSystem(L.LightningModule):
    """Base LightningModule: owns ``self.encoder`` (a :class:`RetentionEncoder`), ``self.head``
    (set by the task subclass) and ``self.lam`` (λ, an ``nn.Parameter`` so DDP keeps it identical on
    every rank and checkpoints carry it).

    A task subclass sets ``METRIC`` (its primary metric, logged as ``{val,test}/<METRIC>_<path>`` for
    the soft, hard and dense paths; the checkpoint and sweeps monitor ``val/<METRIC>_hard``),
    ``METRIC_LABEL`` (how the summary names it) and ``from_config(cfg, datamodule)``."""

    METRIC = "acc"
    METRIC_LABEL = "accuracy"
    # The paths each val/test step runs (all three in training; `retention evaluate` runs the dense
    # path once per run and then only the hard path per method and budget).
    eval_paths: tuple[str, ...] = EVAL_PATHS

    def __init__(self, model: dict, gate: dict, budget: dict, optim: dict, vocab_size: int | None,
                 max_positions: int, protected_token_ids: tuple[int, ...] = (), method: str = "gate",
                 backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.method = Method(method)
        # How validation and test select on the hard path: the run's heuristic selector, or its own
        # trained scorer (ours or LTP's: TrainedScorer); `retention evaluate` swaps in others.
        self.selector = selector_for(self.method.selection)
        self._applied_selector: contextlib.ExitStack | None = None
        self.encoder = build_retention_encoder(model, gate, budget, vocab_size, max_positions, tuple(protected_token_ids),
                                               method, backbone=backbone)
        self.lam = nn.Parameter(torch.full((self.encoder.num_gates,), float(budget["init_lambda"])))
        if method in SPARSE_METHODS:  # no gates and no dense path: soft = hard = the sparse model
            self.eval_paths = ("hard",)
        self.optim_cfg = optim
        self.budget_cfg = budget

    # ------------------------------------------------------------------ the Lagrangian
    @property
    def gating(self) -> bool:
        """False during the first ``budget.dense_steps`` steps, when the task is trained densely, and
        always for a heuristic baseline ``method`` (the backbone is trained densely; the baseline
        selects at evaluation) and for the sparse-attention comparators (no gates)."""
        return self.method.trains_scorer and self.global_step >= self.budget_cfg["dense_steps"]

    # ------------------------------------------------------------------ baselines at evaluation
    def _enter_selector(self) -> None:
        """Apply ``self.selector`` to the encoder until :meth:`_exit_selector` (one val/test epoch)."""
        self._applied_selector = contextlib.ExitStack()
        self._applied_selector.enter_context(self.selector(self.encoder))

    def _exit_selector(self) -> None:
        if self._applied_selector is not None:
            self._applied_selector.close()
            self._applied_selector = None

    # ------------------------------------------------------------------ the steps every task shares
    def task_loss(self, batch: dict, mode: str) -> tuple[torch.Tensor, Any]:
        """(task loss, encoder output) of a batch on ``mode`` ("soft" or "dense"); each task defines it."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        """Task loss + Σ_ℓ λ_ℓ (ĝ_ℓ − ρ_ℓ(t)) on the soft path; the task alone (gates and λ kept in the
        graph with a zero factor) during the dense phase and for baselines that train densely."""
        gating = self.gating
        task, out = self.task_loss(batch, "soft" if gating else "dense")
        self.log("train/task_loss", task, prog_bar=True, on_step=True, on_epoch=True)
        if not gating:
            return task + self.unused_in_graph()
        lag, targets = self.constraint_loss(out.expected_retention, out.targets)
        self.log("train/lagrangian", lag.detach(), on_step=True, on_epoch=True)
        self.log_retention("train", out, on_step=True, targets=targets)
        self.log("train/exp_ret", out.expected_retention.mean().detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return task + lag

    def _evaluate(self, stage: str, batch) -> None:
        """Metrics of one val/test batch on the soft, hard and dense paths; each task defines it."""
        raise NotImplementedError

    def _epoch_end(self, stage: str) -> None:
        """Tasks whose metrics need the whole epoch (QA's best span per question, ROUGE) compute them here."""

    def validation_step(self, batch, batch_idx):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        self._evaluate("test", batch)

    def on_validation_epoch_start(self) -> None:
        self._enter_selector()

    def on_test_epoch_start(self) -> None:
        self._enter_selector()

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")
        self._exit_selector()

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
        self._exit_selector()

    def constraint_loss(self, expected: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_ℓ λ_ℓ (ĝ_ℓ − ρ_ℓ(t)) (:func:`retention.budget.lagrangian_term`) against the warmed-up targets
        ρ_ℓ(t) (:func:`retention.budget.annealed_targets`, t counted from the end of the dense phase).
        Returns (term, ρ(t))."""
        step = self.global_step - self.budget_cfg["dense_steps"]
        targets = annealed_targets(targets, step, self.budget_cfg["warmup_steps"])
        return lagrangian_term(self.lam, expected, targets), targets

    def unused_in_graph(self) -> torch.Tensor:
        """0 · (λ and every gate parameter): keeps them in the autograd graph on dense steps, so DDP
        does not fail on parameters that received no gradient."""
        return 0.0 * sum(p.sum() for p in [self.lam, *self.encoder.gates.parameters()])

    def log_retention(self, stage: str, out, on_step: bool, targets: torch.Tensor | None = None) -> None:
        """Achieved vs target at every step (train: expected retention ĝ_ℓ, the fraction of open
        sampled gates, the current target ρ_ℓ(t) and λ_ℓ; val/test: the kept fraction of the hard path)."""
        for k, layer in enumerate(self.encoder.gate_layers):
            if stage == "train":
                self.log(f"train/expected_retention_l{layer}", out.expected_retention[k].detach(), on_step=True, on_epoch=True)
                self.log(f"train/open_fraction_l{layer}", out.achieved_retention[k], on_step=True, on_epoch=True)
                self.log(f"train/target_l{layer}", targets[k], on_step=True, on_epoch=False)
                self.log(f"train/lambda_l{layer}", self.lam[k].detach(), on_step=True, on_epoch=False)
            else:
                self.log(f"{stage}/kept_fraction_l{layer}", out.achieved_retention[k], on_step=on_step, on_epoch=True)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        o = self.optim_cfg
        gate_params = list(self.encoder.gates.parameters())
        gate_ids = {id(p) for p in gate_params} | {id(self.lam)}
        primal = [p for p in self.parameters() if id(p) not in gate_ids]
        return [
            {"params": primal, "lr": o["lr"], "weight_decay": o["weight_decay"], "name": "backbone"},
            {"params": gate_params, "lr": o["gate_lr"], "weight_decay": o["weight_decay"], "name": "gate"},
            {"params": [self.lam], "lr": o["dual_lr"], "weight_decay": 0.0, "maximize": True, "name": "dual"},
        ]

    def lr_factor(self, step: int) -> float:
        """Warm-up then the configured shape, for the primal groups only."""
        o = self.optim_cfg
        warm = o["warmup_steps"]
        if warm and step < warm:
            return (step + 1) / warm
        if o["scheduler"] == "constant":
            return 1.0
        total = max(1, int(self.trainer.estimated_stepping_batches) - warm) if self._trainer is not None else 1
        progress = min(1.0, (step - warm) / total)
        if o["scheduler"] == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        o = self.optim_cfg
        optimizer = torch.optim.AdamW(self.param_groups(), betas=tuple(o["betas"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [self.lr_factor, self.lr_factor, lambda _: 1.0])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            self.lam.clamp_(min=0.0)  # projection: λ ← max(0, λ)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if not gradient_clip_val:
            return
        params = [p for g in PRIMAL_GROUPS for p in optimizer.param_groups[g]["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
