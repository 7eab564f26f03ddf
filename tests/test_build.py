"""build_system: the system receives the modules it was built with, for every method; its checkpoint
records plain hyperparameters (loadable with ``weights_only=True``); it pickles (ddp_spawn)."""

import dataclasses
import pickle

import lightning as L
import pytest
import torch

from conf.compose import compose
from datamodules import build_datamodule
from lightning_modules import Optimisation, RetentionClassifier, RetentionSummarizer, build_system, optimisation
from retention.budget import Budget
from retention.encoder import RetentionEncoder
from retention.backbones import build_seq2seq
from retention.baselines import L2NormSelector, LTPScorer, TrainedScorer
from retention.gate import ContextScorer
from retention.sparse import SparseAttentionEncoder

from .helpers import TINY
from .helpers import optimisation as default_optimisation


def make(*overrides):
    cfg = compose([*TINY, *overrides])
    dm = build_datamodule(cfg)
    return cfg, dm, build_system(cfg, dm)


def test_optimisation_reads_optim_and_the_lagrangian_budget_keys():
    cfg = compose([*TINY, "optim.lr=0.003", "optim.gate_lr=0.02", "optim.dual_lr=0.05", "optim.weight_decay=0.1",
                   "optim.betas=[0.8,0.9]", "optim.scheduler=cosine", "optim.warmup_steps=7",
                   "budget.dense_steps=3", "budget.warmup_steps=11", "budget.init_lambda=0.5"])
    assert optimisation(cfg) == Optimisation(lr=0.003, gate_lr=0.02, dual_lr=0.05, weight_decay=0.1, betas=(0.8, 0.9),
                                             scheduler="cosine", warmup_steps=7, dense_steps=3, budget_warmup_steps=11,
                                             init_lambda=0.5)
    with pytest.raises(ValueError, match="scheduler must be one of linear, cosine, constant"):
        dataclasses.replace(optimisation(cfg), scheduler="step")


@pytest.mark.parametrize("method,encoder_class,scorer_class,paths", [
    ("gate", RetentionEncoder, ContextScorer, ("soft", "hard", "dense")),
    ("l2", RetentionEncoder, ContextScorer, ("soft", "hard", "dense")),
    ("ltp", RetentionEncoder, LTPScorer, ("soft", "hard", "dense")),
    ("longformer", SparseAttentionEncoder, None, ("hard",)),
])
def test_build_system_hands_the_method_its_encoder(method, encoder_class, scorer_class, paths):
    _, dm, system = make(f"method={method}", "budget.init_lambda=0.25", "data.seq_len=64")
    assert isinstance(system, RetentionClassifier) and type(system.encoder) is encoder_class
    assert [type(g) for g in system.encoder.gates] == ([scorer_class] if scorer_class else [])
    assert system.encoder.gate_layers == [1] and system.eval_paths == paths
    assert type(system.selector) is (L2NormSelector if method == "l2" else TrainedScorer)
    assert torch.equal(system.lam.detach(), torch.tensor([0.25]))
    assert system.head[-1].out_features == dm.num_labels == 4 and system.head[1].in_features == 16


def test_checkpoint_records_plain_hyperparameters(tmp_path):
    cfg, dm, system = make("model.dropout=0.2", "optim.lr=0.004", "budget.ratio=0.25", "budget.schedule=linear")
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu")
    trainer.fit(system, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    hparams = torch.load(tmp_path / "c.ckpt", weights_only=True)["hyper_parameters"]  # plain values only
    assert hparams == {
        "num_labels": 4, "dropout": 0.2, "method": "gate",
        "optim": dataclasses.asdict(optimisation(cfg)),
        "encoder": {"class": "RetentionEncoder", "model_type": "bert", "hidden_size": 16, "gate_layers": [1],
                    "budget": {"ratio": 0.25, "tokens": None, "schedule": "linear"}},
    }
    assert hparams["optim"]["lr"] == 0.004


def test_system_pickles_with_its_encoder():
    """ddp_spawn pickles the system into each process: the copy has the same weights and settings."""
    _, _, system = make()
    copy = pickle.loads(pickle.dumps(system))
    assert copy.optim == system.optim and copy.encoder.gate_layers == [1]
    own = system.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in copy.state_dict().items()) and copy.state_dict().keys() == own.keys()


def test_summarizer_needs_the_encoder_around_its_own_encoder_stack():
    def bart():
        return build_seq2seq("random", arch="bart", vocab_size=40, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32, max_positions=32, special_ids={"pad": 0, "bos": 1, "eos": 2})

    seq2seq, other = bart(), bart()
    with pytest.raises(ValueError, match=r"must wrap seq2seq.get_encoder\(\)"):
        RetentionSummarizer(RetentionEncoder(other.get_encoder(), [0], Budget(ratio=0.5)), seq2seq, default_optimisation())
    system = RetentionSummarizer(RetentionEncoder(seq2seq.get_encoder(), [0], Budget(ratio=0.5)), seq2seq,
                                 default_optimisation(scheduler="cosine"))
    assert system.encoder.backbone is system.seq2seq.get_encoder() and system.optim.scheduler == "cosine"
    assert system.hparams["generation"] is None and "seq2seq" not in system.hparams and "tokenizer" not in system.hparams
