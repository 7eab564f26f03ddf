"""The config checks that read the backbone's own config (no weights): whether the retention wrapper
supports its model type for the task, and its layer count and position table. They import
``retention`` (and with it transformers), which ``conf/`` does not (config errors of the schema answer
before torch loads), so they run in :func:`commands.runner.check_config` once the config has composed."""

from __future__ import annotations

import functools

from omegaconf import DictConfig

from conf.checks import ConfigError
from retention.backbones import backbone_config, position_offset
from retention.encoder import SEQ2SEQ_MODEL_TYPES, SUPPORTED_MODEL_TYPES

__all__ = ["backbone_num_layers", "check_backbone_supported"]


@functools.lru_cache(maxsize=8)
def _pretrained_config(name: str):
    """The config of a named / local backbone (no weights), read once per process."""
    try:
        return backbone_config(name)
    except OSError as err:
        raise ConfigError(f"model.backbone={name!r} cannot be loaded: {str(err).splitlines()[0]}") from None


def backbone_num_layers(cfg: DictConfig) -> int:
    """Number of transformer layers of the configured backbone, read from its config only (no weights);
    ``data.seq_len`` must fit its position table. (Whether the wrapper supports the model type is
    :func:`check_backbone_supported`'s job.)"""
    if cfg.model.backbone == "random":
        return int(cfg.model.num_layers)
    config = _pretrained_config(cfg.model.backbone)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None:
        limit -= position_offset(config.model_type)
        if cfg.data.seq_len > limit:
            raise ConfigError(
                f"data.seq_len={cfg.data.seq_len} is out of range; allowed: <= {limit} "
                f"(the positions of model.backbone={cfg.model.backbone!r})"
            )
    return int(config.num_hidden_layers)


def check_backbone_supported(cfg: DictConfig, task: str) -> None:
    """The backbone's model type must be one the retention wrapper hooks: an encoder–decoder (BART, T5)
    for summarization, an encoder-only model for the other tasks. Read from the config only (no weights)."""
    if cfg.model.backbone == "random":
        model_type, key = cfg.model.arch, "model.arch"
    else:
        model_type, key = _pretrained_config(cfg.model.backbone).model_type, "model.backbone"
    if task == "summarization":
        allowed = SEQ2SEQ_MODEL_TYPES
    else:
        allowed = tuple(t for t in SUPPORTED_MODEL_TYPES if t not in SEQ2SEQ_MODEL_TYPES)
    if model_type not in allowed:
        value = cfg.model.arch if key == "model.arch" else cfg.model.backbone
        raise ConfigError(f"{key}={value!r} has model type {model_type!r}, which the retention wrapper does not "
                          f"support for {task}; supported: {', '.join(allowed)}")
