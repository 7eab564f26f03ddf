"""The dual variable: three param groups, projected ascent, clipping and schedules leave η alone;
the primal LR schedule and the budget warm-up after the dense phase, at exact steps."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from commands import cli, runner
from commands.checkpoints import load_checkpoint
from datamodules import build_datamodule
from lightning_modules import build_system
from conf.compose import compose
from lightning_modules.system import DUAL_GROUP, lr_factor, restarted_lr_factor
from retention.budget import annealed_targets

from .helpers import TINY
from .hf_fixtures import spread_rows, write_jsonl


def make(*overrides):
    cfg = compose([*TINY, *overrides])
    dm = build_datamodule(cfg)
    return cfg, dm, build_system(cfg, dm)


def test_three_param_groups_with_configured_lrs():
    _, _, system = make("optim.lr=0.003", "optim.gate_lr=0.02", "optim.dual_lr=0.05", "optim.weight_decay=0.1")
    opt = system.configure_optimizers()["optimizer"]
    groups = opt.param_groups
    assert [g["name"] for g in groups] == ["backbone", "gate", "dual"]
    assert [g["initial_lr"] for g in groups] == [0.003, 0.02, 0.05]
    assert groups[DUAL_GROUP]["maximize"] is True and groups[DUAL_GROUP]["weight_decay"] == 0.0
    assert not groups[0]["maximize"] and groups[0]["weight_decay"] == 0.1
    assert groups[DUAL_GROUP]["params"] == [system.lam]
    gate_ids = {id(p) for p in system.encoder.gates.parameters()}
    assert {id(p) for p in groups[1]["params"]} == gate_ids
    n_all = sum(1 for _ in system.parameters())
    assert sum(len(g["params"]) for g in groups) == n_all  # every parameter in exactly one group


def test_lr_schedule_never_changes_dual_lr():
    _, _, system = make("optim.warmup_steps=5", "optim.scheduler=linear", "optim.dual_lr=0.05")
    conf = system.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(8):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[DUAL_GROUP]["lr"]))
        opt.step()
        sched.step()
    assert len({s[0] for s in seen}) > 1  # the primal lr does follow the warm-up
    assert {s[1] for s in seen} == {0.05}


def test_clipping_touches_only_primal_groups():
    _, _, system = make()
    opt = system.configure_optimizers()["optimizer"]
    for p in system.parameters():
        p.grad = torch.full_like(p, 10.0)
    system.configure_gradient_clipping(opt, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
    assert torch.all(system.lam.grad == 10.0)
    primal = [p for g in opt.param_groups[:DUAL_GROUP] for p in g["params"]]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in primal]))
    assert total.item() == pytest.approx(1e-3, rel=1e-3)


def test_cosine_lr_factor_exact_values():
    """W = 4 warm-up steps of a 12-step fit: (s + 1)/W, then ½(1 + cos(π·p)) with p = (s − 4)/8."""
    f = [lr_factor(s, warmup_steps=4, total_steps=12, scheduler="cosine") for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0  # p = 0
    assert f[6] == pytest.approx(0.5 + math.sqrt(2) / 4, abs=1e-15)  # p = 1/4: cos(π/4) = √2/2
    assert f[8] == pytest.approx(0.5, abs=1e-15)  # p = 1/2, mid-way
    assert f[10] == pytest.approx(0.5 - math.sqrt(2) / 4, abs=1e-15)  # p = 3/4
    assert f[12] == 0.0 and f[13] == 0.0  # p = 1 at the end, and clamped after it
    assert [lr_factor(s, 4, 12, "linear") for s in (6, 8, 10, 12, 13)] == [0.75, 0.5, 0.25, 0.0, 0.0]
    assert lr_factor(0, 0, 12, "constant") == lr_factor(12, 0, 12, "constant") == 1.0


class LrTrace(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, *args):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_fit_schedules_primal_lr_over_the_trainers_steps_and_keeps_eta():
    """In a fit of 8 steps with 2 warm-up steps the primal lr at step s is lr·lr_factor(s, 2, 8, cosine):
    the system takes the total from the Trainer's estimate."""
    _, dm, system = make("optim.scheduler=cosine", "optim.warmup_steps=2", "optim.lr=0.01", "optim.gate_lr=0.1",
                         "optim.dual_lr=0.05", "data.train_size=128")
    trace = LrTrace()
    L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu").fit(system, datamodule=dm)
    factors = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(2, 8)]
    assert factors[5] == pytest.approx(0.5)  # s = 5: mid-way through the decay
    assert [lr[0] for lr in trace.lrs] == pytest.approx([0.01 * f for f in factors], rel=1e-12)
    assert [lr[1] for lr in trace.lrs] == pytest.approx([0.1 * f for f in factors], rel=1e-12)
    assert {lr[DUAL_GROUP] for lr in trace.lrs} == {0.05}


def test_restart_after_dense_runs_the_schedule_twice_in_a_fit():
    """``optim.restart_after_dense``: a fit of 12 steps whose first half is dense (6 steps), 2 warm-up
    steps, linear decay: steps 0–5 follow lr_factor over 6 steps, and steps 6–11 start again with the
    warm-up, lr_factor(s − 6) over the other 6. Without the key the schedule runs once over 12."""
    assert [restarted_lr_factor(s, 6, 2, 12, "linear") for s in range(12)] == [
        0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    for restart, expected in ((True, [0.5, 1.0, 1.0, 0.75, 0.5, 0.25] * 2),
                              (False, [lr_factor(s, 2, 12, "linear") for s in range(12)])):
        _, dm, system = make("optim.scheduler=linear", "optim.warmup_steps=2", "optim.lr=0.01", "data.train_size=192",
                             "budget.dense_fraction=0.5", "budget.warmup_fraction=0.0",
                             f"optim.restart_after_dense={str(restart).lower()}")
        trace = LrTrace()
        L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0,
                  accelerator="cpu").fit(system, datamodule=dm)
        assert [lr[0] for lr in trace.lrs] == pytest.approx([0.01 * f for f in expected], rel=1e-12)


def test_budget_warmup_counts_from_the_end_of_the_dense_phase():
    """dense_steps = 10, budget warm-up 20, ρ = 0.3: ρ(t) = 1 − 0.7·min(1, max(0, step − 10)/20)."""
    _, _, system = make("budget.dense_steps=10", "budget.warmup_steps=20")
    rho = torch.tensor([0.3])
    expected = {0: 1.0, 9: 1.0, 10: 1.0, 15: 1 - 0.7 * 0.25, 20: 0.65, 25: 1 - 0.7 * 0.75, 30: 0.3, 50: 0.3}
    for step, target in expected.items():
        torch.testing.assert_close(system.training_targets(rho, step), torch.tensor([target]))


class TargetTrace(Callback):
    def __init__(self):
        self.targets = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.targets.append(trainer.callback_metrics.get("train/target_l1"))


def test_training_logs_the_warmed_up_target_after_the_dense_phase():
    """dense_steps = 2, budget warm-up 4: no Lagrangian (no target logged) at steps 0 and 1, then the
    target the constraint used at steps 2..7 is 1, 0.825, 0.65, 0.475, 0.3, 0.3."""
    _, dm, system = make("budget.dense_steps=2", "budget.warmup_steps=4", "data.train_size=128")
    trace = TargetTrace()
    L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu").fit(system, datamodule=dm)
    assert trace.targets[:2] == [None, None]
    torch.testing.assert_close(torch.stack(trace.targets[2:]), torch.tensor([1.0, 0.825, 0.65, 0.475, 0.3, 0.3]))


def test_fractions_place_the_dense_phase_and_warmup_in_the_fit():
    """8 steps, dense_fraction 0.25, warmup_fraction 0.5: D = 2, W = 4, so the same targets as the step
    counts 2 and 4 (the test above): none at steps 0 and 1, then 1, 0.825, 0.65, 0.475, 0.3, 0.3."""
    _, dm, system = make("budget.dense_fraction=0.25", "budget.warmup_fraction=0.5", "data.train_size=128")
    trace = TargetTrace()
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu").fit(system, datamodule=dm)
    assert system.phases == (2, 4) and len(trace.targets) == 8
    assert trace.targets[:2] == [None, None]
    torch.testing.assert_close(torch.stack(trace.targets[2:]), torch.tensor([1.0, 0.825, 0.65, 0.475, 0.3, 0.3]))


def test_step_counts_that_do_not_fit_the_run_are_a_config_error(tmp_path, capsys):
    """dense 3 + warm-up 2 steps in a 4-step run: exit code 2, one line naming the keys and the run's steps."""
    code = cli.main(["train", *TINY, "budget.dense_steps=3", "budget.warmup_steps=2", "logging.save_checkpoints=false",
                     f"logging.tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert ("config error: budget.dense_steps=3, budget.warmup_steps=2: the dense phase (3 steps) and the budget "
            "warm-up (2 steps) do not fit in this run's 4 optimizer steps") in err


class LambdaTrace(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.values.append(pl_module.lam.detach().clone())


def fit(system, dm, steps, clip=None):
    trace = LambdaTrace()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[trace], num_sanity_val_steps=0,
                        limit_val_batches=0, gradient_clip_val=clip, accelerator="cpu")
    trainer.fit(system, datamodule=dm)
    return torch.stack(trace.values)[:, 0]


def test_lambda_rises_while_constraint_violated():
    # gates start fully open (P ≈ 1) with a 5 % budget: the constraint is violated throughout.
    _, dm, system = make("budget.ratio=0.05", "gate.init_log_alpha=8.0", "optim.gate_lr=0.0", "optim.dual_lr=0.01",
                         "data.train_size=160")
    lam = fit(system, dm, steps=10, clip=1e-4)  # clipping must not slow λ down
    assert lam[0] > 0
    assert torch.all(lam[1:] > lam[:-1])
    assert lam[-1] == pytest.approx(0.1, rel=0.05)  # Adam moves λ by ≈ η per step at a steady gradient


def test_lambda_falls_to_zero_and_never_below_when_slack():
    # every gate open with budget 1.0: ĝ − ρ ≤ 0, so the ascent lowers λ, and the projection stops it at 0.
    _, dm, system = make("budget.ratio=1.0", "optim.dual_lr=0.05", "data.train_size=320")
    with torch.no_grad():
        system.lam.fill_(0.3)
    lam = fit(system, dm, steps=20)
    assert lam[0] < 0.3
    assert torch.all(lam >= 0)
    assert lam[-1] == 0.0
    first_zero = int(torch.nonzero(lam == 0)[0])
    assert torch.all(lam[:first_zero][1:] < lam[:first_zero][:-1])  # monotone descent until projected


class _FirstWeights(Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.slow
def test_warm_start_loads_matching_tensors_and_reports_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"logging.tracking_uri=sqlite:///{tmp_path / 'm.db'}"
    first = runner.train(compose([*TINY, uri]))
    ckpt = load_checkpoint(first["checkpoint"])["state_dict"]
    probe = _FirstWeights()
    runner.train(compose([*TINY, uri, "method=ltp", f"model.init_from={first['checkpoint']}"]), callbacks=[probe])
    out = capsys.readouterr().out
    backbone = [k for k in ckpt if k.startswith("encoder.backbone.") and k in probe.state]
    assert backbone and all(torch.equal(probe.state[k], ckpt[k]) for k in backbone)  # started from the checkpoint
    assert "warm start from" in out and "encoder.gates.0.threshold" in out  # LTP's threshold: kept fresh, listed
    assert "encoder.gates.0.W.weight" in out  # our scorer's weights: in the checkpoint, not used, listed


@pytest.mark.slow
def test_warm_start_keeps_the_configured_lambda_and_gates(tmp_path, monkeypatch):
    """A stage-2 run from a dense checkpoint (whose λ is 0) starts with its own budget.init_lambda and
    fresh gates: the fixed-λ ablation and LTP's fixed penalty otherwise trained with λ = 0."""
    monkeypatch.chdir(tmp_path)
    uri = f"logging.tracking_uri=sqlite:///{tmp_path / 'm.db'}"
    first = runner.train(compose([*TINY, uri, "budget.dense_fraction=1.0", "budget.warmup_fraction=0.0",
                                  "gate.init_log_alpha=-1.0"]), print_summary=False)
    assert float(load_checkpoint(first["checkpoint"])["state_dict"]["lam"][0]) == 0.0
    cfg = compose([*TINY, "ablation=fixed_lambda", f"model.init_from={first['checkpoint']}"])
    system = build_system(cfg, build_datamodule(cfg))
    fresh_gate = system.encoder.gates[0].v.bias.detach().clone()
    runner.warm_start(system, first["checkpoint"])
    assert float(system.lam[0].detach()) == cfg.budget.init_lambda == 1.0
    assert torch.equal(system.encoder.gates[0].v.bias, fresh_gate)


def test_warm_start_from_a_missing_file_is_a_config_error(capsys):
    assert cli.main(["train", "model.init_from=/nonexistent/best.ckpt"]) == 2
    assert "model.init_from" in capsys.readouterr().err


class DualState(Callback):
    """λ after every step, and the AdamW step count of λ and of the gates' parameters (0 while
    they have no state)."""

    def __init__(self):
        self.lam, self.lam_steps, self.gate_steps = [], [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        state = trainer.optimizers[0].state
        self.lam.append(float(pl_module.lam.detach()[0]))
        self.lam_steps.append(int(state[pl_module.lam]["step"]) if pl_module.lam in state else 0)
        gates = list(pl_module.encoder.gates.parameters())
        self.gate_steps.append({int(state[p]["step"]) if p in state else 0 for p in gates})


def dual_trajectory(dense_steps: int, gated_steps: int) -> DualState:
    """A fit whose λ gradient ĝ − ρ is the same at every gated step: every sequence has the same
    length (min_seq_len = seq_len) and every gate scores each token with its bias alone (v = 0,
    gate lr 0), so ĝ does not depend on the batch nor on what the backbone learned densely."""
    _, dm, system = make(f"budget.dense_steps={dense_steps}", "data.min_seq_len=32", "budget.ratio=0.2",
                         "optim.gate_lr=0.0", "optim.dual_lr=0.05", "data.train_size=160")
    with torch.no_grad():
        system.encoder.gates[0].v.weight.zero_()
    trace = DualState()
    L.Trainer(max_steps=dense_steps + gated_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0,
              accelerator="cpu").fit(system, datamodule=dm)
    return trace


def test_dual_and_gate_optimiser_state_starts_with_the_budget_phase():
    """λ after k gated steps is the same with dense_steps = 0 and 4 (exactly: same gradients, fresh
    Adam state), and the dense steps neither move λ nor count in Adam's bias correction."""
    plain, dense = dual_trajectory(0, 5), dual_trajectory(4, 5)
    assert dense.lam[:4] == [0.0] * 4 and dense.lam_steps[:4] == [0] * 4 and dense.gate_steps[:4] == [{0}] * 4
    assert dense.lam[4:] == plain.lam  # exact equality
    assert dense.lam_steps[4:] == plain.lam_steps == [1, 2, 3, 4, 5]
    assert dense.gate_steps[4:] == [{k} for k in range(1, 6)]
    assert plain.lam[-1] == pytest.approx(5 * 0.05, rel=1e-3)  # a steady gradient: Adam moves λ by η per step


def test_budget_warmup_clamps_a_negative_step():
    """t < 0 (before the warm-up starts) is t = 0: the target is 1, never above it."""
    rho = torch.tensor([0.3, 0.6])
    torch.testing.assert_close(annealed_targets(rho, -5, 10), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(annealed_targets(rho, 5, 10), torch.tensor([0.65, 0.8]))


@pytest.mark.slow
def test_byo_preset_reaches_its_budget_on_2000_examples(tmp_path):
    """The BYO preset's schedule and gate settings (dense 20 %, no warm-up, gate lr 5e-3, eta 5e-2, the
    equality with the augmented Lagrangian, lambda2 from 10, gates starting at P(kept) = rho) on a
    generated 2,000-example JSONL (150 steps in 3 epochs): at the end of training every gated layer's
    expected retention (the summary's, over the last gated steps) is within 0.05 of rho (with the old
    gate lr 1e-3 and log alpha 2 it ended at 0.95). A tiny random-init model stands in for MiniLM, the
    gate before layer 0, where every sentiment word it drops is lost to [CLS]."""
    path = write_jsonl(tmp_path / "mine.jsonl", spread_rows(2000))
    cfg = compose(["data=byo", "model=tiny", "model.hidden_size=16", "model.num_layers=2", "model.intermediate_size=32",
                   "gate.layers=[0]", "data.seq_len=64", "optim.lr=3e-3", f"data.data_files={path}",
                   f"data.cache_dir={tmp_path / 'cache'}"])
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    L.Trainer(max_epochs=cfg.trainer.max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
              accelerator="cpu").fit(system, datamodule=dm)
    assert system.phases == (30, 0) and system.global_step == 150
    gaps = runner.budget_gaps(system)
    assert max(abs(g) for g in gaps.values()) <= runner.BUDGET_TOLERANCE, (gaps, float(system.lam[0]))


class RetentionTrace(Callback):
    """λ_0 and ĝ_0 after every training step."""

    def __init__(self):
        self.lam, self.expected = [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.lam.append(float(pl_module.lam[0].detach()))
        self.expected.append(float(pl_module.last_expected_retention[0]))


@pytest.mark.parametrize("constraint", ["inequality", "equality"])
def test_equality_constraint_lets_lambda_go_negative_and_pushes_g_hat_up(constraint):
    """Gates start nearly closed (log α = −3: ĝ ≈ 0.2) with ρ = 0.9 and λ = 0. Under the inequality
    ĝ ≤ ρ holds, so the ascent's step on ĝ − ρ < 0 is projected back: λ stays exactly 0 and only the
    task moves the gates. Under the equality λ falls below 0 at every step (Adam: about η per step),
    and λ·(ĝ − ρ) with λ < 0 then opens the gates: ĝ rises towards ρ."""
    _, dm, system = make("budget.ratio=0.9", "gate.init_log_alpha=-3.0", "optim.dual_lr=0.5", "optim.gate_lr=0.05",
                         "optim.lr=0.0", "optim.warmup_steps=0", "optim.scheduler=constant", f"budget.constraint={constraint}",
                         "data.train_size=320")
    L.seed_everything(0)
    trace = RetentionTrace()
    L.Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu").fit(system, datamodule=dm)
    lam, expected = torch.tensor(trace.lam), torch.tensor(trace.expected)
    assert expected[0] < 0.3
    if constraint == "inequality":
        assert torch.all(lam == 0.0)
        assert expected[-1] < 0.5
    else:
        assert torch.all(lam[1:] < lam[:-1]) and lam[-1] < -5.0  # η = 0.5 per step over 20 steps
        assert expected[-1] > 0.6


def test_augmented_lagrangian_puts_lambda2_in_the_dual_group():
    """``budget.lagrangian=augmented`` adds λ₂ (one per gated layer, starting at 0) beside λ in the dual
    group; the linear form has none, so its checkpoints keep their keys."""
    _, _, linear = make()
    assert linear.lam_quadratic is None and "lam_quadratic" not in linear.state_dict()
    _, _, system = make("budget.lagrangian=augmented", "optim.dual_lr=0.05")
    groups = system.configure_optimizers()["optimizer"].param_groups
    assert groups[DUAL_GROUP]["params"] == [system.lam, system.lam_quadratic]
    assert groups[DUAL_GROUP]["maximize"] is True and groups[DUAL_GROUP]["lr"] == 0.05
    torch.testing.assert_close(system.lam_quadratic.detach(), torch.zeros(system.encoder.num_gates))
    assert "lam_quadratic" in system.state_dict()  # checkpoints carry λ₂
    assert sum(len(g["params"]) for g in groups) == sum(1 for _ in system.parameters())


def test_init_lambda2_starts_the_quadratic_term_at_its_value():
    """``budget.init_lambda2``: λ₂ starts at the configured value on every gated layer (the restoring pull
    2·λ₂·(ĝ − ρ) acts from the first gated step); the default 0 is the earlier behaviour."""
    _, _, system = make("budget.lagrangian=augmented", "budget.init_lambda2=2.5")
    torch.testing.assert_close(system.lam_quadratic.detach(), torch.full((system.encoder.num_gates,), 2.5))
    _, _, default = make("budget.lagrangian=augmented")
    torch.testing.assert_close(default.lam_quadratic.detach(), torch.zeros(default.encoder.num_gates))


class StepTrace(Callback):
    """ĝ_0 and the batch size of every training step."""

    def __init__(self):
        self.expected, self.sizes = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.expected.append(float(pl_module.last_expected_retention[0]))
        self.sizes.append(int(batch["input_ids"].shape[0]))


def test_summary_g_hat_is_the_sequence_weighted_mean_of_the_last_gated_steps():
    """65 sequences in batches of 16 over 3 epochs: 15 steps, every fifth a batch of one. The summary's
    ĝ − ρ (runner.budget_gaps) is that of the last 10 steps' ĝ weighted by their batch sizes, not the
    last step's (one sequence)."""
    _, dm, system = make("data.train_size=65", "trainer.max_epochs=3", "budget.ratio=0.5", "optim.dual_lr=0.05")
    trace = StepTrace()
    L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu").fit(system, datamodule=dm)
    assert trace.sizes == [16, 16, 16, 16, 1] * 3
    g, n = torch.tensor(trace.expected[-10:]), torch.tensor(trace.sizes[-10:], dtype=torch.float)
    expected = float((g * n).sum() / n.sum())
    (gap,) = runner.budget_gaps(system).values()
    assert gap == pytest.approx(expected - 0.5, abs=1e-6)
    assert gap != pytest.approx(trace.expected[-1] - 0.5, abs=1e-4)  # the one-sequence last step is not it


class DualTrace(Callback):
    """λ_0, λ₂_0 and ĝ_0 after every training step."""

    def __init__(self):
        self.lam, self.lam2, self.expected = [], [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.lam.append(float(pl_module.lam[0].detach()))
        self.lam2.append(float(pl_module.lam_quadratic[0].detach()))
        self.expected.append(float(pl_module.last_expected_retention[0]))


def fit_dual(system, dm, steps):
    L.seed_everything(0)
    trace = DualTrace()
    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[trace], num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu").fit(system, datamodule=dm)
    return torch.tensor(trace.lam), torch.tensor(trace.lam2), torch.tensor(trace.expected)


@pytest.mark.parametrize("constraint", ["inequality", "equality"])
def test_lambda2_grows_while_the_constraint_is_violated(constraint):
    """Gates held fully open (ĝ ≈ 1, gate lr 0) with ρ = 0.05: λ₂'s gradient (ĝ − ρ)² ≈ 0.9 is steady,
    so under either form Adam raises λ₂ by η at every step, as it raises λ."""
    _, dm, system = make("budget.ratio=0.05", "gate.init_log_alpha=8.0", "optim.gate_lr=0.0", "optim.dual_lr=0.01",
                         "budget.lagrangian=augmented", f"budget.constraint={constraint}", "data.train_size=160")
    lam, lam2, _ = fit_dual(system, dm, steps=10)
    assert torch.all(lam2[1:] > lam2[:-1]) and lam2[0] > 0
    assert lam2[-1] == pytest.approx(0.1, rel=0.05)
    assert lam[-1] == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("constraint", ["inequality", "equality"])
def test_lambda2_below_the_budget_under_each_constraint_form(constraint):
    """Gates start nearly closed (log α = −3: ĝ ≈ 0.2) with ρ = 0.9. Inequality: the constraint holds, its
    violation max(0, ĝ − ρ) is 0, so λ₂ gets a zero gradient and stays exactly 0, and λ stays at its
    projection 0. Equality: λ falls below 0 and λ₂ grows (its gradient (ĝ − ρ)² > 0; λ₂ ≥ 0 always),
    and both terms open the gates: ĝ rises towards ρ."""
    _, dm, system = make("budget.ratio=0.9", "gate.init_log_alpha=-3.0", "optim.dual_lr=0.5", "optim.gate_lr=0.05",
                         "optim.lr=0.0", "optim.warmup_steps=0", "optim.scheduler=constant", f"budget.constraint={constraint}",
                         "budget.lagrangian=augmented", "data.train_size=320")
    lam, lam2, expected = fit_dual(system, dm, steps=20)
    assert expected[0] < 0.3
    if constraint == "inequality":
        assert torch.all(lam == 0.0) and torch.all(lam2 == 0.0)
        assert expected[-1] < 0.5
    else:
        assert torch.all(lam[1:] < lam[:-1]) and lam[-1] < -5.0
        assert torch.all(lam2[1:] > lam2[:-1]) and lam2[0] > 0
        assert expected[-1] > 0.6


@pytest.mark.parametrize("constraint", ["inequality", "equality"])
def test_sgd_dual_step_is_the_papers_ascent_proportional_to_the_violation(constraint):
    """``optim.dual_step=sgd``: λ and λ₂ sit in no optimizer group and take, after each step, exactly
    λ ← λ + η(ĝ − ρ) and λ₂ ← λ₂ + η(ĝ − ρ)² (then the projections). Gates held (gate lr 0) nearly
    closed, ĝ ≈ 0.2 against ρ = 0.9: under the equality λ falls by η·0.7 a step, under the inequality
    the projection holds it at 0; λ₂ grows by η·0.49 a step under the equality and stays 0 under the
    inequality (its violation max(0, ĝ − ρ) is 0)."""
    eta, rho = 0.5, 0.9
    _, dm, system = make(f"budget.ratio={rho}", "gate.init_log_alpha=-3.0", f"optim.dual_lr={eta}", "optim.gate_lr=0.0",
                         "optim.dual_step=sgd", f"budget.constraint={constraint}", "budget.lagrangian=augmented",
                         "data.train_size=160")
    groups = system.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["backbone", "gate"]
    assert sum(len(g["params"]) for g in groups) + 2 == sum(1 for _ in system.parameters())  # all but λ, λ₂
    lam, lam2, expected = fit_dual(system, dm, steps=8)
    violation = expected - rho
    assert torch.all(violation < -0.5)
    if constraint == "inequality":
        assert torch.all(lam == 0.0) and torch.all(lam2 == 0.0)
    else:
        torch.testing.assert_close(lam, torch.cumsum(eta * violation, 0))
        torch.testing.assert_close(lam2, torch.cumsum(eta * violation.square(), 0))
