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


def spread_rows(n: int, words: int = 60, seed: int = 0) -> list[dict]:
    """Bring-your-own-data rows whose label is spread over the text: each word is filler (60 %) or a
    sentiment word, which agrees with the label 70 % of the time; so every sentiment word kept is
    evidence, and a model that drops more of them guesses worse."""
    import random

    rng = random.Random(seed)
    pos, neg = ["good", "great", "fine", "nice", "superb"], ["bad", "awful", "poor", "dull", "weak"]
    filler = ["the", "plot", "movie", "actor", "scene", "story", "film", "music", "end", "start"]
    rows = []
    for i in range(n):
        y = i % 2
        text = [rng.choice(filler) if rng.random() < 0.6 else rng.choice(pos if (rng.random() < 0.7) == bool(y) else neg)
                for _ in range(words)]
        rows.append({"text": " ".join(text), "label": ["negative", "positive"][y]})
    return rows


CUAD_QUESTION = 'Highlight the parts (if any) of this contract related to "{}" that should be reviewed by a lawyer. Details: {}'
CUAD_CLAUSES = {
    "Document Name": ("The name of the contract", "DISTRIBUTOR AGREEMENT"),
    "Governing Law": ("Which state/country's law governs the interpretation of the contract?",
                      "This Agreement shall be governed by the laws of the State of New York."),
    "Non-Compete": ("Is there a restriction on the ability of a party to compete?",
                    "Distributor shall not sell any competing products during the term."),
    "Insurance": ("Is there a requirement for insurance?", "Each party shall maintain liability insurance."),
}


def cuad_records(n_contracts: int, filler_sentences: int = 3) -> tuple[list[dict], dict[str, set[str]]]:
    """CUAD QA-style records (``theatticusproject/cuad-qa``): id, title, context, question,
    answers {text: [str], answer_start: [int]}; one row per (contract, category). Contract k contains
    the clauses of the categories with bit k % 2^j set (Document Name always). Returns the records and
    each contract's expected label set."""
    rows, expected = [], {}
    cats = list(CUAD_CLAUSES)
    for k in range(n_contracts):
        title = f"ACME{k}CORP_01_01_2000-EX-10-DISTRIBUTOR AGREEMENT"
        present = {c for j, c in enumerate(cats) if j == 0 or (k >> (j - 1)) & 1}
        parts = []
        for c in cats:
            parts.append("The parties agree to the terms below." * filler_sentences)
            if c in present:
                parts.append(CUAD_CLAUSES[c][1])
        context = " ".join(parts)
        for q, c in enumerate(cats):
            text = CUAD_CLAUSES[c][1]
            answers = {"text": [text], "answer_start": [context.index(text)]} if c in present else {"text": [], "answer_start": []}
            rows.append({"id": f"{title}__{c}_{q}", "title": title, "context": context,
                         "question": CUAD_QUESTION.format(c, CUAD_CLAUSES[c][0]), "answers": answers})
        expected[title] = present
    return rows, expected
