"""Extractive QA examples → tokenized windows for :class:`lightning_modules.qa.RetentionQA`.

An example is ``{"id", "question", "context", "answers": [gold texts], "answer_start": char offset of
the training answer, "answer_text": the training answer}``. Each becomes one window (``truncation``)
or several overlapping windows (``sliding_window``: ``stride`` tokens of overlap), tokenized as
``[CLS] question [SEP] context [SEP]`` by a fast tokenizer (offset mapping required). Per window:
``protected`` = the question and the special tokens; ``context_mask``; ``offsets`` (char offsets into
the context); ``start_positions``/``end_positions`` = the answer's first/last token, or 0 ([CLS]) when
the answer is not wholly inside this window.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["QAWindowError", "check_answer", "tokenize_qa", "collate_qa"]


class QAWindowError(ValueError):
    """A QA example whose answer offsets do not lie inside its context."""


def check_answer(example: dict) -> None:
    """The training answer must be a non-empty span of the context at ``answer_start`` (the caller
    names the split and the example index)."""
    ctx, start, text = example["context"], example["answer_start"], example["answer_text"]
    if not text or start < 0 or start + len(text) > len(ctx) or ctx[start:start + len(text)] != text:
        raise QAWindowError(
            f"question id {example['id']!r}: answer offsets [{start}, {start + len(text)}) "
            f"are outside the context (length {len(ctx)}) or do not match the answer text {text!r}"
        )


def tokenize_qa(examples: Sequence[dict], tokenizer, max_length: int, policy: str = "truncation",
                stride: int = 128) -> list[dict]:
    """Windows of every example (see module docstring), each with ``example_index``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"extractive QA needs a fast tokenizer (offset mapping); {type(tokenizer).__name__} is not")
    if policy not in ("truncation", "sliding_window"):
        raise ValueError(f"QA truncation policy {policy!r}: allowed truncation, sliding_window")
    enc = tokenizer(
        [e["question"] for e in examples], [e["context"] for e in examples],
        truncation="only_second", max_length=max_length, stride=stride if policy == "sliding_window" else 0,
        return_overflowing_tokens=policy == "sliding_window", return_offsets_mapping=True,
    )
    mapping = enc["overflow_to_sample_mapping"] if policy == "sliding_window" else list(range(len(examples)))
    windows = []
    for w, ex_index in enumerate(mapping):
        ex = examples[ex_index]
        seq = enc.sequence_ids(w)
        offsets = enc["offset_mapping"][w]
        context = [s == 1 for s in seq]
        a0, a1 = ex["answer_start"], ex["answer_start"] + len(ex["answer_text"])
        start = end = 0
        ctx_idx = [i for i, c in enumerate(context) if c]
        if ctx_idx and offsets[ctx_idx[0]][0] <= a0 and offsets[ctx_idx[-1]][1] >= a1:
            start = next(i for i in ctx_idx if offsets[i][1] > a0)
            end = next(i for i in reversed(ctx_idx) if offsets[i][0] < a1)
        windows.append({
            "input_ids": enc["input_ids"][w],
            "protected": [s != 1 for s in seq],  # question (0) and special tokens (None)
            "context_mask": context,
            "offsets": [tuple(o) if c else (0, 0) for o, c in zip(offsets, context)],
            "start_positions": start,
            "end_positions": end,
            "example_index": ex_index,
        })
    return windows


def collate_qa(windows: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of windows to the longest one."""
    t = max(len(w["input_ids"]) for w in windows)
    b = len(windows)
    out = {
        "input_ids": torch.full((b, t), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(b, t, dtype=torch.long),
        "protected": torch.zeros(b, t, dtype=torch.bool),
        "context_mask": torch.zeros(b, t, dtype=torch.bool),
        "offsets": torch.zeros(b, t, 2, dtype=torch.long),
    }
    for r, w in enumerate(windows):
        n = len(w["input_ids"])
        out["input_ids"][r, :n] = torch.tensor(w["input_ids"])
        out["attention_mask"][r, :n] = 1
        out["protected"][r, :n] = torch.tensor(w["protected"])
        out["context_mask"][r, :n] = torch.tensor(w["context_mask"])
        out["offsets"][r, :n] = torch.tensor(w["offsets"], dtype=torch.long).view(n, 2)
    for key in ("start_positions", "end_positions", "example_index"):
        out[key] = torch.tensor([w[key] for w in windows], dtype=torch.long)
    return out
