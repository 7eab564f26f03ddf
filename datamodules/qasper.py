"""QASPER long-document extractive QA (``load_dataset("allenai/qasper")``; splits train 888 papers /
validation 281 / test 416) on the shared :class:`~datamodules.hf.HFDataModule`.

Each paper becomes its extractive questions (policy and counts: :mod:`datamodules.qasper_schema`);
each question becomes one window ``[CLS] question [SEP] context [SEP]`` (``data.truncation=head``) or
overlapping windows (``sliding_window``, ``data.stride`` tokens of overlap) — :mod:`datamodules.qa_windows`.
The answer-type counts per split are printed, logged and kept in ``answer_counts``.

Every question gets an ``example_index`` key = (its raw split's number) · 2³² + (its row among that
split's questions): stable under the tokenization cache and under carving a validation split out of
train (conversion runs before carving), so a window always finds its question, context and golds.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Iterator

import datasets

from conf.data_schema import QADataConfig

from .hf import DataError, HFDataModule
from .qa_windows import QAWindowError, check_answer, collate_qa, tokenize_qa
from .qasper_schema import QasperCounts, qasper_examples

__all__ = ["QasperDataModule"]

log = logging.getLogger(__name__)

# data.truncation (conf.data_schema.QATruncation) -> datamodules.qa_windows policy
_QA_POLICIES = {"head": "truncation", "sliding_window": "sliding_window"}


class QasperDataModule(HFDataModule):
    CONFIG = QADataConfig
    task = "qa"
    DEFAULT_PATH = "allenai/qasper"
    WINDOW_COLUMNS = ("input_ids", "protected", "context_mask", "offsets", "start_positions", "end_positions", "example_index")

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.max_answer_tokens = self.config.max_answer_tokens
        self.answer_counts: dict[str, dict[str, int]] = {}
        self._questions: dict[int, dict] = {}  # example_index → {id, context, answers}
        self._eval_examples: dict[str, dict[int, dict]] = {}

    # ------------------------------------------------------------------ schema and validation
    def required_columns(self) -> tuple[str, ...]:
        return ("id", "abstract", "full_text", "qas")

    def is_labeled(self, ds) -> bool:
        return "qas" in ds.column_names and len(ds) > 0

    def infer_labels(self, train) -> None:
        """Extractive QA has no label set."""

    def example_problems(self, batch: dict[str, list], start: int) -> Iterator[tuple[int, str, str]]:
        for j in range(len(batch["id"])):
            paper = {k: batch[k][j] for k in self.required_columns()}
            try:
                for example in qasper_examples(paper, QasperCounts()):
                    check_answer(example)
            except QAWindowError as err:
                yield start + j, "qas", f"every extractive answer span inside the paper's text; {err}"

    def cache_params(self) -> dict[str, Any]:
        return {**super().cache_params(), "max_answer_tokens": self.max_answer_tokens}

    # ------------------------------------------------------------------ papers → questions → windows
    def convert(self, ds, split: str):
        counts = QasperCounts()
        examples = [e for paper in ds for e in qasper_examples(paper, counts)]
        if not examples:
            raise DataError(f"data split {split!r}: no extractive QASPER question (answer types: {counts.as_dict()})")
        h = self.hparams
        base = [h.train_split, h.val_split, h.test_split].index(split) << 32
        for j, e in enumerate(examples):
            e["example_index"] = base + j
            self._questions[base + j] = {k: e[k] for k in ("id", "context", "answers")}
        self.answer_counts[split] = counts.as_dict()
        msg = (f"data: qasper {split}: {counts.papers} papers, {counts.questions} questions; extractive {counts.extractive} "
               f"(used), left out: yes/no {counts.yes_no}, free-form {counts.free_form}, unanswerable "
               f"{counts.unanswerable}; extractive spans not found in the text {counts.spans_not_found}, "
               f"multi-span annotations {counts.multi_span_annotations}")
        log.info(msg)
        print(msg, flush=True)
        return datasets.Dataset.from_list(examples)

    def encode_batch(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        h = self.hparams
        examples = [{k: batch[k][j] for k in batch} for j in range(len(indices))]
        windows = tokenize_qa(examples, self.tokenizer, h.seq_len, _QA_POLICIES[h.truncation], h.stride)
        for w in windows:
            w["example_index"] = examples[w["example_index"]]["example_index"]
        return {k: [w[k] for w in windows] for k in self.WINDOW_COLUMNS}

    def eval_examples(self, stage: str) -> dict[int, dict]:
        """The questions of the ``stage`` (train / val / test) split, by a batch's ``example_index``."""
        if stage not in self._eval_examples:
            keys = set(self.datasets[stage]["example_index"])
            self._eval_examples[stage] = {k: self._questions[k] for k in sorted(keys)}
        return self._eval_examples[stage]

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.logger is not None and self.answer_counts and not getattr(self, "_counts_logged", False):
            trainer.logger.log_metrics({f"data/qasper_{split}_{k}": float(v)
                                        for split, c in self.answer_counts.items() for k, v in c.items()})
            self._counts_logged = True

    @property
    def collate_fn(self):
        return functools.partial(collate_qa, pad_token_id=self.pad_token_id)
