"""QASPER papers (the public ``allenai/qasper`` schema) → extractive QA examples.

A record is one paper: ``id``, ``title``, ``abstract``, ``full_text`` = {``section_name``: [...],
``paragraphs``: [[...], ...]}, ``qas`` = {``question``: [...], ``question_id``: [...], ...,
``answers``: [{``answer``: [{``unanswerable``, ``extractive_spans``, ``yes_no``, ``free_form_answer``,
``evidence``, ``highlighted_evidence``}, ...], ``annotation_id``: [...], ``worker_id``: [...]}, ...]}
(one ``answers`` entry per question, one ``answer`` per annotator).

Answer-type policy (counted per split in :class:`QasperCounts`, nothing dropped silently):
* the context is the abstract followed by every paragraph of ``full_text``, joined by blank lines;
* a question is **extractive** when at least one annotator gave extractive spans; its gold answers are
  all extractive spans (of all annotators) found verbatim in the context; the training target is the
  first of them (a multi-span annotation contributes each span as a separate gold text — a single span
  head predicts one contiguous span);
* questions whose annotators gave only yes/no, free-form or "unanswerable" answers are not extractive QA
  and are left out, counted by type (``yes_no``, ``free_form``, ``unanswerable``);
* an extractive span not found verbatim in the context (e.g. quoted from a table) is counted
  (``spans_not_found``); an extractive question none of whose spans is in the context is an error
  naming the split, the paper's index and the question id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .qa_windows import QAWindowError

__all__ = ["QasperCounts", "qasper_context", "qasper_examples"]


@dataclass
class QasperCounts:
    papers: int = 0
    questions: int = 0
    extractive: int = 0
    yes_no: int = 0
    free_form: int = 0
    unanswerable: int = 0
    multi_span_annotations: int = 0
    spans_not_found: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def qasper_context(paper: dict) -> str:
    paragraphs = [p for section in paper["full_text"]["paragraphs"] for p in section if p and p.strip()]
    return "\n\n".join([paper["abstract"], *paragraphs])


def _annotation_type(a: dict) -> str:
    if a.get("unanswerable"):
        return "unanswerable"
    if a.get("extractive_spans"):
        return "extractive"
    if a.get("yes_no") is not None:
        return "yes_no"
    return "free_form"


def qasper_examples(paper: dict, counts: QasperCounts) -> list[dict]:
    """The paper's extractive questions as QA examples (see the module docstring for the policy).
    Raises :class:`QAWindowError` (the caller names the split and the paper's index)."""
    counts.papers += 1
    context = qasper_context(paper)
    qas = paper["qas"]
    out = []
    for q, (question, qid, answers) in enumerate(zip(qas["question"], qas["question_id"], qas["answers"])):
        counts.questions += 1
        annotations = answers["answer"]
        types = [_annotation_type(a) for a in annotations]
        if "extractive" not in types:
            kind = types[0] if types else "unanswerable"
            setattr(counts, kind, getattr(counts, kind) + 1)
            continue
        golds: list[tuple[int, str]] = []
        for a in annotations:
            spans = a.get("extractive_spans") or []
            if len(spans) > 1:
                counts.multi_span_annotations += 1
            for span in spans:
                span = span.strip()
                pos = context.find(span) if span else -1
                if pos < 0:
                    counts.spans_not_found += 1
                elif span not in [g for _, g in golds]:
                    golds.append((pos, span))
        if not golds:
            raise QAWindowError(
                f"question {q} (id {qid!r}) of paper {paper['id']!r}: none of its extractive answer spans "
                f"{[a.get('extractive_spans') for a in annotations]} lies inside the context (answer offsets outside the context)"
            )
        counts.extractive += 1
        out.append({
            "id": qid, "question": question, "context": context,
            "answers": [g for _, g in golds], "answer_start": golds[0][0], "answer_text": golds[0][1],
        })
    return out
