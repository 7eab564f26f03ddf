"""Tiny configs shared by the Lightning and CLI tests, and the token batch shared by the encoder tests."""

import torch

TINY = [
    "model.hidden_size=16",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "gate.layers=[1]",
    "data.seq_len=32",
    "data.vocab_size=40",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "optim.warmup_steps=0",
    "budget.dense_steps=0",
    "budget.warmup_steps=0",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
]


def section(name: str, **overrides) -> dict:
    """A config section as a plain dict: the schema's defaults with ``overrides`` (for tests that
    build a system directly, so a new schema field never breaks them)."""
    from omegaconf import OmegaConf

    from conf.schema import Config

    return {**OmegaConf.to_container(OmegaConf.structured(Config)[name]), **overrides}


# ---------------------------------------------------------------------------------------------- encoder tests
ARCHS = ["bert", "roberta", "distilbert"]
CLS, SEP = 5, 6


def encoder_batch(b: int = 4, t: int = 24, pad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) over a vocabulary of 50: [CLS] first, [SEP] last, random ids >= 7 between; with
    ``pad`` rows of lengths t, t-5, t-11, t padded with id 0."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(7, 50, (b, t), generator=g)
    lengths = torch.tensor([t, t - 5, t - 11, t][:b]) if pad else torch.full((b,), t)
    mask = (torch.arange(t).expand(b, t) < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(b), lengths - 1] = SEP
    return ids.masked_fill(mask == 0, 0), mask
