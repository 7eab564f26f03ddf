"""Sequence classification with Adaptive Retention: the head reads [CLS] (position 0, protected)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .system import RetentionSystem

__all__ = ["RetentionClassifier", "EVAL_PATHS"]

# soft: same length, deterministic gates; hard: exact top-M, tokens physically removed;
# dense: the same model with nothing dropped.
EVAL_PATHS = ("soft", "hard", "dense")


class RetentionClassifier(RetentionSystem):
    def __init__(self, num_labels: int, model: dict, gate: dict, budget: dict, optim: dict,
                 vocab_size: int | None, max_positions: int, protected_token_ids: tuple[int, ...] = (),
                 method: str = "gate") -> None:
        super().__init__(model, gate, budget, optim, vocab_size, max_positions, protected_token_ids, method)
        d = self.encoder.backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(model["dropout"]), nn.Linear(d, d), nn.Tanh(),
                                  nn.Dropout(model["dropout"]), nn.Linear(d, num_labels))
        self.loss_fn = nn.CrossEntropyLoss()
        self.metrics = nn.ModuleDict({
            f"{stage}_{path}": MulticlassAccuracy(num_classes=num_labels, average="micro")
            for stage in ("val", "test") for path in EVAL_PATHS
        })

    @classmethod
    def from_config(cls, cfg, dm) -> "RetentionClassifier":
        from omegaconf import OmegaConf

        c = OmegaConf.to_container(cfg, resolve=True)
        return cls(
            num_labels=cfg.model.num_labels or dm.num_labels,
            model=c["model"], gate=c["gate"], budget=c["budget"], optim=c["optim"],
            vocab_size=getattr(dm, "vocab_size", None),
            max_positions=cfg.data.seq_len,
            protected_token_ids=tuple(dm.special_token_ids),
            method=cfg.method,
        )

    def forward(self, input_ids, attention_mask=None, mode: str = "auto"):
        out = self.encoder(input_ids, attention_mask, mode=mode)
        return self.head(out.last_hidden_state[:, 0]), out

    def training_step(self, batch, batch_idx):
        gating = self.gating
        logits, out = self(batch["input_ids"], batch["attention_mask"], mode="soft" if gating else "dense")
        task = self.loss_fn(logits, batch["labels"])
        self.log("train/task_loss", task, prog_bar=True, on_step=True, on_epoch=True)
        if not gating:
            return task + self.unused_in_graph()
        lag, targets = self.constraint_loss(out.expected_retention, out.targets)
        self.log("train/lagrangian", lag.detach(), on_step=True, on_epoch=True)
        self.log_retention("train", out, on_step=True, targets=targets)
        self.log("train/exp_ret", out.expected_retention.mean().detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return task + lag

    def _evaluate(self, stage: str, batch) -> None:
        for path in EVAL_PATHS:
            logits, out = self(batch["input_ids"], batch["attention_mask"], mode=path)
            metric = self.metrics[f"{stage}_{path}"]
            metric(logits, batch["labels"])
            self.log(f"{stage}/acc_{path}", metric, on_step=False, on_epoch=True, prog_bar=path == "hard")
            if path == "hard":
                self.log_retention(stage, out, on_step=False)
            if path == "soft":
                self.log(f"{stage}/loss_soft", self.loss_fn(logits, batch["labels"]), on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        self._evaluate("test", batch)
