"""The train / val / test DataLoaders every DataModule here builds the same way."""

from __future__ import annotations

from torch.utils.data import DataLoader

__all__ = ["SplitLoaders"]


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
