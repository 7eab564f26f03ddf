"""Tiny configs shared by the Lightning and CLI tests."""

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
    build a system directly, so a new schema field never breaks them); choices as plain strings, as
    ``conf.compose.compose`` hands them out."""
    from omegaconf import OmegaConf

    from conf.schema import Config

    return {**OmegaConf.to_container(OmegaConf.structured(Config)[name], enum_to_str=True), **overrides}
