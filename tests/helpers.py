"""Tiny configs shared by the Lightning and CLI tests, the Markdown-table reader, and
the by-hand recomputation of a trained run's test metrics from its checkpoint."""

import dataclasses
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from commands.checkpoints import load_checkpoint
from commands.runner import CONFIG_NEXT_TO_CHECKPOINT
from conf.schema import Config
from datamodules import build_datamodule
from lightning_modules import build_system
from lightning_modules import optimisation as default_optimisation

TINY = [
    "model.hidden_size=16",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "gate.layers=[1]",
    "data.seq_len=32",
    "data.vocab_size=40",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "optim.warmup_steps=0",
    "budget.dense_fraction=0",
    "budget.warmup_fraction=0",
    "optim.restart_after_dense=false",  # the schema's single schedule, not the main job's restart
    "budget.constraint=inequality",  # the schema's (the paper's) form, not the main job's equality + augmented
    "budget.lagrangian=linear",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
]


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The rows of the Markdown pipe table in ``text`` (as ``DataFrame.to_markdown`` writes it), column -> cell."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def optimisation(**overrides):
    """The schema's default :class:`lightning_modules.Optimisation` with ``overrides`` (for tests
    that build a system from modules directly, so a new schema field never breaks them)."""
    return dataclasses.replace(default_optimisation(OmegaConf.structured(Config)), **overrides)


# ---------------------------------------------------------------------------------------------- trained runs
def load_trained(checkpoint: str | Path):
    """(config, data module set up for "test", system in eval mode) of a ``retention train``
    checkpoint, loaded as ``retention evaluate`` loads it (the config.yaml written beside it)."""
    checkpoint = Path(checkpoint)
    cfg = OmegaConf.load(checkpoint.parent / CONFIG_NEXT_TO_CHECKPOINT)
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    system.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    dm.setup("test")
    return cfg, dm, system.eval()


def top_m_fraction(ratio: float, mask: torch.Tensor, protected: torch.Tensor) -> list[float]:
    """Per row, the fraction the hard path keeps: clamp(⌈ρ·T_valid⌉, n_protected, T_valid) / T_valid."""
    out = []
    for row_mask, row_prot in zip(mask.bool(), protected.bool()):
        n, n_prot = int(row_mask.sum()), int((row_prot & row_mask).sum())
        out.append(min(max(math.ceil(round(ratio * n, 9)), n_prot), n) / n)
    return out
