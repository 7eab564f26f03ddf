"""Sequence classification with Adaptive Retention: the head reads [CLS] (position 0, protected).

Single-label (:class:`RetentionClassifier`: cross-entropy, accuracy) and multi-label
(:class:`RetentionMultiLabelClassifier`: BCE with logits, micro and macro F1) share everything but
the loss and the metrics (:meth:`make_loss`, :meth:`make_metrics`, :meth:`metric_inputs`).

Batches that carry ``needle_positions`` (the needle task) also log ``{stage}/needle_kept_hard``: the
fraction of sequences whose decisive tokens all survive the hard path's selection.

When a data module cuts long documents into sliding windows (batches then carry ``doc_id``), every
metric is also logged per document as ``{stage}/<name>_<path>_doc`` (:class:`DocumentMetric`).

Every val/test metric is :class:`lightning_modules.metrics.Deduplicated`: its inputs are gathered from
every DDP rank and an example (a window) that the distributed sampler repeated counts once."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

from datamodules.loaders import DATASET_INDEX

from .metrics import Deduplicated, ExampleMean
from .system import EVAL_PATHS, Optimisation, RetentionSystem

__all__ = ["needles_kept", "RetentionClassifier", "RetentionMultiLabelClassifier", "RetentionMultiQueryClassifier", "DocumentMetric", "EVAL_PATHS",
           "logits_and_labels", "probabilities_and_int_labels"]


def needles_kept(out, needle_positions: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every decisive token of the sequence (its original positions ``needle_positions``,
    (B, N)) is among the rows the encoder kept (``out.positions`` where ``out.valid``)."""
    found = (out.positions.unsqueeze(1) == needle_positions.unsqueeze(2)) & out.valid.unsqueeze(1)  # (B, N, T_out)
    return found.any(-1).all(-1)


def logits_and_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-label metric inputs: the logits and the labels as class indices."""
    return logits, labels.long()


def probabilities_and_int_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # probabilities, not logits: torchmetrics applies the sigmoid only when a value lies outside [0, 1]
    return torch.sigmoid(logits), labels.long()


class DocumentMetric(Metric):
    """``metric`` over whole documents that were cut into sliding windows: the windows' logits are
    pooled per ``doc_id`` (``pool``: ``mean`` for single-label, ``amax`` for multi-label, where a clause
    anywhere in the document counts), their labels by max (a document has every label of any of its
    windows), then ``metric`` scores one row per document. The states are concatenated across
    processes, so windows of one document seen by different DDP ranks are pooled together."""

    full_state_update = False

    def __init__(self, metric: Metric, inputs: Callable, pool: str) -> None:
        super().__init__()
        metric.sync_on_compute = False  # it scores the documents pooled from the gathered states
        self.metric, self.inputs, self.pool = metric, inputs, pool
        for name in ("doc_ids", "logits", "labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, doc_ids: torch.Tensor) -> None:
        self.doc_ids.append(doc_ids)
        self.logits.append(logits.detach().float())
        self.labels.append(labels.float().reshape(len(labels), -1))

    @staticmethod
    def _pool(values: torch.Tensor, groups: torch.Tensor, n: int, how: str) -> torch.Tensor:
        index = groups.unsqueeze(-1).expand_as(values)
        out = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, index, values, reduce=how, include_self=False)

    def compute(self) -> torch.Tensor:
        doc_ids, logits, labels = (dim_zero_cat(x) for x in (self.doc_ids, self.logits, self.labels))
        docs, groups = torch.unique(doc_ids, return_inverse=True)
        pooled = self._pool(logits, groups, len(docs), self.pool)
        doc_labels = self._pool(labels, groups, len(docs), "amax")
        if doc_labels.shape[1] == 1:
            doc_labels = doc_labels.squeeze(1)
        self.metric.reset()
        self.metric.update(*self.inputs(pooled, doc_labels))
        return self.metric.compute()


class RetentionClassifier(RetentionSystem):
    """Single-label classification: a two-layer head on [CLS]'s last hidden state (dropout, d → d,
    tanh, dropout, d → ``num_labels``), cross-entropy, accuracy. ``encoder`` and ``optim`` as in
    :class:`RetentionSystem`; the head's width d is the encoder's hidden size."""

    def __init__(self, encoder: nn.Module, optim: Optimisation, num_labels: int, dropout: float,
                 method: str = "gate") -> None:
        super().__init__(encoder, optim, method)
        d = self.encoder.backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, d), nn.Tanh(),
                                  nn.Dropout(dropout), nn.Linear(d, num_labels))
        self.loss_fn = self.make_loss()
        self.example_loss_fn = self.make_loss("none")
        self.metric_names = tuple(self.make_metrics(num_labels))
        self.example_means.update({f"{stage}_needle_kept_hard": ExampleMean() for stage in ("val", "test")})
        self.metrics = nn.ModuleDict({
            f"{stage}_{path}_{name}": Deduplicated(metric, num_inputs=2)
            for stage in ("val", "test") for path in EVAL_PATHS for name, metric in self.make_metrics(num_labels).items()
        })
        self.doc_metrics = nn.ModuleDict({
            f"{stage}_{path}_{name}": Deduplicated(DocumentMetric(metric, self.metric_inputs, self.DOC_POOL), num_inputs=3)
            for stage in ("val", "test") for path in EVAL_PATHS for name, metric in self.make_metrics(num_labels).items()
        })

    def make_loss(self, reduction: str = "mean") -> nn.Module:
        """The task loss; ``reduction="none"`` gives one value per example (B,)."""
        return nn.CrossEntropyLoss(reduction=reduction)

    def make_metrics(self, num_labels: int) -> dict[str, Metric]:
        """Metric name → a fresh metric; logged as ``{stage}/<name>_<path>``; ``METRIC`` is among them."""
        return {"acc": MulticlassAccuracy(num_classes=num_labels, average="micro")}

    # (logits, labels) → what the metrics take; a plain function, so metrics holding it pickle alone
    metric_inputs = staticmethod(logits_and_labels)
    DOC_POOL = "mean"  # how DocumentMetric pools a document's window logits

    def forward(self, input_ids, attention_mask=None, mode: str = "auto", plan=None):
        out = self.encoder(input_ids, attention_mask, mode=mode, plan=plan)
        return self.head(out.last_hidden_state[:, 0]), out

    def classify(self, batch: dict, mode: str):
        """(logits, encoder output) for a batch on one path (with the batch's host plan, if it has
        one: :mod:`lightning_modules.host_plans`); subclasses read other positions."""
        return self(batch["input_ids"], batch["attention_mask"], mode=mode, plan=self.host_plan_of(batch))

    def task_loss(self, batch: dict, mode: str):
        logits, out = self.classify(batch, mode)
        return self.loss_fn(logits, batch["labels"]), out

    def example_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task loss of each example (B,), whose mean is :attr:`loss_fn`'s batch loss."""
        losses = self.example_loss_fn(logits, labels)
        return losses.reshape(len(losses), -1).mean(1)

    def _evaluate(self, stage: str, batch) -> None:
        index = batch[DATASET_INDEX]
        for path in self.eval_paths:
            logits, out = self.classify(batch, path)
            preds, target = self.metric_inputs(logits, batch["labels"])
            for name in self.metric_names:
                key = f"{stage}_{path}_{name}"
                self.metrics[key].update(index, preds, target)
                self.log(f"{stage}/{name}_{path}", self.metrics[key], on_step=False, on_epoch=True, prog_bar=path == "hard" and name == self.METRIC)
                if "doc_id" in batch:
                    self.doc_metrics[key].update(index, logits, batch["labels"], batch["doc_id"])
                    self.log(f"{stage}/{name}_{path}_doc", self.doc_metrics[key], on_step=False, on_epoch=True)
            if path in ("hard", "soft"):
                self.log_retention(stage, out, on_step=False, path=path, batch=batch)
            if path == "hard" and "needle_positions" in batch:
                self.log_example_mean(stage, "needle_kept_hard", batch, needles_kept(out, batch["needle_positions"]).float())
            if path == "soft":
                self.log_example_mean(stage, "loss_soft", batch, self.example_losses(logits, batch["labels"]))


class RetentionMultiLabelClassifier(RetentionClassifier):
    """Multi-label classification (e.g. CUAD clause types): one sigmoid per label, BCE with logits,
    micro and macro F1 at threshold 0.5 (a label that no evaluated example has and that is never
    predicted counts as F1 = 0 in the macro average: torchmetrics' ``zero_division=0``). Batches carry
    multi-hot float ``labels``."""

    METRIC = "f1_micro"
    METRIC_LABEL = "micro F1"

    def make_loss(self, reduction: str = "mean") -> nn.Module:
        return nn.BCEWithLogitsLoss(reduction=reduction)

    def make_metrics(self, num_labels: int) -> dict[str, Metric]:
        return {"f1_micro": MultilabelF1Score(num_labels, average="micro"),
                "f1_macro": MultilabelF1Score(num_labels, average="macro")}

    metric_inputs = staticmethod(probabilities_and_int_labels)
    DOC_POOL = "amax"


class RetentionMultiQueryClassifier(RetentionClassifier):
    """One prediction per query token (multi-query associative recall): batches carry
    ``query_positions`` (B, Q) and ``labels`` (B, Q). The queries are protected, so they survive
    every gate; the head reads each query's hidden state wherever it ended up in the (possibly
    shortened) sequence. Logits are (B, C, Q), the layout cross-entropy and torchmetrics take."""

    def protected(self, batch: dict) -> torch.Tensor:
        """The encoder's protected tokens and every query."""
        return self.encoder.protected_mask(batch["input_ids"]).scatter(1, batch["query_positions"], True)

    def classify(self, batch: dict, mode: str):
        qpos = batch["query_positions"]
        out = self.encoder(batch["input_ids"], batch["attention_mask"], protected=self.protected(batch), mode=mode,
                           plan=self.host_plan_of(batch))
        found = (out.positions.unsqueeze(1) == qpos.unsqueeze(2)) & out.valid.unsqueeze(1)  # (B, Q, T_out)
        rows = found.to(torch.int8).argmax(-1, keepdim=True)
        h = out.last_hidden_state.gather(1, rows.expand(-1, -1, out.last_hidden_state.shape[-1]))
        return self.head(h).transpose(1, 2), out
