"""The Hugging Face data modules through the real ``load_dataset`` path, on files in each dataset's schema."""

from __future__ import annotations

import pytest
import torch

from datamodules import BYODataModule, DataError, IMDbDataModule, SST2DataModule, build_datamodule
from datamodules.loaders import HOST_VIEW, host_view
from conf.compose import compose

from .hf_fixtures import byo_rows, write_csv, write_imdb, write_jsonl, write_sst2


def _texts_of(dm, role):
    return [dm.tokenizer.decode(ids, skip_special_tokens=True) for ids in dm.datasets[role]["input_ids"]]


def test_sst2_batches_and_unlabeled_test_split(tmp_path, capsys):
    files = write_sst2(tmp_path)
    dm = SST2DataModule(data_files=files, cache_dir=str(tmp_path / "cache"), seq_len=32, batch_size=8, val_fraction=0.25)
    assert dm.num_labels == 2 and dm.label_names == ("negative", "positive")
    dm.setup("fit")
    # test split is unlabeled → validation (8) is the test split; val carved from train (25 % of 40)
    assert {r: len(d) for r, d in dm.datasets.items()} == {"train": 30, "val": 10, "test": 8}
    assert "the 'test' split is unlabeled" in capsys.readouterr().out
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", HOST_VIEW}
    assert host_view(batch).keys() == {"input_ids", "attention_mask", "labels"}  # the collator's own tensors
    assert all(host_view(batch)[k] is batch[k] for k in host_view(batch))
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 8
    assert batch["input_ids"].shape[1] <= 32 and batch["labels"].dtype == torch.long
    assert (batch["input_ids"][:, 0] == dm.tokenizer.cls_token_id).all()
    test = next(iter(dm.test_dataloader()))
    assert test["labels"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]  # the validation rows, in order
    # labels follow the text: positive sentences come from the POS list
    for text, y in zip(_texts_of(dm, "train"), dm.datasets["train"]["labels"]):
        assert ("wonderful" in text or "great" in text or "loved" in text or "superb" in text) == (y == 1)


def test_carved_split_is_deterministic_and_cached(tmp_path, monkeypatch):
    files = write_sst2(tmp_path)
    kw = dict(data_files=files, cache_dir=str(tmp_path / "cache"), seq_len=32, seed=3)
    a = SST2DataModule(**kw)
    a.setup()
    # a second module with the same inputs must read the cache, not tokenize again
    monkeypatch.setattr(SST2DataModule, "encode_batch", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-tokenized")))
    b = SST2DataModule(**kw)
    b.setup()
    assert _texts_of(a, "val") == _texts_of(b, "val")
    c = SST2DataModule(**{**kw, "seed": 4, "cache_dir": str(tmp_path / "cache2")})
    monkeypatch.undo()
    c.setup()
    assert sorted(_texts_of(c, "val")) != sorted(_texts_of(a, "val"))
    assert sorted(_texts_of(c, "val") + _texts_of(c, "train")) == sorted(_texts_of(a, "val") + _texts_of(a, "train"))


def test_imdb_carves_val_and_ignores_unsupervised(tmp_path, capsys):
    files = write_imdb(tmp_path)
    dm = IMDbDataModule(data_files=files, cache_dir=str(tmp_path / "c"), seq_len=48, batch_size=4, truncation="tail")
    dm.setup()
    assert {r: len(d) for r, d in dm.datasets.items()} == {"train": 36, "val": 4, "test": 10}
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (4, 48)  # long reviews are cut to seq_len
    # tail truncation keeps the end of the review: the last content token is "."
    assert (batch["input_ids"][:, -2] == dm.tokenizer.convert_tokens_to_ids(".")).all()


def test_sliding_window_yields_windows_with_doc_ids(tmp_path):
    files = write_imdb(tmp_path, n_train=6, n_test=2)
    dm = IMDbDataModule(data_files=files, cache_dir=str(tmp_path / "c"), seq_len=64, stride=16,
                        truncation="sliding_window", val_split="test")
    dm.setup()
    train = dm.datasets["train"]
    assert len(train) > 6 and set(train["doc_id"]) == set(range(6))
    assert max(len(x) for x in train["input_ids"]) == 64
    batch = next(iter(dm.train_dataloader()))
    assert "doc_id" in batch and batch["labels"].shape == batch["doc_id"].shape


def test_byo_csv_string_labels_carves_val_and_test(tmp_path):
    path = write_csv(tmp_path / "mine.csv", ["review", "sentiment"], byo_rows(30))
    dm = BYODataModule(data_files=path, text_column="review", label_column="sentiment",
                       cache_dir=str(tmp_path / "c"), seq_len=32, val_fraction=0.2)
    assert dm.label_names == ("negative", "positive")
    dm.setup()
    assert {r: len(d) for r, d in dm.datasets.items()} == {"train": 18, "val": 6, "test": 6}
    assert set(dm.datasets["train"]["labels"]) == {0, 1}


def test_byo_jsonl_int_labels_and_unknown_test_label(tmp_path):
    rows = [{"text": t, "label": y} for t, y in byo_rows(20, string_labels=False)]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows),
             "test": write_jsonl(tmp_path / "test.jsonl", rows[:4] + [{"text": "odd", "label": 7}])}
    with pytest.raises(DataError) as err:
        BYODataModule(data_files=files, cache_dir=str(tmp_path / "c")).setup()
    msg = str(err.value)
    assert "'test'" in msg and "example 4" in msg and "'label'" in msg and "7" in msg and "[0, 1]" not in msg
    assert "['0', '1']" in msg


@pytest.mark.parametrize("bad,column,expected", [
    ({"text": "   ", "label": "positive"}, "text", "non-empty text"),
    ({"text": "fine", "label": "meh"}, "label", "'meh'"),
    ({"text": None, "label": "positive"}, "text", "non-empty text"),
])
def test_bad_example_names_split_index_column(tmp_path, bad, column, expected):
    rows = [{"text": t, "label": y} for t, y in byo_rows(12)]
    rows.insert(5, bad)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        BYODataModule(data_files={"train": path}, labels=["negative", "positive"], cache_dir=str(tmp_path / "c")).setup()
    msg = str(err.value)
    assert "split 'train'" in msg and "example 5" in msg and f"column {column!r}" in msg and expected in msg


def test_missing_label_column_names_split_and_columns(tmp_path):
    path = write_csv(tmp_path / "x.csv", ["text", "stars"], byo_rows(8))
    with pytest.raises(DataError, match=r"split 'train'.*missing column\(s\) \['label'\].*\['text', 'stars'\]"):
        BYODataModule(data_files=path, cache_dir=str(tmp_path / "c")).setup()


def test_skip_policy_drops_and_reports_count(tmp_path, capsys):
    rows = [{"text": t, "label": y} for t, y in byo_rows(20)]
    rows[3]["text"] = ""
    rows[11]["label"] = "unknown?"
    test_rows = rows[:6] + [{"text": "x", "label": "neutral"}]
    files = {"train": write_jsonl(tmp_path / "tr.jsonl", rows), "test": write_jsonl(tmp_path / "te.jsonl", test_rows)}
    dm = BYODataModule(data_files=files, cache_dir=str(tmp_path / "c"), on_invalid="skip", labels=["negative", "positive"])
    dm.setup()
    assert dm.skipped == {"train": 2, "test": 2}  # test: the copied empty row 3 and "neutral"
    assert "skipped 4 invalid example(s) (train: 2, test: 2)" in capsys.readouterr().out
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 18 and len(dm.datasets["test"]) == 5


def test_unknown_split_name_is_an_error(tmp_path):
    files = write_sst2(tmp_path)
    with pytest.raises(DataError, match="data.val_split='dev'.*available"):
        SST2DataModule(data_files=files, val_split="dev", cache_dir=str(tmp_path / "c")).setup()


def test_config_builds_module_with_backbone_tokenizer_and_rejects_keys_of_other_modules(tmp_path):
    from conf.schema import ConfigError

    files = write_sst2(tmp_path)
    cfg = compose(["data=sst2", "model=tiny", f"data.data_files={files}", f"data.cache_dir={tmp_path}"])
    assert cfg.optim.lr == 3e-5 and cfg.trainer.max_epochs == 3 and cfg.model.backbone == "random"
    dm = build_datamodule(cfg)
    assert isinstance(dm, SST2DataModule) and dm.tokenizer.cls_token_id == 101 and dm.vocab_size == 30522
    # the module records its config's fields, choices as plain strings (a checkpoint holds no Enum)
    assert dm.hparams.truncation == "head" and type(dm.hparams.truncation) is str and dm.hparams.seq_len == 128
    assert set(dm.hparams) == set(cfg.data) and "vocab_size" not in dm.hparams
    preset_model = compose(["model=tiny", "data=sst2"])  # order does not matter: the explicit model wins
    assert preset_model.model.backbone == "random"
    assert compose(["data=sst2"]).model.backbone == "distilbert-base-uncased"
    with pytest.raises(ConfigError, match=r"data.vocab_size: Key 'vocab_size' not in 'HFDataConfig'.*data module 'sst2'"):
        compose(["data=sst2", "data.vocab_size=7"])


def test_choices_outside_the_enum_fail_when_built_in_python(tmp_path):
    """Built directly (not through compose), a DataModule's choice fields are checked by its config."""
    from conf.schema import ConfigError

    with pytest.raises(ConfigError, match="data.truncation='middle'.*one of head, tail, sliding_window"):
        SST2DataModule(data_files=write_sst2(tmp_path), truncation="middle")
    with pytest.raises(TypeError, match="vocab_size"):
        SST2DataModule(vocab_size=7)


def test_missing_or_unknown_data_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"data file '.*nope.csv' \(split 'train'\): no such file"):
        BYODataModule(data_files=str(tmp_path / "nope.csv")).setup()
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(DataError, match="cannot tell the file format"):
        BYODataModule(data_files=str(tmp_path / "x.txt")).setup()
    with pytest.raises(DataError, match="needs data.data_files"):
        BYODataModule().setup()
