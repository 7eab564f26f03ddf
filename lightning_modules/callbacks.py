"""Lightning callbacks of a sweep trial (:mod:`commands.sweep`): stop on a non-finite loss, and
record the validation metric and retention of every epoch for the trial's objective."""

from __future__ import annotations

import lightning as L
import torch

__all__ = ["NaNLossGuard", "ValidationRecorder"]


class NaNLossGuard(L.Callback):
    """Stops a trial whose training loss is not finite (the trial is recorded failed with this reason)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise FloatingPointError(f"training loss is {loss.item()} at step {trainer.global_step}")


class ValidationRecorder(L.Callback):
    """Keeps ``val/<metric>_hard`` and the achieved retention of every validation epoch."""

    def __init__(self, metric: str) -> None:
        self.monitor = f"val/{metric}_hard"
        self.history: list[tuple[float, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        kept = [float(v) for k, v in m.items() if k.startswith("val/kept_fraction_l")]
        if self.monitor in m:
            self.history.append((float(m[self.monitor]), sum(kept) / len(kept) if kept else float("nan")))

    def objective(self) -> tuple[float, float]:
        """(metric, retention) at the validation epoch with the highest metric."""
        if not self.history:
            raise RuntimeError(f"no validation epoch logged {self.monitor}; the objective needs one")
        return max(self.history, key=lambda h: h[0])
