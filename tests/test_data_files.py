"""Bad data files fail cleanly: one stderr line naming the file (and its split, line and column), exit
code 2, no traceback; ``data.on_invalid=skip`` drops unparsable lines and says plainly what it cannot skip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from commands import cli
from datamodules import BYODataModule, DataError

from .hf_fixtures import byo_rows, write_csv, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
GOOD = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in byo_rows(12))


def _write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


# (file name, content, what the one line must say besides the file name)
BAD_FILES = [
    ("empty.csv", b"", ["(split 'train')", "is empty"]),
    ("blank.jsonl", b"\n  \n", ["is empty"]),
    ("latin1.csv", b"text,label\nfine film,positive\ncaf\xe9 film,negative\n", ["line 3, column 4", "not UTF-8", "0xe9"]),
    ("broken.jsonl", (GOOD.splitlines(keepends=True)[0] * 2 + '{"text": "x", "label": }\n' + GOOD).encode(),
     ["line 3", "column 24", "not JSON"]),
    ("array.jsonl", (GOOD + "[1, 2]\n").encode(), ["line 13", "expected a JSON object"]),
    ("broken.json", b'[\n  {"text": "a", "label": "positive"},\n  {"text": "b" "label": "negative"}\n]\n',
     ["line 3, column 16", "not JSON (Expecting ',' delimiter)"]),
    ("extra.csv", b"text,label\ngood film,positive\nbad, awful film,negative\n", ["line 3", "3 fields, the header has 2"]),
    ("quote.csv", b'text,label\ngood film,positive\n"never closed,negative\nok,positive\n', ["line 3", "never closed"]),
    ("fake.parquet", b"not parquet at all", ["not a Parquet file"]),
]


@pytest.mark.parametrize("name,content,says", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_one_line_exit_2(name, content, says, tmp_path, capsys):
    path = _write(tmp_path / name, content)
    assert cli.main(["train", "data=byo", "model=tiny", f"data.data_files={path}"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("retention: data error: "), captured.err
    assert repr(path) in err[0]
    for text in says:
        assert text in err[0], (text, err[0])


def test_missing_file_of_a_split_names_it(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": y} for t, y in byo_rows(8)])
    files = json.dumps({"train": train, "test": str(tmp_path / "nope.jsonl")})
    assert cli.main(["train", "data=byo", "model=tiny", f"data.data_files={files}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"retention: data error: data file {str(tmp_path / 'nope.jsonl')!r} (split 'test'): no such file"]


def test_byo_without_data_files_is_a_config_error(capsys):
    assert cli.main(["train", "data=byo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error: data.data_files is not set: data=byo needs it" in err[0]


def test_the_process_prints_one_line_and_no_traceback(tmp_path):
    """The whole command, as a user runs it: a missing file (a 32-line traceback before)."""
    res = subprocess.run([sys.executable, "-m", "commands.cli", "train", "data=byo", "data.data_files=nope.csv"],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["retention: data error: data file 'nope.csv' (split 'train'): no such file"]
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_skip_drops_unparsable_lines_and_reports_them(tmp_path, capsys):
    rows = GOOD.splitlines(keepends=True)
    rows.insert(2, "{not json\n")
    rows.insert(7, "[1]\n")
    path = _write(tmp_path / "train.jsonl", "".join(rows))
    dm = BYODataModule(data_files={"train": path}, cache_dir=str(tmp_path / "c"), on_invalid="skip", val_fraction=0.25)
    dm.setup()
    out = capsys.readouterr().out
    assert f"skipped 2 unparsable line(s) of {path!r} (split 'train'): lines 3, 8" in out
    assert dm.skipped["train"] == 2
    assert sum(len(dm.datasets[r]) for r in ("train", "val", "test")) == 12  # every good row, none lost
    # the same file again reads the same cleaned copy (no new copy, the tokenized cache still applies)
    copies = list((tmp_path / "c" / "retention" / "clean").iterdir())
    BYODataModule(data_files={"train": path}, cache_dir=str(tmp_path / "c"), on_invalid="skip", val_fraction=0.25).setup()
    assert list((tmp_path / "c" / "retention" / "clean").iterdir()) == copies and len(copies) == 1


def test_skip_drops_csv_rows_with_too_many_fields(tmp_path):
    path = write_csv(tmp_path / "x.csv", ["text", "label"], byo_rows(10))
    with open(path, "a") as f:
        f.write('"bad, quoted\nover two lines",positive,extra\n')  # one record over lines 12-13
    dm = BYODataModule(data_files=path, cache_dir=str(tmp_path / "c"), on_invalid="skip", val_fraction=0.2)
    dm.setup()
    assert dm.skipped["train"] == 1
    assert sum(len(dm.datasets[r]) for r in ("train", "val", "test")) == 10
    with pytest.raises(DataError, match=r"x.csv' \(split 'train'\), line 12: 3 fields, the header has 2 \(text, label\)"):
        BYODataModule(data_files=path, cache_dir=str(tmp_path / "c")).setup()


@pytest.mark.parametrize("name,content,says", [
    ("nope.csv", None, "no such file"),
    ("empty.csv", b"", "is empty"),
    ("latin1.csv", b"text,label\ncaf\xe9,positive\n", "not UTF-8"),
])
def test_skip_says_plainly_what_it_cannot_skip(name, content, says, tmp_path):
    path = str(tmp_path / name) if content is None else _write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        BYODataModule(data_files=path, cache_dir=str(tmp_path / "c"), on_invalid="skip").setup()
    assert says in str(err.value) and "data.on_invalid=skip skips bad rows, not a whole file" in str(err.value)


def test_csv_files_of_one_split_with_different_headers(tmp_path, capsys):
    a = _write(tmp_path / "a.csv", "text,label\ngood film,positive\n")
    b = _write(tmp_path / "b.csv", "review,stars\nbad film,negative\n")
    files = json.dumps({"train": [a, b]})
    assert cli.main(["train", "data=byo", "model=tiny", f"data.data_files={files}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"retention: data error: data file {b!r} (split 'train'): its header (review, stars) differs from "
                   f"that of {a!r} (text, label); the files of one split need the same columns"]


def test_what_the_checks_do_not_foresee_is_still_one_line(tmp_path):
    """Files that parse one by one but not together (a column of strings in one, of lists in the
    other): ``datasets``' error, its cause on one line (a 76-line DatasetGenerationError before)."""
    a = _write(tmp_path / "a.jsonl", '{"text": "a", "label": "x"}\n')
    b = _write(tmp_path / "b.jsonl", '{"text": "b", "label": [1, 2]}\n')
    with pytest.raises(DataError) as err:
        BYODataModule(data_files=[a, b], cache_dir=str(tmp_path / "c")).setup()
    assert str(err.value) == (f"data.data_files={[a, b]!r}: TypeError: Couldn't cast array of type list<item: int64> "
                              "to string")


def test_a_label_that_is_a_json_object_is_a_validation_error(tmp_path):
    path = _write(tmp_path / "t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": {"x": 1}}\n')
    with pytest.raises(DataError, match=r"split 'train', example 1, column 'label'.*got \{'x': 1\}"):
        BYODataModule(data_files=path, cache_dir=str(tmp_path / "c")).setup()
