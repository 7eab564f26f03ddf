"""Small files in the public schemas of QASPER (``allenai/qasper``) and arXiv / PubMed
(``ccdv/arxiv-summarization``, ``ccdv/pubmed-summarization``), written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

_FILLER = (
    "We describe the experimental setup in detail. The corpus was collected from public sources and "
    "cleaned with standard tools. Results are averaged over three random seeds. "
)


def _answer(unanswerable=False, spans=(), yes_no=None, free_form=""):
    return {"unanswerable": unanswerable, "extractive_spans": list(spans), "yes_no": yes_no,
            "free_form_answer": free_form, "evidence": [], "highlighted_evidence": []}


def _answers(*annotations):
    return {"answer": list(annotations), "annotation_id": [f"a{i}" for i in range(len(annotations))],
            "worker_id": [f"w{i}" for i in range(len(annotations))]}


def qasper_paper(k: int) -> dict:
    """One paper with two extractive questions (one deep in the text), a yes/no, a free-form and an
    unanswerable question."""
    dataset = f"the NewsCorp-{k} dataset"
    model = f"a bidirectional LSTM with {k + 2} layers"
    return {
        "id": f"paper{k}",
        "title": f"A study of retention number {k}",
        "abstract": f"We study token retention. Our experiments use {dataset}.",
        "full_text": {
            "section_name": ["Introduction", "Method", "Experiments"],
            "paragraphs": [
                [_FILLER * 2, "Long documents are costly to encode."],
                [_FILLER, f"Our encoder is {model}, trained with Adam.", _FILLER],
                [_FILLER * 3, f"The learning rate was {k + 1}e-4 in all runs."],
            ],
        },
        "qas": {
            "question": ["Which dataset is used?", "What model is used?", "Is the code released?",
                         "Why does it work?", "Who funded the work?", "What learning rate was used?"],
            "question_id": [f"q{k}-{i}" for i in range(6)],
            "nlp_background": ["five"] * 6, "topic_background": ["unfamiliar"] * 6, "paper_read": ["no"] * 6,
            "search_query": [""] * 6, "question_writer": ["x"] * 6,
            "answers": [
                _answers(_answer(spans=[dataset]), _answer(spans=[f"NewsCorp-{k}"])),
                _answers(_answer(spans=[model])),
                _answers(_answer(yes_no=False)),
                _answers(_answer(free_form="because of the gates")),
                _answers(_answer(unanswerable=True)),
                _answers(_answer(spans=[f"{k + 1}e-4"]), _answer(free_form="small")),
            ],
        },
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_qasper(root: Path, n_train: int = 3, n_eval: int = 2) -> dict[str, str]:
    files = {"train": [qasper_paper(k) for k in range(n_train)],
             "validation": [qasper_paper(10 + k) for k in range(n_eval)],
             "test": [qasper_paper(20 + k) for k in range(n_eval)]}
    return {split: str(write_jsonl(root / f"qasper-{split}.jsonl", rows)) for split, rows in files.items()}


def summary_record(k: int) -> dict:
    topic = ["graph networks", "protein folding", "token pruning", "sparse attention"][k % 4]
    article = " ".join(f"Section {i}: we analyse {topic} under setting {k}-{i}. " + _FILLER for i in range(6))
    return {"article": article, "abstract": f"We study {topic} in setting {k} and report gains."}


def write_summarization(root: Path, n_train: int = 8, n_eval: int = 4) -> dict[str, str]:
    files = {"train": [summary_record(k) for k in range(n_train)],
             "validation": [summary_record(100 + k) for k in range(n_eval)],
             "test": [summary_record(200 + k) for k in range(n_eval)]}
    return {split: str(write_jsonl(root / f"{split}.jsonl", rows)) for split, rows in files.items()}
