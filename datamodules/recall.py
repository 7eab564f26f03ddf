"""Associative recall over long distractor text: key-value retrieval (one query) and multi-query
associative recall (MQAR; Zoology, Arora et al. 2023). The label is decodable from the query and its
pair alone, so a gate that keeps them wins. Shared layout: :mod:`datamodules.synthetic`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.data_schema import KVRetrievalDataConfig, MQARDataConfig

from .synthetic import FIRST_TASK_TOKEN, SyntheticDataModule, frame_sequences, lengths_and_mask, random_slots

__all__ = ["KVSpec", "generate_kv_retrieval", "KVRetrievalDataModule", "MQARSpec", "generate_mqar", "MQARDataModule"]


# ---------------------------------------------------------------------------- key-value retrieval
@dataclass(frozen=True)
class KVSpec:
    """``[CLS] … k₁ v₁ … k_P v_P … q [SEP]``: P key-value pairs (adjacent, at random positions among
    distractors), then the query key q (one of the P keys) just before [SEP]. Label = the class of
    the value paired with q. Keys are tokens 3..3+num_keys−1, values the next num_classes tokens."""

    seq_len: int = 1024
    min_seq_len: int = 0
    vocab_size: int = 256
    num_keys: int = 32
    num_classes: int = 8
    num_pairs: int = 4

    @property
    def first_value(self) -> int:
        return FIRST_TASK_TOKEN + self.num_keys

    @property
    def first_distractor(self) -> int:
        return self.first_value + self.num_classes

    def __post_init__(self) -> None:
        if self.first_distractor >= self.vocab_size:
            raise ValueError(f"data.vocab_size={self.vocab_size} is too small: needs > {self.first_distractor} "
                             "(3 special + num_keys + num_classes + at least one distractor)")
        if self.num_pairs > self.num_keys:
            raise ValueError(f"data.num_pairs={self.num_pairs} exceeds data.num_keys={self.num_keys} (keys are distinct)")
        shortest = self.min_seq_len or self.seq_len
        if 2 * self.num_pairs + 3 > shortest:
            raise ValueError(f"{self.num_pairs} pairs + query + [CLS]/[SEP] do not fit in length {shortest}")


def generate_kv_retrieval(spec: KVSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` examples determined by ``seed``; also returns ``pair_positions`` (B, P) (position of
    each key; its value follows), ``query_position`` (B,) and ``query_pair`` (B,)."""
    g = torch.Generator().manual_seed(seed)
    lengths, pos, mask = lengths_and_mask(size, spec.seq_len, spec.min_seq_len, g)
    ids = torch.randint(spec.first_distractor, spec.vocab_size, (size, spec.seq_len), generator=g)
    # Pair slots: positions 1 + 2s, s < (len − 3) // 2, so pairs never touch the query or [SEP].
    slots = random_slots(size, (lengths - 3) // 2, spec.num_pairs, spec.seq_len // 2, g)
    key_pos = 1 + 2 * slots
    keys = torch.rand(size, spec.num_keys, generator=g).argsort(1)[:, : spec.num_pairs]  # distinct keys
    values = torch.randint(0, spec.num_classes, (size, spec.num_pairs), generator=g)
    ids.scatter_(1, key_pos, FIRST_TASK_TOKEN + keys)
    ids.scatter_(1, key_pos + 1, spec.first_value + values)
    which = torch.randint(0, spec.num_pairs, (size,), generator=g)
    query_pos = lengths - 2
    ids.scatter_(1, query_pos.unsqueeze(1), FIRST_TASK_TOKEN + keys.gather(1, which.unsqueeze(1)))
    ids = frame_sequences(ids, lengths, mask)
    return {"input_ids": ids, "attention_mask": mask, "labels": values.gather(1, which.unsqueeze(1)).squeeze(1),
            "pair_positions": key_pos, "query_position": query_pos, "query_pair": which}


class KVRetrievalDataModule(SyntheticDataModule):
    CONFIG = KVRetrievalDataConfig
    SPEC = KVSpec

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_kv_retrieval(self.spec, size, seed)


# ---------------------------------------------------------------------------- associative recall
@dataclass(frozen=True)
class MQARSpec:
    """Multi-query associative recall (Zoology's MQAR over long distractor text):
    ``[CLS] … k₁ v₁ … k_P v_P … q₁ … q_Q [SEP]``; the Q queries (distinct keys among the P pairs)
    sit just before [SEP]; label j = the value class paired with q_j. The head reads the hidden
    state at each query position (the queries are protected)."""

    seq_len: int = 1024
    min_seq_len: int = 0
    vocab_size: int = 256
    num_keys: int = 32
    num_classes: int = 8
    num_pairs: int = 8
    num_queries: int = 4

    def __post_init__(self) -> None:
        KVSpec(self.seq_len, self.min_seq_len, self.vocab_size, self.num_keys, self.num_classes, self.num_pairs)
        if not 1 <= self.num_queries <= self.num_pairs:
            raise ValueError(f"data.num_queries={self.num_queries}: need 1 <= num_queries <= num_pairs ({self.num_pairs})")
        if 2 * self.num_pairs + self.num_queries + 2 > (self.min_seq_len or self.seq_len):
            raise ValueError("pairs + queries + [CLS]/[SEP] do not fit in the shortest sequence")


def generate_mqar(spec: MQARSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` examples; ``labels`` (B, Q), ``query_positions`` (B, Q), ``pair_positions`` (B, P)."""
    kv = KVSpec(spec.seq_len, spec.min_seq_len, spec.vocab_size, spec.num_keys, spec.num_classes, spec.num_pairs)
    g = torch.Generator().manual_seed(seed)
    lengths, pos, mask = lengths_and_mask(size, spec.seq_len, spec.min_seq_len, g)
    ids = torch.randint(kv.first_distractor, spec.vocab_size, (size, spec.seq_len), generator=g)
    q = spec.num_queries
    slots = random_slots(size, (lengths - 2 - q) // 2, spec.num_pairs, spec.seq_len // 2, g)
    key_pos = 1 + 2 * slots
    keys = torch.rand(size, spec.num_keys, generator=g).argsort(1)[:, : spec.num_pairs]
    values = torch.randint(0, spec.num_classes, (size, spec.num_pairs), generator=g)
    ids.scatter_(1, key_pos, FIRST_TASK_TOKEN + keys)
    ids.scatter_(1, key_pos + 1, kv.first_value + values)
    which = torch.rand(size, spec.num_pairs, generator=g).argsort(1)[:, :q]  # distinct pairs queried
    query_pos = (lengths - 1 - q).unsqueeze(1) + torch.arange(q)
    ids.scatter_(1, query_pos, FIRST_TASK_TOKEN + keys.gather(1, which))
    ids = frame_sequences(ids, lengths, mask)
    return {"input_ids": ids, "attention_mask": mask, "labels": values.gather(1, which),
            "query_positions": query_pos, "pair_positions": key_pos}


class MQARDataModule(SyntheticDataModule):
    CONFIG = MQARDataConfig
    SPEC = MQARSpec
    task = "multiquery"
    keys = ("input_ids", "attention_mask", "labels", "query_positions")

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_mqar(self.spec, size, seed)
