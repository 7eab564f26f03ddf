"""Small files in each public dataset's own schema (exact field names, types and nesting), written by
the tests and read through the real ``datasets.load_dataset`` code path of the data modules."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Value

POS = ["a wonderful, moving film", "great acting and a clever plot", "i loved every minute", "superb and funny"]
NEG = ["a dull, lifeless mess", "terrible script and bad acting", "i hated every minute", "boring and far too long"]


def _texts(n: int, long: bool = False) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        base = (POS if label else NEG)[i % 4]
        texts.append(f"{base} {i}" + (" the plot unfolds slowly ." * (40 + i % 7) if long else ""))
        labels.append(label)
    return texts, labels


def write_sst2(root: Path, n_train: int = 40, n_val: int = 8, n_test: int = 6) -> dict[str, str]:
    """GLUE SST-2 as on the hub (parquet): sentence (string), label (ClassLabel negative/positive),
    idx (int32); the test split is unlabeled (label -1)."""
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32")})
    files = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        texts, labels = _texts(n)
        if split == "test":
            labels = [-1] * n
        path = root / "sst2" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"sentence": texts, "label": labels, "idx": list(range(n))}, features=features).to_parquet(path)
        files[split] = str(path)
    return files


def write_imdb(root: Path, n_train: int = 40, n_test: int = 10, n_unsup: int = 6) -> dict[str, str]:
    """stanfordnlp/imdb as on the hub (parquet): text (string), label (ClassLabel neg/pos); splits
    train, test and unsupervised (label -1)."""
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    files = {}
    for split, n in (("train", n_train), ("test", n_test), ("unsupervised", n_unsup)):
        texts, labels = _texts(n, long=True)
        if split == "unsupervised":
            labels = [-1] * n
        path = root / "imdb" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"text": texts, "label": labels}, features=features).to_parquet(path)
        files[split] = str(path)
    return files


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> str:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def byo_rows(n: int, string_labels: bool = True) -> list[list]:
    texts, labels = _texts(n)
    names = ["negative", "positive"]
    return [[t, names[y] if string_labels else y] for t, y in zip(texts, labels)]
