"""DDP on the CPU with gloo, 2 processes: evaluation metrics gathered over ranks with each example
counted once (Lightning's DistributedSampler pads an odd split), the global ĝ in the Lagrangian, λ one
value on every rank, Hard-Concrete noise that differs per rank, and 2 processes × batch B against
1 process × batch 2B."""

import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from conf.compose import compose
from datamodules import build_datamodule
from lightning_modules import build_system
from lightning_modules.classification import DocumentMetric, logits_and_labels
from lightning_modules.metrics import Deduplicated, ExampleMean, SpanCandidates
from retention.budget import global_batch_mean
from retention.hard_concrete import HardConcrete

from .helpers import TINY

WORLD = 2


# ---------------------------------------------------------------------------------------------- metrics, 2 ranks
def split_data(n: int = 7) -> dict[str, torch.Tensor]:
    """An odd split of n examples (the same on every rank): accuracy inputs, a per-example value, QA
    windows (two per question) and sliding windows of documents (two per document)."""
    g = torch.Generator().manual_seed(3)
    return {
        "preds": torch.randn(n, 3, generator=g),
        "labels": torch.randint(0, 3, (n,), generator=g),
        "values": torch.rand(n, generator=g),
        "question": torch.arange(n) // 2,
        "score": torch.randn(n, generator=g).double(),
        "start": torch.randint(0, 50, (n,), generator=g),
        "doc": torch.arange(n) // 2,
    }


def fresh_metrics() -> dict[str, object]:
    return {
        "acc": Deduplicated(MulticlassAccuracy(num_classes=3, average="micro"), num_inputs=2),
        "plain_acc": MulticlassAccuracy(num_classes=3, average="micro"),  # today's metric: counts padding twice
        "mean": ExampleMean(),
        "plain_mean": MeanMetric(),
        "doc": Deduplicated(DocumentMetric(MulticlassAccuracy(num_classes=3, average="micro"), logits_and_labels, "mean"),
                            num_inputs=3),
        "spans": SpanCandidates(),
    }


def feed(metrics: dict, data: dict, rows: torch.Tensor) -> None:
    """Update every metric with the examples at ``rows`` (positions in the split), two at a time."""
    for batch in rows.split(2):
        d = {k: v[batch] for k, v in data.items()}
        metrics["acc"].update(batch, d["preds"], d["labels"])
        metrics["plain_acc"].update(d["preds"], d["labels"])
        metrics["mean"].update(batch, d["values"])
        metrics["plain_mean"].update(d["values"])
        metrics["doc"].update(batch, d["preds"], d["labels"], d["doc"])
        metrics["spans"].update(batch, d["question"], d["score"], d["start"], d["start"] + 3)


def computed(metrics: dict) -> dict[str, torch.Tensor]:
    return {k: m.compute() for k, m in metrics.items()}


def _metrics_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = split_data()
        n = len(data["values"])
        # the positions DistributedSampler gives this rank (rank 1 gets position 0 again: 7 → 2 × 4)
        rows = torch.tensor(list(DistributedSampler(range(n), num_replicas=WORLD, rank=rank, shuffle=False)))
        metrics = fresh_metrics()
        feed(metrics, data, rows)
        result = computed(metrics)
        # the global ĝ: value, and the gradient each rank's gates receive (before DDP averages it)
        batch = 3 + 2 * rank  # unequal shares: 3 and 5 sequences
        x = torch.full((2,), 0.1 * (rank + 1), requires_grad=True)  # this rank's batch means ĝ_ℓ,r (K = 2)
        g = global_batch_mean(x, batch)
        (torch.tensor([2.0, 3.0]) * g).sum().backward()
        result.update(rows=rows, global_g=g.detach(), grad=x.grad)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_gather_every_rank_and_count_a_padded_example_once(tmp_path):
    mp.spawn(_metrics_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    data = split_data()
    n = len(data["values"])
    assert ranks[1]["rows"].tolist() == [1, 3, 5, 0]  # the sampler padded the split with position 0
    single = fresh_metrics()
    feed(single, data, torch.arange(n))  # the same split in 1 process, in order
    expected = computed(single)
    for result in ranks:  # every rank computes the metrics of the whole split
        for key in ("acc", "mean", "doc", "spans"):
            torch.testing.assert_close(result[key], expected[key], rtol=1e-6, atol=0)
    assert float(expected["acc"]) == float((data["preds"].argmax(1) == data["labels"]).float().mean())
    torch.testing.assert_close(expected["mean"], data["values"].mean())
    # without de-duplication the padded example counts twice: the mean is that of 8 values, not 7
    torch.testing.assert_close(ranks[0]["plain_mean"], torch.cat([data["values"], data["values"][:1]]).mean())
    assert not torch.allclose(ranks[0]["plain_mean"], expected["mean"])
    # spans: per question the window with the higher score
    best = [int(data["start"][q * 2 + int(q * 2 + 1 < n and data["score"][q * 2 + 1] > data["score"][q * 2])])
            for q in range(4)]
    assert ranks[0]["spans"].tolist() == [[q, s, s + 3] for q, s in enumerate(best)]
    # global ĝ = (3·0.1 + 5·0.2) / 8 on both ranks; d/dx_r of λ·ĝ is λ·B_r/8, times R before DDP's ÷ R
    for r, result in enumerate(ranks):
        torch.testing.assert_close(result["global_g"], torch.full((2,), (3 * 0.1 + 5 * 0.2) / 8))
        torch.testing.assert_close(result["grad"], WORLD * torch.tensor([2.0, 3.0]) * (3 + 2 * r) / 8)


# ---------------------------------------------------------------------------------------------- Lightning runs
def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


@pytest.mark.slow
def test_two_process_test_metrics_equal_one_process(tmp_path):
    """The same weights tested on an odd test split (33: the sampler pads rank 1 with example 0) in
    2 processes and in 1 give the same test metrics: accuracies exactly (the same examples are right),
    losses and kept fractions up to float summation order (rtol 1e-6)."""
    cfg = compose([*TINY, "data.test_size=33", "data.eval_batch_size=8", "data.min_seq_len=12"])
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    torch.save(system.state_dict(), tmp_path / "weights.pt")
    two = quiet_trainer(strategy="ddp_spawn", devices=WORLD).test(system, datamodule=dm, verbose=False)[0]
    system.load_state_dict(torch.load(tmp_path / "weights.pt"))
    one = quiet_trainer(devices=1).test(system, datamodule=build_datamodule(cfg), verbose=False)[0]
    assert set(one) == set(two) and {"test/acc_hard", "test/kept_fraction_l1", "test/loss_soft"} <= set(one)
    for key in one:
        if "acc" in key:
            assert two[key] == one[key], key
        else:
            assert two[key] == pytest.approx(one[key], rel=1e-6), key


class InOrder(L.LightningDataModule):
    """``dm``'s training split in order (no shuffle), ``batch_size`` per process: under DDP rank r
    reads positions r, r + W, ... (a ``DistributedSampler`` without shuffling: the one Lightning
    injects always shuffles a training split, so the Trainer runs with ``use_distributed_sampler=False``),
    so the W ranks' step-k batches together are the 1-process step-k batch of W·``batch_size``."""

    def __init__(self, dm, batch_size: int) -> None:
        super().__init__()
        self.dm, self.batch_size = dm, batch_size

    def setup(self, stage: str) -> None:
        self.dm.setup(stage)

    def train_dataloader(self) -> DataLoader:
        data, world = self.dm.datasets["train"], self.trainer.world_size
        sampler = DistributedSampler(data, world, self.trainer.global_rank, shuffle=False) if world > 1 else None
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, shuffle=False)


class PerRankRecord(Callback):
    """Each rank's λ after every step, its loss terms, the ĝ it used, and one Hard-Concrete draw at
    the start of training; saved to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows: list[dict[str, float]] = []
        self.noise = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.noise = HardConcrete().sample(torch.zeros(16))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        self.rows.append({"lambda": float(pl_module.lam.detach()[0]), "task": float(m["train/task_loss_step"]),
                          "lagrangian": float(m["train/lagrangian_step"]),
                          "g": float(m["train/expected_retention_l1_step"])})

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"rows": self.rows, "noise": self.noise}, self.folder / f"rank{trainer.global_rank}.pt")


def fit_in_order(tmp_path: Path, devices: int, batch_size: int, steps: int, *overrides: str) -> list[dict]:
    """Fit the tiny config for ``steps`` steps on ``devices`` processes with ``batch_size`` each, every
    dropout off; returns each rank's :class:`PerRankRecord`."""
    folder = tmp_path / f"devices{devices}"
    folder.mkdir()
    cfg = compose([*TINY, "data.train_size=512", "data.min_seq_len=12", "model.dropout=0.0", *overrides])
    L.seed_everything(0, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    for module in system.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # the backbone's hidden dropout too: its masks would differ between the two runs
    strategy = {"strategy": "ddp_spawn", "devices": devices} if devices > 1 else {"devices": 1}
    quiet_trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=1, use_distributed_sampler=False,
                  gradient_clip_val=cfg.optim.grad_clip, callbacks=[PerRankRecord(folder)],
                  **strategy).fit(system, datamodule=InOrder(dm, batch_size))
    return [torch.load(folder / f"rank{r}.pt") for r in range(devices)]


@pytest.mark.slow
def test_two_processes_of_batch_b_follow_one_process_of_batch_2b(tmp_path):
    """2 processes × B = 8 against 1 process × 2B = 16 on the same data order, 32 steps, with the
    noise-free sigmoid relaxation (Hard-Concrete noise differs per rank by design, so sampled gates
    could not agree) and every dropout off.

    What must agree: λ is one value on both ranks at every step (bit-for-bit: DDP all-reduces its
    gradient and every rank takes the same Adam step); each rank's Lagrangian and ĝ are the global
    batch's (the 1-process values), and the ranks' mean task loss is the 1-process task loss.
    Tolerance: the two runs differ only in the order of floating-point sums (a batch of 16 reduced
    in one pass against two halves of 8 averaged over gloo), float32 rounding of ~1e-7 relative;
    Adam's normalised step passes such differences on without amplifying them while gradients stay
    away from 0 (measured over these 32 steps: at most 2.2e-7 relative on the losses, ĝ and λ), so
    we allow 1e-5 relative (1e-6 absolute). Hard-Concrete noise: a draw at the start of training
    differs between the two ranks."""
    steps = 32
    # gates start nearly open (log α = 2) and move slowly, so the constraint is violated and λ rises
    overrides = ("gate.relaxation=sigmoid", "budget.ratio=0.3", "optim.dual_lr=0.05", "gate.init_log_alpha=2.0", "optim.gate_lr=1e-3")
    two = fit_in_order(tmp_path, WORLD, 8, steps, *overrides)
    (one,) = fit_in_order(tmp_path, 1, 16, steps, *overrides)
    r0, r1, single = two[0]["rows"], two[1]["rows"], one["rows"]
    assert len(r0) == len(r1) == len(single) == steps
    assert [r["lambda"] for r in r0] == [r["lambda"] for r in r1]  # one λ on all ranks, every step
    assert [r["lagrangian"] for r in r0] == [r["lagrangian"] for r in r1]  # the global constraint on both
    assert single[-1]["lambda"] > 0.5  # the constraint was violated: λ rose
    close = dict(rel=1e-5, abs=1e-6)
    for step, (a, b, s) in enumerate(zip(r0, r1, single)):
        assert a["lambda"] == pytest.approx(s["lambda"], **close), step
        assert a["g"] == pytest.approx(s["g"], **close) and b["g"] == pytest.approx(s["g"], **close), step
        assert a["lagrangian"] == pytest.approx(s["lagrangian"], **close), step
        assert (a["task"] + b["task"]) / 2 == pytest.approx(s["task"], **close), step
    assert not torch.equal(two[0]["noise"], two[1]["noise"])  # each rank draws its own gate noise
