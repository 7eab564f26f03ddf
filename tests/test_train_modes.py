"""Module modes in a fit: every module of the system trains in train mode (dropout on), including a
backbone that ``from_pretrained`` returned in eval mode, and validation and test run in eval mode."""

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from conf.compose import compose
from datamodules import build_datamodule
from lightning_modules import build_system

from .helpers import TINY


class ModeTrace(Callback):
    """The names of the system's modules whose mode is wrong at the first training batch (not in
    train mode) and at every validation and test batch (not in eval mode)."""

    def __init__(self):
        self.wrong = {"train": None, "val": [], "test": []}
        self.seen = {"train": 0, "val": 0, "test": 0}

    @staticmethod
    def _off(module, training: bool) -> list[str]:
        return [name or "<system>" for name, m in module.named_modules() if m.training != training]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.wrong["train"] is None:
            self.wrong["train"] = self._off(pl_module, True)
        self.seen["train"] += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.wrong["val"] += self._off(pl_module, False)
        self.seen["val"] += 1

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.wrong["test"] += self._off(pl_module, False)
        self.seen["test"] += 1


@pytest.mark.parametrize("model", ["random", "minilm"])
def test_every_module_trains_in_train_mode_and_evaluates_in_eval_mode(model):
    overrides = [*TINY, "data.train_size=32", "data.val_size=16", "data.test_size=16"]
    if model == "minilm":
        overrides.append("model=minilm")  # the packaged pretrained MiniLM: from_pretrained gives eval mode
    cfg = compose(overrides)
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    n_dropout = sum(type(m).__name__ == "Dropout" for m in system.modules())
    assert n_dropout > 2  # the backbone's dropout modules are there to be switched
    trace = ModeTrace()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[trace],
                        num_sanity_val_steps=1, limit_val_batches=1, limit_test_batches=1, val_check_interval=1)
    trainer.fit(system, datamodule=dm)
    trainer.test(system, datamodule=dm, verbose=False)
    assert trace.seen["train"] == 2 and trace.seen["val"] >= 2 and trace.seen["test"] == 1
    assert trace.wrong == {"train": [], "val": [], "test": []}
