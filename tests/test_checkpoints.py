"""Checkpoints a user names (``model.init_from``, ``retention evaluate --checkpoint``) load with
``weights_only=True``: a file carrying a pickled payload is refused with one line and exit code 2, and
runs nothing; real checkpoints of ``retention train`` (every method, full Lightning state with the
optimisers) load."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from commands import cli, runner
from commands.checkpoints import CheckpointError, load_checkpoint
from conf.compose import compose
from datamodules import build_datamodule
from lightning_modules import build_system
from retention.methods import Method

from .helpers import TINY


class Payload:
    """Unpickling this runs ``os.system(command)``: what a malicious checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def payload_checkpoint(tmp_path):
    """(a checkpoint whose unpickling would create ``marker``, marker), with a config.yaml beside it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "run" / "best.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": Payload(f"touch {marker}")}, path)
    OmegaConf.save(compose(TINY), path.parent / runner.CONFIG_NEXT_TO_CHECKPOINT)
    return path, marker


def test_payload_is_refused_and_runs_nothing(payload_checkpoint):
    path, marker = payload_checkpoint
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "model.init_from")
    assert str(err.value).startswith(f"model.init_from={str(path)!r}: refused to load: it holds posix.system")
    assert not marker.exists()


def test_init_from_payload_exits_2_before_any_run(payload_checkpoint, tmp_path, monkeypatch, capsys):
    path, marker = payload_checkpoint
    monkeypatch.chdir(tmp_path)

    def boom(*a, **k):
        raise AssertionError("the run started")

    monkeypatch.setattr(runner, "make_logger", boom)
    monkeypatch.setattr(runner, "build_datamodule", boom)
    assert cli.main(["train", *TINY, f"model.init_from={path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error: model.init_from=" in err[0] and "refused to load" in err[0]
    assert not marker.exists() and not (tmp_path / "mlflow.db").exists()


def test_evaluate_payload_exits_2(payload_checkpoint, tmp_path, capsys):
    path, marker = payload_checkpoint
    assert cli.main(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "ev"),
                     "--throughput-batches", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--checkpoint={str(path)!r}: refused to load: it holds posix.system" in err[0]
    assert not marker.exists()


def test_not_a_checkpoint_is_one_line(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match=r"junk.ckpt': cannot be read as a checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")


FAST = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


@pytest.mark.slow
@pytest.mark.parametrize("method", [m.value for m in Method])
def test_real_checkpoints_of_every_method_load(method, tmp_path, monkeypatch):
    """What ``retention train`` writes (the full Lightning state: weights, optimiser states,
    schedulers, loops, callbacks, hyperparameters) holds nothing weights_only loading refuses, and
    warm-starts a system of the same config tensor for tensor."""
    monkeypatch.chdir(tmp_path)
    seq = ["data.seq_len=512"] if method == "bigbird" else []  # block-sparse attention needs T > 176 at rho 0.3
    cfg = compose([*TINY, *FAST, *seq, f"method={method}", f"logging.tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    best = runner.train(cfg, print_summary=False)["checkpoint"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(best) == []
    ckpt = load_checkpoint(best)
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["state_dict"]
    runner.check_run(compose([*TINY, *seq, f"method={method}", f"model.init_from={best}"]))
    system = build_system(cfg, build_datamodule(cfg))
    method_state = sorted(k for k in system.state_dict() if k == "lam" or k.startswith(("lam_quadratic", "encoder.gates.")))
    assert runner.warm_start(system, best) == {"missing": method_state, "unused": method_state}
    if not Method(method).is_sparse:  # a sparse comparator maps the tensors (adapt_dense_state) as from a dense model
        assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in system.state_dict().items() if k not in method_state)
