"""ListOps with the Long Range Arena grammar: the label is the value of a nested expression, so it
needs most of its tokens (the hard case for retention). Shared layout: :mod:`datamodules.synthetic`."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import torch

from conf.data_schema import ListOpsDataConfig

from .synthetic import CLS_ID, FIRST_TASK_TOKEN, PAD_ID, SEP_ID, SyntheticDataModule

__all__ = ["ListOpsSpec", "generate_listops", "listops_value", "ListOpsDataModule", "LISTOPS_TOKENS"]


# ---------------------------------------------------------------------------- ListOps
# The Long Range Arena grammar (Tay et al. 2021; Nangia & Bowman 2018): operators MIN, MAX, MED
# (median, rounded down), SM (sum mod 10) over digits 0–9, written "[MAX 2 9 [MIN 4 7 ] 0 ]".
LISTOPS_TOKENS = ["[MIN", "[MAX", "[MED", "[SM", "]"] + [str(d) for d in range(10)]
_LISTOPS_ID = {tok: FIRST_TASK_TOKEN + i for i, tok in enumerate(LISTOPS_TOKENS)}
_VALUE_P = 0.25  # LRA: at depth < max_depth an operator node with probability 0.25


@dataclass(frozen=True)
class ListOpsSpec:
    """Expressions whose token count (with [CLS]/[SEP]) lies in [min_seq_len, seq_len]
    (min_seq_len 0: seq_len // 2), nesting ≤ max_depth, 2..max_args arguments per operator."""

    seq_len: int = 1024
    min_seq_len: int = 0
    max_depth: int = 10
    max_args: int = 10
    max_tries: int = 10_000

    num_classes: int = 10
    vocab_size: int = FIRST_TASK_TOKEN + len(LISTOPS_TOKENS)

    @property
    def min_len(self) -> int:
        return self.min_seq_len or self.seq_len // 2

    def __post_init__(self) -> None:
        if self.min_len > self.seq_len or self.min_len < 3:
            raise ValueError(f"data.min_seq_len={self.min_seq_len}: need 3 <= min length <= seq_len ({self.seq_len})")
        if self.max_depth < 1 or self.max_args < 2:
            raise ValueError(f"ListOps needs max_depth >= 1 and max_args >= 2 (got {self.max_depth}, {self.max_args})")


def _listops_tree(rng: random.Random, depth: int, spec: ListOpsSpec, budget: int) -> tuple[list[str], int]:
    """LRA's ``generate_tree``: tokens of a random expression and its length; abandons (returns a
    length > budget) as soon as the expression cannot fit."""
    if depth >= spec.max_depth or rng.random() > _VALUE_P:
        return [str(rng.randrange(10))], 1
    op = rng.choice(LISTOPS_TOKENS[:4])
    tokens, length = [op], 2
    for _ in range(rng.randint(2, spec.max_args)):
        sub, n = _listops_tree(rng, depth + 1, spec, budget - length)
        tokens += sub
        length += n
        if length > budget:
            return tokens, length
    tokens.append("]")
    return tokens, length


def listops_value(tokens: list[str]) -> int:
    """Evaluate an expression (the label), with an explicit stack."""
    stack: list[list] = [[]]
    for tok in tokens:
        if tok.startswith("["):
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            if op == "[MIN":
                v = min(args)
            elif op == "[MAX":
                v = max(args)
            elif op == "[MED":
                v = int(statistics.median(args))
            else:
                v = sum(args) % 10
            stack[-1].append(v)
        else:
            stack[-1].append(int(tok))
    (value,) = stack[0]
    return value


def generate_listops(spec: ListOpsSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` expressions by rejection on length, as LRA does; raises if ``max_tries`` trees in a
    row miss the length window (then widen it or lower max_depth)."""
    rng = random.Random(seed)
    ids = torch.full((size, spec.seq_len), PAD_ID, dtype=torch.long)
    labels = torch.empty(size, dtype=torch.long)
    body_max = spec.seq_len - 2
    for i in range(size):
        for _ in range(spec.max_tries):
            tokens, n = _listops_tree(rng, 1, spec, body_max)
            if spec.min_len - 2 <= n <= body_max:
                break
        else:
            raise ValueError(f"ListOps: no expression of length {spec.min_len}..{spec.seq_len} in {spec.max_tries} tries "
                             f"(max_depth={spec.max_depth}, max_args={spec.max_args}); widen the window")
        row = [CLS_ID, *(_LISTOPS_ID[t] for t in tokens), SEP_ID]
        ids[i, : len(row)] = torch.tensor(row)
        labels[i] = listops_value(tokens)
    return {"input_ids": ids, "attention_mask": (ids != PAD_ID).long(), "labels": labels}


class ListOpsDataModule(SyntheticDataModule):
    CONFIG = ListOpsDataConfig
    SPEC = ListOpsSpec

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_listops(self.spec, size, seed)
