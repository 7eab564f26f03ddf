"""What every DataModule here shares: it is built from the fields of its typed config (a
:mod:`conf.data_schema` dataclass), and builds its train / val / test DataLoaders the same way."""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from conf.data_schema import DataConfig

__all__ = ["ConfiguredDataModule", "SplitLoaders"]


class SplitLoaders:
    """Mixin for a LightningDataModule that keeps its splits in ``self.datasets["train"|"val"|"test"]``
    and has ``batch_size``, ``eval_batch_size`` and ``num_workers`` hyperparameters; ``collate_fn``
    (None: torch's default) batches the examples."""

    collate_fn = None

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self.collate_fn,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False)


class ConfiguredDataModule(SplitLoaders, L.LightningDataModule):
    """A DataModule built from the fields of its config ``CONFIG`` (its defaults for the ones not
    given; an unknown field is a ``TypeError``, a choice outside its Enum a ``ConfigError``).
    ``self.config`` is the typed config; ``save_hyperparameters`` records every field, choices as
    their plain strings (a checkpoint then holds no Enum class, so torch's ``weights_only`` loading
    reads it), and not for the logger: the run's params are the flattened config, where these
    fields already are as ``data.<field>`` (a bare ``seed`` beside the top-level one made MLflow
    refuse the run)."""

    CONFIG: type[DataConfig] = DataConfig

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.config = self.CONFIG(**fields)
        self.save_hyperparameters({k: v.value if isinstance(v, Enum) else v for k, v in asdict(self.config).items()},
                                  logger=False)
