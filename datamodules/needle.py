"""Synthetic long-context needle classification: the label depends on a few tokens hidden in long
distractor text, so a gate that keeps them provably wins and one that drops them provably loses.

Vocabulary: 0 [PAD], 1 [CLS], 2 [SEP]; then ``num_classes × tokens_per_class`` needle tokens
(needle token ``3 + c·tokens_per_class + j`` belongs to class c); the rest are distractors.
A sequence is ``[CLS] x_1 … x_{L−2} [SEP]`` of distractors with ``num_needles`` needle tokens at
distinct random positions; the label is (Σ classes of the needles) mod ``num_classes``.
Random or first-M retention at ratio ρ keeps one needle only with probability ≈ ρ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.data_schema import NeedleDataConfig

from .synthetic import CLS_ID, FIRST_TASK_TOKEN, PAD_ID, SEP_ID, SyntheticDataModule

__all__ = ["NeedleSpec", "generate_needle", "NeedleDataModule", "PAD_ID", "CLS_ID", "SEP_ID"]

_FIRST_NEEDLE = FIRST_TASK_TOKEN


@dataclass(frozen=True)
class NeedleSpec:
    seq_len: int = 512
    min_seq_len: int = 0
    vocab_size: int = 128
    num_classes: int = 4
    num_needles: int = 1
    tokens_per_class: int = 4

    @property
    def first_distractor(self) -> int:
        return _FIRST_NEEDLE + self.num_classes * self.tokens_per_class

    def __post_init__(self) -> None:
        if self.first_distractor >= self.vocab_size:
            raise ValueError(
                f"data.vocab_size={self.vocab_size} is too small: needs > {self.first_distractor} "
                f"(3 special + num_classes·tokens_per_class needle tokens + at least one distractor)"
            )
        if self.num_needles > max(self.min_seq_len or self.seq_len, self.seq_len) - 2:
            raise ValueError(f"data.num_needles={self.num_needles} does not fit in sequences of length {self.seq_len}")
        if self.min_seq_len and self.min_seq_len < self.num_needles + 2:
            raise ValueError(f"data.min_seq_len={self.min_seq_len} must be >= num_needles + 2")

    def needle_class(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Class of needle tokens (−1 for anything that is not a needle)."""
        is_needle = (token_ids >= _FIRST_NEEDLE) & (token_ids < self.first_distractor)
        return torch.where(is_needle, (token_ids - _FIRST_NEEDLE) // self.tokens_per_class, -1)


def generate_needle(spec: NeedleSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` examples, fully determined by ``seed`` (vectorised, no per-example Python loop)."""
    g = torch.Generator().manual_seed(seed)
    t = spec.seq_len
    lo = spec.min_seq_len or t
    lengths = torch.randint(lo, t + 1, (size,), generator=g)
    ids = torch.randint(spec.first_distractor, spec.vocab_size, (size, t), generator=g)
    pos = torch.arange(t).expand(size, t)
    # Needle positions: the first num_needles of a random permutation of the body 1..len-2.
    keys = torch.rand(size, t, generator=g).masked_fill((pos < 1) | (pos >= (lengths - 1).unsqueeze(1)), 2.0)
    needle_pos = keys.argsort(dim=1)[:, : spec.num_needles]
    classes = torch.randint(0, spec.num_classes, (size, spec.num_needles), generator=g)
    variant = torch.randint(0, spec.tokens_per_class, (size, spec.num_needles), generator=g)
    ids.scatter_(1, needle_pos, _FIRST_NEEDLE + classes * spec.tokens_per_class + variant)
    ids[:, 0] = CLS_ID
    ids.scatter_(1, (lengths - 1).unsqueeze(1), SEP_ID)
    attention_mask = (pos < lengths.unsqueeze(1)).long()
    ids = ids.masked_fill(attention_mask == 0, PAD_ID)
    labels = classes.sum(1) % spec.num_classes
    return {"input_ids": ids, "attention_mask": attention_mask, "labels": labels, "needle_positions": needle_pos}


class NeedleDataModule(SyntheticDataModule):
    """Train / val / test splits generated from ``seed`` with a distinct stream per split; batches
    carry ``needle_positions`` beside the model inputs."""

    CONFIG = NeedleDataConfig
    SPEC = NeedleSpec
    # needle_positions (B, num_needles): where the decisive tokens are, for the "needle kept" rate
    keys = ("input_ids", "attention_mask", "labels", "needle_positions")

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_needle(self.spec, size, seed)
