"""The synthetic long-context suite: tasks where only a few tokens decide the label, so a gate
that keeps them provably wins and one that drops them provably loses (ListOps is the exception
that needs most of its tokens — the hard case).

One file per task family: ``needle.py``, ``recall.py`` (key-value retrieval, multi-query associative
recall), ``listops.py``, ``synthetic_qa.py``; this one holds what they share. Every generator is a
pure function of (spec, size, seed) (synthetic QA also of the tokenizer's word list), vectorised in
torch where the task allows (needle, recall) and a seeded :class:`random.Random` where it is recursive
(ListOps). Splits use disjoint seed streams (:func:`split_seed`).

Shared vocabulary layout: 0 [PAD], 1 [CLS], 2 [SEP]; task tokens from 3 on; then distractors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import TensorDataset

from conf.data_schema import TokenTaskConfig

from .loaders import ConfiguredDataModule

__all__ = ["PAD_ID", "CLS_ID", "SEP_ID", "FIRST_TASK_TOKEN", "SyntheticDataModule", "DictDataset", "split_seed", "spec_from",
           "lengths_and_mask", "frame_sequences", "random_slots"]

PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
FIRST_TASK_TOKEN = 3
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


def split_seed(seed: int, split: str) -> int:
    """The generator seed of ``split`` for data seed ``seed``: disjoint streams for train, val and test."""
    return seed * 1000 + _SPLIT_OFFSET[split]


class DictDataset(TensorDataset):
    """A TensorDataset whose items are dicts keyed by field name."""

    def __init__(self, data: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
        super().__init__(*(data[k] for k in keys))
        self.keys = keys

    def __getitem__(self, index):
        return dict(zip(self.keys, super().__getitem__(index)))


def spec_from(spec_cls: type, config: Any):
    """The task spec ``spec_cls`` (a frozen dataclass that checks itself) from the config fields of the
    same names; a spec field the config does not have (e.g. ListOps' fixed vocabulary) keeps its default."""
    return spec_cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(spec_cls) if hasattr(config, f.name)})


class SyntheticDataModule(ConfiguredDataModule):
    """Train / val / test splits generated from ``seed`` with a distinct stream per split.

    Subclasses set ``CONFIG`` (a :class:`conf.data_schema.TokenTaskConfig`), ``SPEC`` (the frozen
    dataclass the generator takes, built by :func:`spec_from`), ``keys`` (the batch fields) and
    implement :meth:`generate`; ``num_labels`` and ``vocab_size`` come from the spec.
    """

    CONFIG: type[TokenTaskConfig] = TokenTaskConfig
    SPEC: type
    task = "classification"
    special_token_ids = (CLS_ID, SEP_ID)
    pad_token_id = PAD_ID
    keys: tuple[str, ...] = ("input_ids", "attention_mask", "labels")

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.spec = spec_from(self.SPEC, self.config)
        self.sizes = {"train": self.config.train_size, "val": self.config.val_size, "test": self.config.test_size}
        self.datasets: dict[str, DictDataset] = {}

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_labels(self) -> int:
        return self.spec.num_classes

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    def setup(self, stage: str | None = None) -> None:
        for split, size in self.sizes.items():
            if split not in self.datasets:
                self.datasets[split] = DictDataset(self.generate(size, split_seed(self.hparams.seed, split)), self.keys)


def lengths_and_mask(size: int, seq_len: int, min_seq_len: int, g: torch.Generator):
    """Per row: a length uniform in [min_seq_len or seq_len, seq_len], the position grid, the attention mask."""
    lo = min_seq_len or seq_len
    lengths = torch.randint(lo, seq_len + 1, (size,), generator=g)
    pos = torch.arange(seq_len).expand(size, seq_len)
    return lengths, pos, (pos < lengths.unsqueeze(1)).long()


def frame_sequences(ids: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[CLS] … [SEP] then padding."""
    ids[:, 0] = CLS_ID
    ids.scatter_(1, (lengths - 1).unsqueeze(1), SEP_ID)
    return ids.masked_fill(mask == 0, PAD_ID)


def random_slots(size: int, num_slots: torch.Tensor, k: int, total: int, g: torch.Generator) -> torch.Tensor:
    """``k`` distinct slot indices per row, uniform in ``[0, num_slots[row])`` (vectorised)."""
    keys = torch.rand(size, total, generator=g).masked_fill(torch.arange(total) >= num_slots.unsqueeze(1), 2.0)
    return keys.argsort(dim=1)[:, :k]


