"""Synthetic long-context needle classification: the label depends on a few tokens hidden in long
distractor text, so a gate that keeps them provably wins and one that drops them provably loses.

Vocabulary: 0 [PAD], 1 [CLS], 2 [SEP]; then ``num_classes × tokens_per_class`` needle tokens
(needle token ``3 + c·tokens_per_class + j`` belongs to class c); the rest are distractors.
A sequence is ``[CLS] x_1 … x_{L−2} [SEP]`` of distractors with ``num_needles`` needle tokens at
distinct random positions; the label is (Σ classes of the needles) mod ``num_classes``.
Random or first-M retention at ratio ρ keeps one needle only with probability ≈ ρ.

**Cue variant** (``data.cue_families = F > 0``): the decisive token depends on another token. Every
sequence holds F needles, one of each *family* f (token ``3 + (f·num_classes + c)·tokens_per_class + j``
for class c), at distinct random positions, and just before [SEP] a *cue* token (``first_cue + f``,
after the needle tokens) naming one family; the label is the class of the cued family's needle.
Which needle decides is set by the cue, so a scorer that sees each token alone (no context vector)
can only keep needles at random when the budget is smaller than F, while one that also sees the cue
can keep the right one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.data_schema import NeedleDataConfig

from .synthetic import CLS_ID, FIRST_TASK_TOKEN, PAD_ID, SEP_ID, SyntheticDataModule, frame_sequences, lengths_and_mask

__all__ = ["NeedleSpec", "generate_needle", "generate_cued_needle", "NeedleDataModule", "PAD_ID", "CLS_ID", "SEP_ID"]

_FIRST_NEEDLE = FIRST_TASK_TOKEN


@dataclass(frozen=True)
class NeedleSpec:
    seq_len: int = 512
    min_seq_len: int = 0
    vocab_size: int = 128
    num_classes: int = 4
    num_needles: int = 1
    tokens_per_class: int = 4
    cue_families: int = 0  # > 0: the cue variant (module docstring)

    @property
    def first_cue(self) -> int:
        return _FIRST_NEEDLE + max(self.cue_families, 1) * self.num_classes * self.tokens_per_class

    @property
    def first_distractor(self) -> int:
        return self.first_cue + self.cue_families

    def __post_init__(self) -> None:
        if self.first_distractor >= self.vocab_size:
            raise ValueError(
                f"data.vocab_size={self.vocab_size} is too small: needs > {self.first_distractor} "
                f"(3 special + num_classes·tokens_per_class needle tokens per family + cue tokens + at least one distractor)"
            )
        if self.cue_families and self.num_needles != 1:
            raise ValueError("data.num_needles applies to the plain needle task: with data.cue_families=F every "
                             "sequence holds F needles (one per family); leave num_needles at 1")
        if self.cue_families and self.cue_families + 3 > (self.min_seq_len or self.seq_len):
            raise ValueError(f"data.cue_families={self.cue_families} needles + cue + [CLS]/[SEP] do not fit in "
                             f"length {self.min_seq_len or self.seq_len}")
        if self.num_needles > max(self.min_seq_len or self.seq_len, self.seq_len) - 2:
            raise ValueError(f"data.num_needles={self.num_needles} does not fit in sequences of length {self.seq_len}")
        if self.min_seq_len and self.min_seq_len < self.num_needles + 2:
            raise ValueError(f"data.min_seq_len={self.min_seq_len} must be >= num_needles + 2")

    def needle_class(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Class of needle tokens (−1 for anything that is not a needle, cue tokens included)."""
        is_needle = (token_ids >= _FIRST_NEEDLE) & (token_ids < self.first_cue)
        return torch.where(is_needle, (token_ids - _FIRST_NEEDLE) // self.tokens_per_class % self.num_classes, -1)

    def needle_family(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Family of needle tokens (0 in the plain task; −1 for anything that is not a needle)."""
        is_needle = (token_ids >= _FIRST_NEEDLE) & (token_ids < self.first_cue)
        return torch.where(is_needle, (token_ids - _FIRST_NEEDLE) // (self.tokens_per_class * self.num_classes), -1)


def generate_needle(spec: NeedleSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` examples, fully determined by ``seed`` (vectorised, no per-example Python loop)."""
    if spec.cue_families:
        return generate_cued_needle(spec, size, seed)
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


def generate_cued_needle(spec: NeedleSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """The cue variant (module docstring). ``needle_positions`` (B, 1) is the decisive needle's position,
    ``family_positions`` (B, F) every family's needle, ``cue_position`` (B,) the cue's (length − 2)."""
    g = torch.Generator().manual_seed(seed)
    t, f, c = spec.seq_len, spec.cue_families, spec.num_classes
    lengths, pos, mask = lengths_and_mask(size, t, spec.min_seq_len, g)
    ids = torch.randint(spec.first_distractor, spec.vocab_size, (size, t), generator=g)
    # Needle slots: the body 1..len−3 (len−2 holds the cue); family k's needle at family_pos[:, k].
    keys = torch.rand(size, t, generator=g).masked_fill((pos < 1) | (pos >= (lengths - 2).unsqueeze(1)), 2.0)
    family_pos = keys.argsort(dim=1)[:, :f]
    classes = torch.randint(0, c, (size, f), generator=g)
    variant = torch.randint(0, spec.tokens_per_class, (size, f), generator=g)
    ids.scatter_(1, family_pos, _FIRST_NEEDLE + (torch.arange(f) * c + classes) * spec.tokens_per_class + variant)
    cue = torch.randint(0, f, (size, 1), generator=g)
    cue_pos = lengths - 2
    ids.scatter_(1, cue_pos.unsqueeze(1), spec.first_cue + cue)
    ids = frame_sequences(ids, lengths, mask)
    return {"input_ids": ids, "attention_mask": mask, "labels": classes.gather(1, cue).squeeze(1),
            "needle_positions": family_pos.gather(1, cue), "family_positions": family_pos, "cue_position": cue_pos}


class NeedleDataModule(SyntheticDataModule):
    """Train / val / test splits generated from ``seed`` with a distinct stream per split; batches
    carry ``needle_positions`` beside the model inputs."""

    CONFIG = NeedleDataConfig
    SPEC = NeedleSpec
    # needle_positions (B, num_needles): where the decisive tokens are, for the "needle kept" rate
    keys = ("input_ids", "attention_mask", "labels", "needle_positions")

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_needle(self.spec, size, seed)
