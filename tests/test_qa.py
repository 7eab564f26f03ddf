"""Extractive QA with drop-and-restore: the span head sees T logits on every path, every dropped
context token carries the state it had when it was dropped, and every fixture example's gold span
decodes back to its exact answer text."""

import pytest
import torch
from transformers import AutoTokenizer

from datamodules.loaders import DATASET_INDEX
from datamodules.qa_windows import QAWindowError, check_answer, collate_qa, tokenize_qa
from datamodules.qasper_schema import QasperCounts, qasper_examples
from lightning_modules.qa import RetentionQA, best_spans
from retention.budget import Budget
from retention.encoder import RetentionEncoder
from retention.backbones import build_backbone, resolve_backbone_path

from .helpers import optimisation
from .long_doc_fixtures import qasper_paper


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_backbone_path("minilm"))


def qa_system(tokenizer) -> RetentionQA:
    """A span head on a random 3-layer BERT (d = 32) gated at layer 1 with ρ = 0.3, the tokenizer's
    special tokens protected."""
    backbone = build_backbone("random", arch="bert", vocab_size=len(tokenizer), hidden_size=32, num_layers=3,
                              num_heads=4, intermediate_size=64, max_positions=512)
    encoder = RetentionEncoder(backbone, gate_layers=[1], budget=Budget(ratio=0.3),
                               protected_token_ids=tokenizer.all_special_ids)
    return RetentionQA(encoder, optimisation(), dropout=0.0, max_answer_tokens=30)


def fixture_examples():
    counts = QasperCounts()
    examples = [e for k in range(3) for e in qasper_examples(qasper_paper(k), counts)]
    return examples, counts


def test_qasper_answer_type_policy_counts_everything():
    examples, counts = fixture_examples()
    assert counts.papers == 3 and counts.questions == 18
    assert (counts.extractive, counts.yes_no, counts.free_form, counts.unanswerable) == (9, 3, 3, 3)
    assert counts.extractive + counts.yes_no + counts.free_form + counts.unanswerable == counts.questions
    assert len(examples) == 9
    first = examples[0]
    assert first["answers"] == ["the NewsCorp-0 dataset", "NewsCorp-0"]  # both annotators' spans are golds
    for e in examples:
        check_answer(e)


def test_span_outside_context_names_the_question():
    paper = qasper_paper(0)
    paper["qas"]["answers"][1] = {"answer": [{"unanswerable": False, "extractive_spans": ["not in the paper"],
                                              "yes_no": None, "free_form_answer": "", "evidence": [],
                                              "highlighted_evidence": []}], "annotation_id": ["a"], "worker_id": ["w"]}
    with pytest.raises(QAWindowError, match=r"question 1 \(id 'q0-1'\) of paper 'paper0'.*outside the context"):
        qasper_examples(paper, QasperCounts())
    bad = {"id": "x", "question": "q", "context": "short context", "answer_start": 10, "answer_text": "context!"}
    with pytest.raises(QAWindowError, match=r"question id 'x': answer offsets \[10, 18\) are outside the context"):
        check_answer(bad)


@pytest.mark.parametrize("policy", ["truncation", "sliding_window"])
def test_gold_span_survives_drop_and_restore_at_rho_03(tokenizer, policy):
    examples, _ = fixture_examples()
    windows = tokenize_qa(examples, tokenizer, max_length=128 if policy == "sliding_window" else 512,
                          policy=policy, stride=32)
    if policy == "sliding_window":
        assert len(windows) > len(examples)  # long contexts are split
    batch = collate_qa(windows, tokenizer.pad_token_id)
    torch.manual_seed(0)
    system = qa_system(tokenizer).eval()
    for g in system.encoder.gates:
        torch.nn.init.normal_(g.v.weight, std=1.0)  # informative random scores: many context tokens dropped
    ids, mask, prot = batch["input_ids"], batch["attention_mask"], batch["protected"]
    b, t = ids.shape
    with torch.no_grad():
        start, end, out = system(ids, mask, prot, mode="hard")
        entering_gate = system.encoder.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
    assert start.shape == end.shape == (b, t)  # the span head sees T logits
    assert out.restored_hidden_state.shape == (b, t, 32)
    n_valid = mask.sum(1)
    kept = torch.zeros(b, t + 1, dtype=torch.bool)
    kept.scatter_(1, out.positions.masked_fill(~out.valid, t), out.valid)
    kept = kept[:, :t]
    # exactly ceil(0.3 T) kept (never fewer than the protected question + specials), the question all kept
    assert torch.equal(kept.sum(1), torch.maximum(torch.ceil(0.3 * n_valid - 1e-6).long(), (prot & mask.bool()).sum(1)))
    assert bool(kept[prot & mask.bool()].all())
    assert bool((~kept & mask.bool() & batch["context_mask"]).any())  # context tokens really were dropped
    # restored: kept tokens carry their final state, dropped ones the state they were dropped with
    restored = out.restored_hidden_state
    final = torch.zeros(b, t + 1, 32)
    slots = out.positions.masked_fill(~out.valid, t)  # dummy slots write to a trash row
    final = final.scatter(1, slots[..., None].expand(-1, -1, 32), out.last_hidden_state)[:, :t]
    dropped = ~kept & mask.bool()
    torch.testing.assert_close(restored[kept], final[kept])
    torch.testing.assert_close(restored[dropped], entering_gate[dropped], atol=1e-5, rtol=1e-4)
    # every example's gold span is in some window and decodes back to the exact answer text
    found = set()
    for w in range(b):
        s, e = int(batch["start_positions"][w]), int(batch["end_positions"][w])
        if s == 0:
            continue
        ex = examples[int(batch["example_index"][w])]
        assert batch["context_mask"][w, s] and batch["context_mask"][w, e]
        assert torch.isfinite(start[w, s]) and torch.isfinite(end[w, e])
        text = ex["context"][int(batch["offsets"][w, s, 0]):int(batch["offsets"][w, e, 1])]
        assert text == ex["answer_text"]
        found.add(int(batch["example_index"][w]))
    assert found == set(range(len(examples)))


def test_best_span_is_banded_and_inside_the_context():
    start = torch.tensor([[9.0, 0.0, 1.0, 0.0, 0.0, 5.0]])
    end = torch.tensor([[9.0, 0.0, 0.0, 2.0, 0.0, 0.0]])
    context = torch.tensor([[False, True, True, True, True, True]])
    score, i, j = best_spans(start, end, context, max_answer_tokens=2)
    assert (int(i), int(j)) == (5, 5) and float(score) == 5.0  # 2..3 scores 3; [CLS] is not context
    score, i, j = best_spans(start, end, context, max_answer_tokens=1)
    assert (int(i), int(j)) == (5, 5)


@pytest.mark.parametrize("path", ["soft", "hard", "dense"])
def test_metric_decodes_gold_logits_to_exact_match(tokenizer, path, monkeypatch):
    """Span logits peaked at the gold tokens → best window span → char offsets → EM = F1 = 100."""
    examples, _ = fixture_examples()
    batch = collate_qa(tokenize_qa(examples, tokenizer, 128, "sliding_window", 32), tokenizer.pad_token_id)
    batch[DATASET_INDEX] = torch.arange(len(batch["input_ids"]))
    system = qa_system(tokenizer).eval()
    real_forward = system.forward

    def gold_logits(ids, mask, prot, mode, plan=None):
        start, end, out = real_forward(ids, mask, prot, mode, plan)
        assert start.shape == ids.shape
        hot = torch.full_like(start, -10.0)
        rows = torch.arange(ids.shape[0])
        has = batch["start_positions"] > 0  # windows holding the answer score 10 + 10, the rest stay low
        s, e = hot.clone(), hot.clone()
        s[rows[has], batch["start_positions"][has]] = 10.0
        e[rows[has], batch["end_positions"][has]] = 10.0
        return s, e, out

    monkeypatch.setattr(system, "forward", gold_logits)
    with torch.no_grad():
        system.validation_step(batch, 0)
    result = system.squad_scores(f"val_{path}", examples)
    assert float(result["exact_match"]) == 100.0 and float(result["f1"]) == 100.0
    assert system.squad_scores(f"val_{path}", examples) is None  # collected candidates are consumed


def test_soft_path_trains_the_state_the_hard_path_restores(tokenizer):
    """Training reads what inference restores: with every gate closed (log α = −20, ẑ = 0) and ρ small
    enough that the hard path keeps only the protected tokens, the span head's logits at every dropped
    context position are the same on the soft path (what training optimises) and the hard path."""
    examples, _ = fixture_examples()
    batch = collate_qa(tokenize_qa(examples, tokenizer, 128, "sliding_window", 32), tokenizer.pad_token_id)
    torch.manual_seed(0)
    backbone = build_backbone("random", arch="bert", vocab_size=len(tokenizer), hidden_size=32, num_layers=3,
                              num_heads=4, intermediate_size=64, max_positions=512)
    encoder = RetentionEncoder(backbone, gate_layers=[1], budget=Budget(ratio=0.001),
                               protected_token_ids=tokenizer.all_special_ids)
    system = RetentionQA(encoder, optimisation(), dropout=0.0, max_answer_tokens=30).eval()
    torch.nn.init.zeros_(encoder.gates[0].v.weight)
    torch.nn.init.constant_(encoder.gates[0].v.bias, -20.0)
    ids, mask, prot = batch["input_ids"], batch["attention_mask"], batch["protected"]
    with torch.no_grad():
        soft_start, soft_end, soft = system(ids, mask, prot, mode="soft")
        hard_start, hard_end, hard = system(ids, mask, prot, mode="hard")
    valid = mask.bool()
    dropped = valid & ~(prot & valid)
    assert torch.equal(hard.valid.sum(1), (prot & valid).sum(1))  # the hard path kept only the protected tokens
    assert bool((soft.gate_values[dropped] == 0).all())
    assert bool((dropped & batch["context_mask"]).sum() > 100)
    torch.testing.assert_close(soft_start[dropped], hard_start[dropped])
    torch.testing.assert_close(soft_end[dropped], hard_end[dropped])
