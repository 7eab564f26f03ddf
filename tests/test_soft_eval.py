"""Soft evaluation keeps what the budget says: the hard path's top-M tokens, masked in place instead
of removed, scaled by E[z̃ | z̃ > 0]; its kept fraction is logged beside the hard path's."""

import lightning as L
import pytest
import torch

from conf.compose import compose
from datamodules import build_datamodule
from lightning_modules import build_system

from .helpers import TINY, top_m_fraction


def tiny_system(*overrides):
    cfg = compose([*TINY, *overrides])
    dm = build_datamodule(cfg)
    dm.setup("validate")
    return cfg, dm, build_system(cfg, dm).eval()


def test_soft_evaluation_keeps_the_top_m_with_the_open_gate_mean():
    """Scores with the gate's bias alone (v = 0, bias −4): Louizos' deterministic gate is 0 for every
    token (σ(−4) < 1/12), yet the soft path keeps the hard path's top-M: the protected tokens at 1,
    the others at E[z̃ | z̃ > 0 | −4]."""
    _, dm, system = tiny_system("gate.init_log_alpha=-4.0", "budget.ratio=0.3")
    enc = system.encoder
    with torch.no_grad():
        enc.gates[0].v.weight.zero_()
        batch = next(iter(dm.val_dataloader()))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        soft, hard = (enc(ids, mask, mode=mode) for mode in ("soft", "hard"))
    assert float(enc.relaxation.deterministic(torch.tensor(-4.0))) == 0.0
    protected = enc.protected_mask(ids) & mask.bool()
    kept = soft.gate_values > 0
    expected = torch.tensor(top_m_fraction(0.3, mask, protected))
    torch.testing.assert_close(kept.sum(1) / mask.sum(1), expected, rtol=0, atol=1e-6)
    assert torch.equal(kept.sum(1), hard.retained_counts[0])
    torch.testing.assert_close(soft.achieved_retention, hard.achieved_retention)
    assert torch.all(soft.gate_values[protected] == 1.0)
    others = kept & ~protected
    assert others.any()
    torch.testing.assert_close(soft.gate_values[others], enc.relaxation.open_mean(torch.tensor(-4.0)).expand(int(others.sum())))


def test_with_an_open_gate_of_one_soft_evaluation_is_the_hard_path_masked():
    """Straight-through gates are 1 when open: soft evaluation then is the hard path with the dropped
    tokens masked instead of removed, which gives the same logits (absolute positions were added at
    the embeddings; the masked keys get the bias log(1e-6), a weight of 1e-6 relative)."""
    _, dm, system = tiny_system("ablation=straight_through", "budget.ratio=0.3")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        soft, _ = system.classify(batch, "soft")
        hard, _ = system.classify(batch, "hard")
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=1e-4)


def test_validation_logs_the_soft_kept_fraction_beside_the_hard_one():
    """One validation batch of 32 rows: both kept fractions are the mean over the rows of
    clamp(⌈ρ·T_valid⌉, n_protected, T_valid) / T_valid."""
    _, dm, system = tiny_system("budget.ratio=0.25", "data.val_size=32", "data.eval_batch_size=32")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(system, datamodule=dm, verbose=False)
    batch = next(iter(dm.val_dataloader()))
    protected = system.encoder.protected_mask(batch["input_ids"]) & batch["attention_mask"].bool()
    expected = sum(top_m_fraction(0.25, batch["attention_mask"], protected)) / 32
    assert metrics["val/soft_kept_fraction_l1"] == pytest.approx(expected, abs=1e-6)
    assert metrics["val/kept_fraction_l1"] == pytest.approx(expected, abs=1e-6)
