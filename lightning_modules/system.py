"""The optimisation core shared by every task: backbone + gates + the dual variable λ.

One optimizer, three param groups:
  0. backbone and task head (lr, weight decay),
  1. gates (gate_lr, weight decay),
  2. λ, one per gated layer (and λ₂ under ``budget.lagrangian=augmented``): ``maximize=True``
     (projected gradient *ascent*), no weight decay, its own lr η, and a constant LR-schedule factor
     so warm-up/decay never changes η. Under ``optim.dual_step=sgd`` λ is in no group: it takes the
     paper's plain ascent step λ ← λ + η(ĝ − ρ) after each optimizer step (:func:`retention.budget.dual_ascent`).
After every optimizer step λ is projected onto λ ≥ 0 under ``budget.constraint=inequality`` (the
paper's ĝ_ℓ ≤ ρ_ℓ) and left free under ``equality`` (:meth:`RetentionSystem.optimizer_step`); λ₂ ≥ 0;
gradient clipping touches groups 0 and 1 only.
During the dense phase (the first ``budget.dense_fraction`` of the fit's steps, or
``budget.dense_steps``) λ and the gates get no gradient (``None``, so AdamW
leaves their state alone): their Adam moments and step count start when the budget phase starts.

Fitting puts every module in train mode (:meth:`RetentionSystem.on_fit_start`): ``from_pretrained``
returns a backbone in eval mode and Lightning keeps the modes it finds, which would fine-tune a
pretrained backbone with its dropout off.

A system receives its modules built (:func:`lightning_modules.build_system` builds them from a
config): the encoder (a :class:`retention.RetentionEncoder`, LTP's scorers installed in one, or a
sparse-attention comparator) and the :class:`Optimisation` settings.

Under a FLOPs budget (``budget.flops``) λ has one more entry, the FLOPs constraint's
(:meth:`RetentionSystem.constraint_sides`); with ``distill.ranking`` a gated step adds ToP's ranking
distillation (:meth:`RetentionSystem.ranking_distillation`).

(About 530 lines, over the usual 400: the Lagrangian's sides, its steps and its logging share the
system's λ and phases; the equations themselves live in ``retention``.)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn

from conf.checks import ConfigError
from datamodules.loaders import DATASET_INDEX
from retention.baselines import selector_for
from retention.budget import annealed_targets, dual_ascent, global_batch_mean, lagrangian_term, phase_steps
from retention.distill import ranking_distillation_loss, teacher_importance
from retention.methods import Method
from retention.sparse import SPARSE_METHODS

from .host_plans import HostPlans
from .metrics import ExampleMean

__all__ = ["RetentionSystem", "Optimisation", "SCHEDULERS", "CONSTRAINTS", "lr_factor", "restarted_lr_factor", "encoder_record", "EVAL_PATHS",
           "PRIMAL_GROUPS", "DUAL_GROUP", "LAGRANGIANS"]

PRIMAL_GROUPS = (0, 1)
DUAL_GROUP = 2
SCHEDULERS = ("linear", "cosine", "constant")
CONSTRAINTS = ("inequality", "equality")
LAGRANGIANS = ("linear", "augmented")
DUAL_STEPS = ("adam", "sgd")

# A system's hparams hold the run's Method; Lightning loads checkpoints with weights_only=True.
torch.serialization.add_safe_globals([Method])


@dataclass(frozen=True)
class Optimisation:
    """What a system's optimisation reads (``optim.*`` and the Lagrangian's ``budget.*`` keys):

    * ``lr`` (backbone and head), ``gate_lr``, ``dual_lr`` (η, λ's ascent step), ``weight_decay``
      (primal groups only), ``betas`` (AdamW);
    * ``scheduler`` and ``warmup_steps``: the primal groups' LR factor, :func:`lr_factor` (with
      ``restart_after_dense``, run afresh where the budget phase starts: :func:`restarted_lr_factor`);
    * ``dense_fraction`` of the fit's steps (or ``dense_steps``, when not None) train the task
      densely (no Lagrangian term);
    * then over ``warmup_fraction`` of them (or ``budget_warmup_steps``) the target anneals from 1
      to ρ (:func:`retention.budget.annealed_targets`, :func:`retention.budget.phase_steps`);
    * ``init_lambda``, ``init_lambda2``: λ's and λ₂'s initial values; ``constraint``: :meth:`RetentionSystem.optimizer_step`;
    * ``distill_ranking``, ``distill_weight``: ranking distillation on gated steps
      (:meth:`RetentionSystem.ranking_distillation`).
    * ``lagrangian``: ``linear`` (λ only) or ``augmented`` (a second dual variable λ₂ on the squared
      violation, :func:`retention.budget.lagrangian_term`).
    * ``dual_step``: ``adam`` (λ in AdamW's third group) or ``sgd`` (the paper's plain ascent,
      :func:`retention.budget.dual_ascent`, after each optimizer step; λ then sits in no optimizer).
    """

    lr: float
    gate_lr: float
    dual_lr: float
    weight_decay: float
    betas: tuple[float, float]
    scheduler: str
    warmup_steps: int
    dense_steps: int | None
    budget_warmup_steps: int | None
    init_lambda: float
    dense_fraction: float = 0.0
    warmup_fraction: float = 0.0
    constraint: str = "inequality"
    distill_ranking: bool = False
    distill_weight: float = 1.0
    lagrangian: str = "linear"
    dual_step: str = "adam"
    init_lambda2: float = 0.0
    restart_after_dense: bool = False

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {', '.join(CONSTRAINTS)}, got {self.constraint!r}")
        if self.lagrangian not in LAGRANGIANS:
            raise ValueError(f"lagrangian must be one of {', '.join(LAGRANGIANS)}, got {self.lagrangian!r}")
        if self.dual_step not in DUAL_STEPS:
            raise ValueError(f"dual_step must be one of {', '.join(DUAL_STEPS)}, got {self.dual_step!r}")


def lr_factor(step: int, warmup_steps: int, total_steps: int, scheduler: str) -> float:
    """The primal groups' LR multiplier at optimizer step ``step`` (0-based) of a fit of
    ``total_steps``: linear warm-up (step + 1)/W for the first W = ``warmup_steps`` steps, then with
    progress p = min(1, (step − W)/max(1, total_steps − W)):

        constant: 1,    linear: max(0, 1 − p),    cosine: ½·(1 + cos(π·p)).
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def restarted_lr_factor(step: int, dense_steps: int, warmup_steps: int, total_steps: int, scheduler: str) -> float:
    """:func:`lr_factor` run twice (``optim.restart_after_dense``): over the dense phase's
    ``dense_steps`` steps, then afresh, warm-up included, over the budget phase's
    ``total_steps − dense_steps``, as if the dense phase were a first training stage and the budget
    phase a second one started from it (the two-stage runs of docs/results.md)."""
    if step < dense_steps:
        return lr_factor(step, warmup_steps, dense_steps, scheduler)
    return lr_factor(step - dense_steps, warmup_steps, total_steps - dense_steps, scheduler)


def encoder_record(encoder: nn.Module) -> dict[str, Any]:
    """Plain values that describe a built encoder for the checkpoint's hyperparameters (the module
    itself is rebuilt from the ``config.yaml`` beside the checkpoint): its class, the backbone's
    model type and width, the gated layers and the budget."""
    config = encoder.backbone.config
    budget = encoder.budget
    return {"class": type(encoder).__name__, "model_type": config.model_type, "hidden_size": config.hidden_size,
            "gate_layers": list(encoder.gate_layers),
            "budget": {"ratio": budget.ratio, "tokens": budget.tokens, "schedule": str(budget.schedule)}}


# soft: same length, the hard path's top-M masked in place and scaled by E[z̃ | z̃ > 0];
# hard: exact top-M, tokens physically removed; dense: the same model with nothing dropped.
EVAL_PATHS = ("soft", "hard", "dense")


class RetentionSystem(HostPlans, L.LightningModule):
    """Base LightningModule: owns ``self.encoder`` (a :class:`RetentionEncoder`), ``self.head``
    (set by the task subclass) and ``self.lam`` (λ, an ``nn.Parameter`` so DDP keeps it identical on
    every rank and checkpoints carry it).

    A task subclass sets ``METRIC`` (its primary metric, logged as ``{val,test}/<METRIC>_<path>`` for
    the soft, hard and dense paths; the checkpoint and sweeps monitor ``val/<METRIC>_hard``),
    ``METRIC_LABEL`` (how the summary names it), its head and the task's loss and metrics.

    ``encoder`` is built (a :class:`retention.RetentionEncoder` around a stock backbone, or a sparse
    comparator), ``optim`` holds the optimisation settings, and ``method`` names the run's method
    where the system's behaviour depends on it: which steps train the gates (:attr:`gating`), how
    the hard path selects, and a sparse comparator's single evaluation path."""

    METRIC = "acc"
    METRIC_LABEL = "accuracy"
    RECENT_STEPS = 10  # the gated steps whose ĝ the summary reports (:attr:`recent_expected_retention`)
    # The paths each val/test step runs (all three in training; `retention evaluate` runs the dense
    # path once per run and then only the hard path per method and budget).
    eval_paths: tuple[str, ...] = EVAL_PATHS

    # Constructor arguments that are not hyperparameters: built modules (the config.yaml beside the
    # checkpoint rebuilds them; :func:`encoder_record` describes the encoder) and ``optim``, which the
    # hyperparameters record as a dict of plain values (checkpoints load with ``weights_only=True``).
    NOT_HYPERPARAMETERS: tuple[str, ...] = ("encoder", "optim")

    def __init__(self, encoder: nn.Module, optim: Optimisation, method: str = "gate") -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=list(self.NOT_HYPERPARAMETERS))
        self.hparams.update(optim=dataclasses.asdict(optim), encoder=encoder_record(encoder))
        self.method = Method(method)  # gate | a heuristic selector | a trained baseline (ltp) | a sparse comparator
        # How validation and test select on the hard path: the run's heuristic selector, or its own
        # trained scorer (ours or LTP's: TrainedScorer); `retention evaluate` swaps in others.
        self.selector = selector_for(self.method.selection)
        self._applied_selector: contextlib.ExitStack | None = None
        self.encoder = encoder
        # FLOPs budget (budget.flops = F): one more constraint, expected FLOPs fraction ≤ F, with its own
        # multiplier, the last entry of λ (:meth:`constraint_sides`)
        self.flops_budget: float | None = getattr(getattr(encoder, "budget", None), "flops", None)
        n_constraints = self.encoder.num_gates + (self.flops_budget is not None)
        self.lam = nn.Parameter(torch.full((n_constraints,), float(optim.init_lambda)))
        # λ₂ of the augmented Lagrangian (starts at budget.init_lambda2), one per constraint; absent otherwise, so earlier
        # checkpoints still load
        self.lam_quadratic = (nn.Parameter(torch.full((n_constraints,), float(optim.init_lambda2))) if optim.lagrangian == "augmented" else None)
        if method in SPARSE_METHODS:  # no gates and no dense path: soft = hard = the sparse model
            self.eval_paths = ("hard",)
        self.optim = optim
        # val/test means of per-example values, gathered over DDP ranks (:meth:`log_example_mean`)
        names = ["loss_soft", *(f"{p}kept_fraction_l{layer}" for p in ("", "soft_") for layer in self.encoder.gate_layers)]
        names += ["flops_fraction", "soft_flops_fraction"] if self.flops_budget is not None else []
        self.example_means = nn.ModuleDict({f"{stage}_{name}": ExampleMean() for stage in ("val", "test") for name in names})
        self._phases: tuple[int, int] | None = None  # (dense, warm-up) steps, resolved when a fit starts
        # ĝ_ℓ of the latest gated training step; None before the budget phase
        self.last_expected_retention: torch.Tensor | None = None
        # (ĝ_ℓ·B, ρ_ℓ·B, B) of the last RECENT_STEPS gated steps, ρ_ℓ the batch's budget (not the warmed-up
        # ρ_ℓ(t)): the summary's ĝ and ρ (:attr:`recent_expected_retention`, :attr:`recent_budget_targets`)
        self._recent: collections.deque = collections.deque(maxlen=self.RECENT_STEPS)

    # ------------------------------------------------------------------ the Lagrangian
    def _recent_mean(self, entry: int) -> torch.Tensor | None:
        """The mean over the sequences of the last :attr:`RECENT_STEPS` gated steps of one per-step
        quantity (each step's value weighted by its batch size), so that a short last batch (a
        1,201-page file in batches of 16 ends on one page) does not stand for the run. None before the
        budget phase."""
        if not self._recent:
            return None
        return sum(step[entry] for step in self._recent) / sum(step[-1] for step in self._recent)

    @property
    def recent_expected_retention(self) -> torch.Tensor | None:
        """ĝ_ℓ at the end of training, over the last gated steps' sequences (:meth:`_recent_mean`)."""
        return self._recent_mean(0)

    @property
    def recent_budget_targets(self) -> torch.Tensor | None:
        """ρ_ℓ over the same sequences as :attr:`recent_expected_retention` (per sequence under
        ``budget.tokens``, so the last batch's alone would not match)."""
        return self._recent_mean(1)

    @property
    def gating(self) -> bool:
        """False during the first ``budget.dense_steps`` steps, when the task is trained densely, and
        always for a heuristic baseline ``method`` (the backbone is trained densely; the baseline
        selects at evaluation) and for the sparse-attention comparators (no gates)."""
        return self.method.trains_scorer and self.global_step >= self.phases[0]

    @property
    def phases(self) -> tuple[int, int]:
        """(dense phase, budget warm-up) in optimizer steps (:func:`retention.budget.phase_steps`):
        checked against the fit's total steps when it starts (:meth:`check_phases`); before a fit the
        fractions count the steps of :meth:`total_steps`."""
        if self._phases is not None:
            return self._phases
        o = self.optim
        return phase_steps(self.total_steps(), o.dense_fraction, o.warmup_fraction, o.dense_steps, o.budget_warmup_steps)

    def check_phases(self, total_steps: int) -> tuple[int, int]:
        """The (dense, warm-up) steps of a fit of ``total_steps`` steps; a :class:`ConfigError` naming the
        keys when they do not fit in it (the training target would end above ρ while evaluation keeps ρ)."""
        o = self.optim
        dense, warmup = phase_steps(total_steps, o.dense_fraction, o.warmup_fraction, o.dense_steps, o.budget_warmup_steps)
        if self.method.trains_scorer and dense + warmup > total_steps:
            given = ", ".join(f"{k}={v}" for k, v in (("budget.dense_steps", o.dense_steps),
                                                      ("budget.warmup_steps", o.budget_warmup_steps)) if v is not None)
            raise ConfigError(f"{given}: the dense phase ({dense} steps) and the budget warm-up ({warmup} steps) do not "
                              f"fit in this run's {total_steps} optimizer steps; allowed: dense + warm-up <= {total_steps} "
                              f"(or set budget.dense_fraction / budget.warmup_fraction, which scale with the run)")
        return dense, warmup

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
        batch_size = out.kept_fractions.shape[1]  # (gates, B)
        lag, targets, expected = self.constraint_loss(*self.constraint_sides(out), batch_size)
        self.last_expected_retention = expected.detach()
        self._recent.append((self.last_expected_retention * batch_size, out.targets.detach() * batch_size, batch_size))
        self.log("train/lagrangian", lag.detach(), on_step=True, on_epoch=True)
        self.log_retention("train", out, on_step=True, targets=targets, expected=expected)
        self.log("train/exp_ret", expected[: self.encoder.num_gates].mean().detach(), prog_bar=True, on_step=True,
                 on_epoch=False, logger=False)
        return task + lag + self.ranking_distillation(batch, out)

    def constraint_sides(self, out) -> tuple[torch.Tensor, torch.Tensor]:
        """The constraints' two sides of a training step, this process's batch means: (ĝ_ℓ, ρ_ℓ) per
        gated layer and, under a FLOPs budget, one more pair (expected FLOPs fraction, F), the mean
        over sequences of forward(ĝ_ℓ·T_valid) / dense (:mod:`retention.flops`). The per-layer
        constraints stay beside the FLOPs one: their targets ρ_ℓ are the M_ℓ / T_valid that
        evaluation keeps, so every gate trains for the cut it makes at inference (the FLOPs
        constraint alone would let the gates meet F with any split across layers, e.g. all at the
        first gate, and inference's schedule would then cut where the gates never learned to). With
        every ĝ_ℓ ≤ ρ_ℓ the FLOPs constraint holds too (forward is increasing in each length), so
        under the inequality its λ then falls to 0; while a layer is over, it adds a push weighted
        by each layer's share of the FLOPs."""
        expected, targets = out.expected_retention, out.targets
        if self.flops_budget is None:
            return expected, targets
        flops = out.expected_flops.mean().to(expected.dtype).unsqueeze(0)
        return torch.cat([expected, flops]), torch.cat([targets.to(expected.dtype), flops.new_full((1,), self.flops_budget)])

    def ranking_distillation(self, batch: dict, out) -> torch.Tensor | float:
        """``distill_weight`` · L_rank (ToP's ranking distillation, :mod:`retention.distill`): every
        gate's log α against the final-layer attention received of a dense, no-grad forward of the
        same weights; 0 when ``distill_ranking`` is off."""
        if not self.optim.distill_ranking:
            return 0.0
        ids, mask = batch["input_ids"], batch["attention_mask"]
        protected = batch.get("protected")
        protected = self.encoder.protected_mask(ids) if protected is None else protected.bool()
        teacher = teacher_importance(self.encoder.backbone, ids, mask)
        loss = ranking_distillation_loss(out.log_alpha, teacher, mask.bool() & ~protected)
        self.log("train/ranking_kl", loss.detach(), on_step=True, on_epoch=True)
        return self.optim.distill_weight * loss

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

    def constraint_loss(self, expected: torch.Tensor, targets: torch.Tensor, batch_size: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The budget constraint of a training step, on the *global* batch:

            Σ_ℓ λ_ℓ (ĝ_ℓ − ρ_ℓ(t)),   ĝ_ℓ = Σ_r B_r·ĝ_ℓ,r / Σ_r B_r,   ρ_ℓ = Σ_r B_r·ρ_ℓ,r / Σ_r B_r

        (:func:`retention.budget.lagrangian_term`), ``expected`` and ``targets`` being this process's
        batch means ĝ_ℓ,r and ρ_ℓ,r over its ``batch_size`` = B_r sequences, and ρ_ℓ(t) the warmed-up
        target at the current global step (:meth:`training_targets`).

        Under DDP with R ranks, ĝ_ℓ and ρ_ℓ are the means over all R ranks' sequences, summed by a
        differentiable all-reduce (:func:`retention.budget.global_batch_mean`): every rank computes
        the same term, λ's gradient ĝ_ℓ − ρ_ℓ(t) is the same on every rank (DDP then averages it,
        leaving it unchanged), so λ takes one step on the global constraint and stays one value on
        all ranks; each rank's gates get their share of ∂(λ_ℓ·ĝ_ℓ)/∂θ. With one process the sums are
        the batch's own. Returns (term, ρ(t), ĝ)."""
        both = global_batch_mean(torch.cat([expected, targets.to(expected.dtype)]), batch_size)
        expected, targets = both[: len(expected)], both[len(expected):].detach()
        targets = self.training_targets(targets, self.global_step)
        term = lagrangian_term(self.lam, expected, targets, self.lam_quadratic, self.optim.constraint == "equality")
        return term, targets, expected

    def training_targets(self, targets: torch.Tensor, step: int) -> torch.Tensor:
        """ρ_ℓ(t) at global step ``step``: the budget warm-up of :func:`retention.budget.annealed_targets`
        with t counted from the end of the dense phase, t = max(0, step − D), so

            ρ_ℓ(t) = 1 − (1 − ρ_ℓ)·min(1, t / W)

        (1 until the dense phase ends, ρ_ℓ from D + W on; (D, W) = :attr:`phases`)."""
        dense, warmup = self.phases
        return annealed_targets(targets, max(0, step - dense), warmup)

    def unused_in_graph(self) -> torch.Tensor:
        """0 · (λ and every gate parameter): keeps them in the autograd graph on dense steps, so DDP
        does not fail on parameters that received no gradient (:meth:`on_before_optimizer_step` then
        drops that zero gradient)."""
        return 0.0 * sum(p.sum() for p in self.dual_and_gate_parameters())

    def dual_and_gate_parameters(self) -> list[nn.Parameter]:
        """λ (and λ₂) and every gate parameter: what only the budget phase trains."""
        return [*self.dual_parameters(), *self.encoder.gates.parameters()]

    def dual_parameters(self) -> list[nn.Parameter]:
        """λ, and λ₂ under the augmented Lagrangian: the dual group's parameters."""
        return [self.lam] if self.lam_quadratic is None else [self.lam, self.lam_quadratic]

    def on_fit_start(self) -> None:
        """Every module in train mode: a pretrained backbone comes from ``from_pretrained`` in eval mode
        (dropout off), and Lightning keeps the modes it finds at the start of training (it switches to
        eval mode for validation and test and restores the modes after).

        Under DDP every rank starts with the same generator state (``ddp_spawn`` copies the parent's,
        ``torchrun`` runs the same ``seed_everything``), so every rank would draw the same
        Hard-Concrete noise and dropout masks on its different examples. Each rank r therefore
        reseeds torch with s + r, where s is one draw from that shared state: the noise differs per
        rank and a run stays reproducible from its seed. One process keeps its stream untouched. On
        ``--resume`` every rank first restores the checkpoint's (rank 0's) generator state
        (:class:`commands.run_state.RngState` runs before this hook), then reseeds the same way: the
        ranks' noise differs again, though not as the uninterrupted run's would."""
        self.train()
        if self.trainer.world_size > 1:
            shared = int(torch.randint(0, 2**62, (1,)))
            torch.manual_seed(shared + self.global_rank)

    def on_before_optimizer_step(self, optimizer) -> None:
        """On a step that does not gate (the dense phase, a densely trained baseline) λ and the gates
        had the zero gradient of :meth:`unused_in_graph`; set it to None, so AdamW skips them: no
        weight decay, no moments, no step count. Their Adam state then starts at the first gated step,
        and λ after k gated steps is the same whatever ``dense_steps`` was (Adam's bias correction
        counts the gated steps only)."""
        if not self.gating:
            for p in self.dual_and_gate_parameters():
                p.grad = None

    def log_example_mean(self, stage: str, name: str, batch: dict, values: torch.Tensor, prog_bar: bool = False) -> None:
        """Log ``{stage}/{name}``: the mean of ``values`` (B,), one per example of ``batch``, over the
        epoch's distinct examples of every DDP rank (:class:`lightning_modules.metrics.ExampleMean`)."""
        metric = self.example_means[f"{stage}_{name}"]
        metric.update(batch[DATASET_INDEX], values.detach().float())
        self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=prog_bar)

    def log_retention(self, stage: str, out, on_step: bool, targets: torch.Tensor | None = None,
                      path: str = "hard", expected: torch.Tensor | None = None, batch: dict | None = None) -> None:
        """Achieved vs target at every step (train: ``expected`` retention ĝ_ℓ over every rank's
        batch, this rank's fraction of open sampled gates, the current target ρ_ℓ(t) and λ_ℓ;
        val/test, per example of ``batch`` and averaged over the epoch's examples of every rank: the
        kept fraction of the hard path, ``kept_fraction_l<ℓ>``, or of the soft path,
        ``soft_kept_fraction_l<ℓ>``: its open gates, the hard path's top-M unless a kept token's gate is 0)."""
        for k, layer in enumerate(self.encoder.gate_layers):
            if stage == "train":
                self.log(f"train/expected_retention_l{layer}", expected[k].detach(), on_step=True, on_epoch=True)
                self.log(f"train/open_fraction_l{layer}", out.achieved_retention[k], on_step=True, on_epoch=True)
                self.log(f"train/target_l{layer}", targets[k], on_step=True, on_epoch=False)
                self.log(f"train/lambda_l{layer}", self.lam[k].detach(), on_step=True, on_epoch=False)
                if self.lam_quadratic is not None:
                    self.log(f"train/lambda2_l{layer}", self.lam_quadratic[k].detach(), on_step=True, on_epoch=False)
            else:
                prefix = "" if path == "hard" else f"{path}_"
                self.log_example_mean(stage, f"{prefix}kept_fraction_l{layer}", batch, out.kept_fractions[k])
        if self.flops_budget is not None:  # the FLOPs constraint: expected vs F (train), achieved per example
            if stage == "train":
                self.log("train/expected_flops", expected[-1].detach(), on_step=True, on_epoch=True)
                self.log("train/target_flops", targets[-1], on_step=True, on_epoch=False)
                self.log("train/lambda_flops", self.lam[-1].detach(), on_step=True, on_epoch=False)
            elif out.flops_fractions is not None:  # (`retention evaluate` may swap in a ratio budget)
                prefix = "" if path == "hard" else f"{path}_"
                self.log_example_mean(stage, f"{prefix}flops_fraction", batch, out.flops_fractions)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        o = self.optim
        gate_params = list(self.encoder.gates.parameters())
        dual = self.dual_parameters()
        gate_ids = {id(p) for p in gate_params + dual}
        primal = [p for p in self.parameters() if id(p) not in gate_ids]
        groups = [
            {"params": primal, "lr": o.lr, "weight_decay": o.weight_decay, "name": "backbone"},
            {"params": gate_params, "lr": o.gate_lr, "weight_decay": o.weight_decay, "name": "gate"},
        ]
        if o.dual_step == "adam":  # else λ takes the paper's plain ascent step in optimizer_step
            groups.append({"params": dual, "lr": o.dual_lr, "weight_decay": 0.0, "maximize": True, "name": "dual"})
        return groups

    def fit_steps(self) -> int | None:
        """Optimizer steps of the fit (the Trainer's estimate); None when no Trainer is attached."""
        try:
            return int(self.trainer.estimated_stepping_batches)
        except RuntimeError:  # not attached to a Trainer: configure_optimizers called on its own
            return None

    def total_steps(self) -> int:
        """Optimizer steps of the fit (the Trainer's estimate); 1 when no Trainer is attached."""
        steps = self.fit_steps()
        return 1 if steps is None else steps

    def configure_optimizers(self):
        o = self.optim
        steps = self.fit_steps()
        if steps is not None:
            self._phases = self.check_phases(steps)
        optimizer = torch.optim.AdamW(self.param_groups(), betas=tuple(o.betas))
        primal = functools.partial(lr_factor, warmup_steps=o.warmup_steps, total_steps=self.total_steps(),
                                   scheduler=o.scheduler)
        if o.restart_after_dense and self._phases is not None and self._phases[0] > 0:
            primal = functools.partial(restarted_lr_factor, dense_steps=self._phases[0], warmup_steps=o.warmup_steps,
                                       total_steps=self.total_steps(), scheduler=o.scheduler)
        factors = [primal, primal, lambda _: 1.0][: len(optimizer.param_groups)]  # η never changes
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs):
        """The step (λ ascends on ĝ_ℓ − ρ_ℓ(t)), then the one place that sets the constraint's form,
        ``budget.constraint``. ``inequality`` (the paper's ĝ_ℓ ≤ ρ_ℓ): λ_ℓ ← max(0, λ_ℓ), so once
        ĝ_ℓ < ρ_ℓ nothing holds ĝ_ℓ at ρ_ℓ and the task loss may close gates below it. ``equality``
        (ĝ_ℓ = ρ_ℓ, CoFiPruning's Lagrangian, Xia et al., ACL 2022): no projection; while ĝ_ℓ < ρ_ℓ
        λ_ℓ falls below 0 and λ_ℓ·(ĝ_ℓ − ρ_ℓ) pushes ĝ_ℓ back up, holding it at ρ_ℓ from both sides.
        λ₂ of the augmented Lagrangian is projected onto λ₂ ≥ 0 under both. Under
        ``optim.dual_step=sgd`` λ (and λ₂) take the paper's plain ascent step here,
        :func:`retention.budget.dual_ascent`, on the gradient of the step just taken."""
        super().optimizer_step(*args, **kwargs)
        if self.optim.dual_step == "sgd":
            dual_ascent(self.dual_parameters(), self.optim.dual_lr)
        with torch.no_grad():
            if self.optim.constraint == "inequality":
                self.lam.clamp_(min=0.0)  # projection: λ ← max(0, λ)
            if self.lam_quadratic is not None:
                self.lam_quadratic.clamp_(min=0.0)  # λ₂ ≥ 0 under both forms (its ascent only raises it)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if not gradient_clip_val:
            return
        params = [p for g in PRIMAL_GROUPS for p in optimizer.param_groups[g]["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
