"""Ranking distillation (ToP, Li et al., KDD 2023; retention/distill.py): the teacher's final-layer
attention received, the listwise KL against the gates' log α, the system's loss term, and the
ablation's label."""

import pytest
import torch
from omegaconf import OmegaConf

from commands.evaluate import describe
from commands.run_state import run_name
from conf.compose import compose
from lightning_modules import RetentionClassifier
from retention.distill import ranking_distillation_loss, ranking_kl, teacher_importance

from .helpers import optimisation
from .retention_fixtures import CLS, SEP, batch, tiny, wrap


def test_teacher_is_the_final_layers_attention_received_in_eval_mode():
    """s_t = 1/(H·N) Σ_h Σ_{q valid} A[q → t] of the last layer, computed under eval mode and eager
    attention, leaving the backbone's modes and attention implementation as they were."""
    model = tiny("bert", attn="sdpa").train()
    ids, mask = batch()
    scores = teacher_importance(model, ids, mask)
    assert model.training and all(m.training for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    reference = tiny("bert", attn="eager").eval()
    with torch.no_grad():
        probs = reference(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].mean(1)
    q = mask.float()
    expected = torch.einsum("bqk,bq->bk", probs, q) / q.sum(1, keepdim=True)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert not scores.requires_grad
    assert torch.allclose(scores.sum(1), torch.ones(4), atol=1e-5)  # every valid query's row sums to 1


def test_ranking_kl_is_zero_at_the_teachers_ranking_and_ignores_unrankable_tokens():
    teacher = torch.tensor([[0.1, 0.5, 0.2, 0.2, 0.0]])
    rankable = torch.tensor([[True, True, True, False, False]])  # e.g. a protected token, then padding
    matched = torch.log(torch.tensor([[0.125, 0.625, 0.25, 1.0, 1.0]])) + 3.0  # q over R, shifted: KL 0
    assert float(ranking_kl(matched, teacher, rankable)[0]) == pytest.approx(0.0, abs=1e-6)
    flat = torch.zeros(1, 5)
    q = torch.tensor([0.125, 0.625, 0.25])
    assert float(ranking_kl(flat, teacher, rankable)[0]) == pytest.approx(float((q * torch.log(q * 3)).sum()), rel=1e-5)
    moved = flat.clone()
    moved[0, 3:] = torch.tensor([9.0, -9.0])  # scores of unrankable tokens do not count
    assert torch.equal(ranking_kl(moved, teacher, rankable), ranking_kl(flat, teacher, rankable))
    nothing = torch.zeros(1, 5, dtype=torch.bool)
    assert float(ranking_kl(flat, teacher, nothing)[0]) == 0.0


def test_the_system_adds_the_weighted_loss_and_it_trains_the_gates():
    enc = wrap(tiny("bert"), [0, 1], 0.5).train()
    ids, mask = batch()
    b = {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(4, dtype=torch.long)}
    off = RetentionClassifier(enc, optimisation(), num_labels=2, dropout=0.0)
    on = RetentionClassifier(enc, optimisation(distill_ranking=True, distill_weight=2.5), num_labels=2, dropout=0.0)
    out = enc(ids, mask, mode="soft")
    assert off.ranking_distillation(b, out) == 0.0
    loss = on.ranking_distillation(b, out)
    rankable = mask.bool() & (ids != CLS) & (ids != SEP)
    expected = 2.5 * ranking_distillation_loss(out.log_alpha, teacher_importance(enc.backbone, ids, mask), rankable)
    assert float(loss.detach()) == pytest.approx(float(expected.detach())) and float(loss.detach()) > 0
    loss.backward()
    assert all(g.v.weight.grad is not None and g.v.weight.grad.abs().sum() > 0 for g in enc.gates)


def test_the_ranking_ablation_is_labelled():
    cfg = compose(["ablation=ranking_distill"])
    assert cfg.distill.ranking is True
    assert describe(OmegaConf.create({"method": "gate", "ablation": cfg.ablation, "seed": 0})) == "ablation:ranking_distill seed=0"
    assert run_name(cfg) == "needle-gate-ranking_distill-rho0.3"
