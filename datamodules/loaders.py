"""What every DataModule here shares: it is built from the fields of its typed config (a
:mod:`conf.data_schema` dataclass), and builds its train / val / test DataLoaders the same way."""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from conf.data_schema import DataConfig

__all__ = ["ConfiguredDataModule", "DATASET_INDEX", "HOST_VIEW", "HostViewCollate", "IndexedCollate", "IndexedDataset",
           "OnHost", "SplitLoaders", "host_view"]

DATASET_INDEX = "dataset_index"
"""The batch key of each row's position in its split's dataset (validation and test batches)."""

HOST_VIEW = "host_view"
"""The batch key of the batch's host view: an :class:`OnHost` holding the collated CPU tensors
(every split; see :class:`HostViewCollate`)."""


class OnHost:
    """``value``, carried in a batch without being moved to the device. Lightning's
    ``transfer_batch_to_device`` (``apply_to_collection``) moves every tensor it finds inside Mappings,
    sequences, namedtuples and dataclasses (and the Hugging Face ``BatchEncoding.to`` every value with
    a ``to``); a plain object with no ``to`` is none of those, so it stays on the host, untouched.
    It iterates as empty: Lightning infers ``self.log``'s batch size by walking the batch, and a
    non-iterable value there reads as a second, unknown batch size ("Trying to infer the
    `batch_size` from an ambiguous collection", a warning every training run printed); an empty
    iterable is walked past."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __iter__(self):
        return iter(())


def host_view(batch) -> dict | None:
    """The batch's host view (:data:`HOST_VIEW`): its collated tensors as they were on the host, even
    after Lightning moved the batch to the device; None for a batch that has none (built by hand)."""
    holder = batch.get(HOST_VIEW)
    return None if holder is None else holder.value


class HostViewCollate:
    """Batches examples with ``collate_fn`` (None: torch's default) and adds the batch's host view,
    ``batch[HOST_VIEW] = OnHost(<a shallow copy of the collated batch>)``: the same CPU tensors, which
    stay reachable on the host once the batch is on the device. The systems build each step's host
    plan from it (:mod:`lightning_modules.host_plans`), so that the forward reads nothing back from
    the device; the copy is of the dict, not of the tensors, and costs nothing."""

    def __init__(self, collate_fn=None) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(self, examples):
        return self.with_view(self.collate_fn(examples))

    @staticmethod
    def with_view(batch):
        """``batch`` (a dict, or the ``BatchEncoding`` of the Hugging Face collators) with its host view."""
        batch[HOST_VIEW] = OnHost(dict(batch))
        return batch


class IndexedDataset(Dataset):
    """``dataset`` whose item ``i`` is ``(i, dataset[i])``: the position travels with the example."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


class IndexedCollate(HostViewCollate):
    """Batches ``(i, example)`` pairs of an :class:`IndexedDataset` with ``collate_fn`` (None: torch's
    default) and adds the positions as ``batch[DATASET_INDEX]`` (B,), then the host view.

    Under DDP, Lightning's ``DistributedSampler`` pads an evaluation split so that every rank gets the
    same number of examples (rank r reads positions r, r + W, ... of the split followed by its first
    few again); the metrics gather this index with their states and count each position once."""

    def __call__(self, items):
        batch = self.collate_fn([example for _, example in items])
        batch[DATASET_INDEX] = torch.tensor([index for index, _ in items], dtype=torch.long)
        return self.with_view(batch)


class SplitLoaders:
    """Mixin for a LightningDataModule that keeps its splits in ``self.datasets["train"|"val"|"test"]``
    and has ``batch_size``, ``eval_batch_size`` and ``num_workers`` hyperparameters; ``collate_fn``
    (None: torch's default) batches the examples. Every batch carries its host view,
    ``batch[HOST_VIEW]`` (:class:`HostViewCollate`); validation and test batches also each row's
    position in its split, ``batch[DATASET_INDEX]`` (:class:`IndexedCollate`)."""

    collate_fn = None

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        indexed = split != "train"
        return DataLoader(
            IndexedDataset(self.datasets[split]) if indexed else self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=(IndexedCollate if indexed else HostViewCollate)(self.collate_fn),
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
