"""CUAD as multi-label contract clause classification: which clause categories a contract contains.

Source: the public QA-style records (``load_dataset("theatticusproject/cuad-qa")``, the SQuAD-format
CUAD v1): one row per (contract, category question) with ``id``, ``title`` (the contract),
``context`` (the contract text), ``question`` and ``answers`` = ``{"text": [...], "answer_start": [...]}``.
Every contract has one question per category (41 in CUAD v1).

Conversion (documented decision):
* **Category of a row** — parsed from the question, whose CUAD wording is
  ``Highlight the parts (if any) of this contract related to "<Category>" that should be reviewed
  by a lawyer. Details: …``: the text between the quotes after ``related to``. When the question does
  not have that form, the id's ``…__<Category>_<n>`` suffix is used; neither → a data error naming the
  split, the example index and the column.
* **Labels of a contract** (rows grouped by ``title``, kept in first-appearance order) — the categories
  whose question has a non-empty answer (at least one non-empty answer text).
* **Label set** — ``data.labels`` if given, else the sorted distinct categories of the train split;
  a category in validation/test outside it is an error.
* Each example is one contract: ``context`` is the text, ``labels`` a multi-hot vector. With
  ``data.truncation=head``/``tail`` the labels are the contract's (even for a clause beyond the
  truncated part). With ``sliding_window`` each window's labels are the categories with an answer
  span overlapping the window's characters, and ``doc_id`` names its contract.

Validation of every raw row: missing columns, empty context or question, an unparseable category,
``answers`` whose ``text`` and ``answer_start`` lists differ in length, or an answer span outside the
context. The public dataset has no validation split: it is carved from train (by contract).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from datasets import Dataset

from .hf import HFDataModule

__all__ = ["CUADDataModule", "cuad_category"]

_QUESTION = re.compile(r'related to "([^"]+)"')
_ID = re.compile(r"__(.+)_\d+$")
_COLUMNS = ("id", "title", "context", "question", "answers")


def cuad_category(question: Any, example_id: Any) -> str | None:
    """The clause category of a CUAD QA row (from the question, else from the id), or None."""
    if isinstance(question, str):
        m = _QUESTION.search(question)
        if m and m.group(1).strip():
            return m.group(1).strip()
    if isinstance(example_id, str):
        m = _ID.search(example_id)
        if m:
            return m.group(1).strip()
    return None


class CUADDataModule(HFDataModule):
    task = "multilabel"
    DEFAULT_PATH = "theatticusproject/cuad-qa"
    TEXT_COLUMN = "context"
    LABEL_COLUMN = "answers"

    # ------------------------------------------------------------------ labels
    def infer_labels(self, train) -> None:
        if self.configured_labels:
            names = self.configured_labels
        else:
            if not set(_COLUMNS) <= set(train.column_names):
                return  # reported by validation
            cols = train.select_columns(["question", "id"])
            names = tuple(sorted({c for q, i in zip(cols["question"], cols["id"]) if (c := cuad_category(q, i))}))
        self._label_names = names
        self._label_values = {n: i for i, n in enumerate(names)}

    def is_labeled(self, ds) -> bool:
        return "answers" in ds.column_names

    def required_columns(self) -> tuple[str, ...]:
        return _COLUMNS

    def example_problems(self, batch: dict[str, list], start: int) -> Iterator[tuple[int, str, str]]:
        for j in range(len(batch["id"])):
            i = start + j
            context, question, answers = batch["context"][j], batch["question"][j], batch["answers"][j]
            if not isinstance(context, str) or not context.strip():
                yield i, "context", f"the non-empty contract text, got {context!r:.60}"
                continue
            if not isinstance(batch["title"][j], str) or not batch["title"][j]:
                yield i, "title", f"the contract's title, got {batch['title'][j]!r}"
                continue
            category = cuad_category(question, batch["id"][j])
            if category is None:
                yield i, "question", f'a CUAD question naming its category (… related to "<Category>" …) or an id ending in __<Category>_<n>, got {question!r:.80}'
                continue
            if category not in self._label_values:
                yield i, "question", f"a category of the label set {list(self._label_names)}, got {category!r}"
                continue
            if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) or not isinstance(answers.get("answer_start"), list):
                yield i, "answers", f'{{"text": [...], "answer_start": [...]}}, got {answers!r:.80}'
                continue
            texts, starts = answers["text"], answers["answer_start"]
            if len(texts) != len(starts):
                yield i, "answers", f"as many answer_start values as answer texts, got {len(starts)} and {len(texts)}"
                continue
            for text, s in zip(texts, starts):
                if not isinstance(s, int) or not isinstance(text, str) or s < 0 or s + len(text) > len(context):
                    yield i, "answers", f"answer spans inside the context (0..{len(context)}), got answer_start={s!r} with a {len(text) if isinstance(text, str) else '?'}-character text"
                    break

    # ------------------------------------------------------------------ QA rows → contracts
    def convert(self, ds, split: str):
        """One row per contract: ``context`` and ``spans`` = [[category id, start, end], …] of its non-empty answers."""
        meta = ds.select_columns(["title", "question", "id", "answers"])
        first: dict[str, int] = {}
        spans: dict[str, list[list[int]]] = {}
        for i, (title, q, eid, ans) in enumerate(zip(meta["title"], meta["question"], meta["id"], meta["answers"])):
            first.setdefault(title, i)
            cat = self._label_values[cuad_category(q, eid)]
            spans.setdefault(title, []).extend(
                [cat, s, s + len(t)] for t, s in zip(ans["text"], ans["answer_start"]) if t.strip()
            )
        rows = ds.select(list(first.values())).select_columns(["title", "context"])
        return Dataset.from_dict({"title": rows["title"], "context": rows["context"], "spans": [spans[t] for t in rows["title"]]})

    def cache_params(self) -> dict[str, Any]:
        return {**super().cache_params(), "conversion": "contracts-v1"}

    def encode_batch(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        k = len(self._label_names)
        windows = self.hparams.truncation == "sliding_window"
        enc = self.tokenize(batch["context"], offsets=windows)
        source = enc.get("overflow_to_sample_mapping") or list(range(len(batch["context"])))
        labels, doc_ids = [], []
        for w, doc in enumerate(source):
            if windows:
                chars = [(a, b) for a, b in enc["offset_mapping"][w] if b > a]
                lo, hi = (chars[0][0], chars[-1][1]) if chars else (0, 0)
                cats = {c for c, s, e in batch["spans"][doc] if s < hi and e > lo}
            else:
                cats = {c for c, _, _ in batch["spans"][doc]}
            labels.append([1.0 if c in cats else 0.0 for c in range(k)])
            doc_ids.append(indices[doc])
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
        if windows:
            out["doc_id"] = doc_ids
        return out
