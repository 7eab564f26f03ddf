"""CUAD: QA-style records → multi-label contract classification, through the real load_dataset path."""

from __future__ import annotations

import pytest
import torch

from datamodules import CUADDataModule, DataError
from datamodules.cuad import cuad_category

from .hf_fixtures import CUAD_CLAUSES, cuad_records, write_jsonl

NAMES = tuple(sorted(CUAD_CLAUSES))


def _files(tmp_path, n_train=12, n_test=4, mutate=None):
    train, _ = cuad_records(n_train)
    test, expected = cuad_records(n_test)
    if mutate:
        mutate(train)
    return {"train": write_jsonl(tmp_path / "train.jsonl", train), "test": write_jsonl(tmp_path / "test.jsonl", test)}, expected


def test_category_from_question_else_id():
    q = 'Highlight the parts (if any) of this contract related to "Rofr/Rofo/Rofn" that should be reviewed by a lawyer.'
    assert cuad_category(q, "X__Other_3") == "Rofr/Rofo/Rofn"
    assert cuad_category("What is the governing law?", "ACME-EX-10__Governing Law_7") == "Governing Law"
    assert cuad_category("What?", "no-category-here") is None


def test_contracts_become_multilabel_examples(tmp_path, capsys):
    files, expected = _files(tmp_path)
    dm = CUADDataModule(data_files=files, cache_dir=str(tmp_path / "c"), seq_len=64, batch_size=4, val_fraction=0.25)
    assert dm.task == "multilabel" and dm.label_names == NAMES
    dm.setup()
    # one example per contract; val carved from train by contract (3 of 12)
    assert {r: len(d) for r, d in dm.datasets.items()} == {"train": 9, "val": 3, "test": 4}
    batch = next(iter(dm.test_dataloader()))
    assert batch["labels"].shape == (4, len(NAMES)) and batch["labels"].dtype == torch.float32
    assert batch["input_ids"].shape == (4, 64)
    for row, present in zip(batch["labels"].tolist(), expected.values()):
        assert {NAMES[i] for i, v in enumerate(row) if v == 1.0} == present


def test_sliding_windows_are_labelled_by_overlapping_answer_spans(tmp_path):
    files, expected = _files(tmp_path, n_train=4, n_test=4)
    dm = CUADDataModule(data_files=files, cache_dir=str(tmp_path / "c"), seq_len=48, stride=8,
                        truncation="sliding_window", val_fraction=0.25)
    dm.setup()
    test = dm.datasets["test"]
    assert len(test) > 4
    by_doc: dict[int, list[list[float]]] = {}
    for doc, labels in zip(test["doc_id"], test["labels"]):
        by_doc.setdefault(doc, []).append(labels)
    for doc, present in zip(sorted(by_doc), expected.values()):
        windows = by_doc[doc]
        union = {NAMES[i] for w in windows for i, v in enumerate(w) if v}
        assert union == present  # every clause lies in some window …
        assert any(sum(w) < len(present) for w in windows) or len(present) == 1  # … but not every window has all


@pytest.mark.parametrize("mutate,column,expected", [
    (lambda rows: rows[6]["answers"].update(answer_start=[10 ** 6]), "answers", "inside the context"),
    (lambda rows: rows[6].update(question="What?", id="broken"), "question", "naming its category"),
    (lambda rows: rows[6].update(context=""), "context", "non-empty contract text"),
    (lambda rows: rows[6]["answers"].update(text=["a", "b"]), "answers", "as many answer_start"),
])
def test_bad_records_name_split_index_column(tmp_path, mutate, column, expected):
    def bad(rows):
        rows[6]["answers"] = {"text": ["DISTRIBUTOR AGREEMENT"], "answer_start": [rows[6]["context"].index("DISTRIBUTOR AGREEMENT")]}
        mutate(rows)

    files, _ = _files(tmp_path, mutate=bad)
    with pytest.raises(DataError) as err:
        CUADDataModule(data_files=files, cache_dir=str(tmp_path / "c")).setup()
    msg = str(err.value)
    assert "split 'train'" in msg and "example 6" in msg and f"column {column!r}" in msg and expected in msg


def test_unknown_category_in_test_is_an_error_and_skip_reports(tmp_path, capsys):
    train, _ = cuad_records(4)
    test, _ = cuad_records(2)
    test[1]["question"] = test[1]["question"].replace('"Governing Law"', '"Warranty Duration"')
    files = {"train": write_jsonl(tmp_path / "tr.jsonl", train), "test": write_jsonl(tmp_path / "te.jsonl", test)}
    with pytest.raises(DataError, match=r"split 'test', example 1, column 'question'.*'Warranty Duration'"):
        CUADDataModule(data_files=files, cache_dir=str(tmp_path / "c")).setup()
    dm = CUADDataModule(data_files=files, cache_dir=str(tmp_path / "c"), on_invalid="skip", val_fraction=0.25)
    dm.setup()
    assert dm.skipped == {"train": 0, "test": 1}
    assert "skipped 1 invalid example(s) (test: 1)" in capsys.readouterr().out
