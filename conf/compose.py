"""Composing the config tree: schema defaults ← conf/config.yaml ← group selections
(``model=minilm``; presets marked ``# @package _global_`` before plain options) ← ``--config FILE``
← dot-list overrides (``budget.ratio=0.5``); then validation.
Every failure is a :class:`conf.schema.ConfigError` whose one-line message names the key."""

from __future__ import annotations

import functools
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conf import CONF_DIR
from conf.schema import Config, ConfigError, validate

__all__ = ["compose", "config_groups", "backbone_num_layers"]


def config_groups() -> dict[str, list[str]]:
    """Group name → available option names (``conf/<group>/<option>.yaml``). A folder is a group when
    it is named after a section of :class:`Config` (``model``, ``data``, ``method``, ``ablation``) or
    holds only presets marked ``# @package _global_`` (``experiment``); ``conf/sweep/`` holds sweep
    configs and is not one."""
    sections = {f.name for f in fields(Config)}
    groups = {}
    for d in sorted(CONF_DIR.iterdir()):
        options = sorted(d.glob("*.yaml")) if d.is_dir() else []
        if options and (d.name in sections or all(_is_global(o) for o in options)):
            groups[d.name] = [o.stem for o in options]
    return groups


def merge(base: DictConfig, other, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{msg}") from None


_GLOBAL_PACKAGE = "# @package _global_"


def _is_global(path: Path) -> bool:
    """A group option file whose first line is ``# @package _global_`` (Hydra's convention) is a
    preset: its content is merged at the root, so e.g. ``conf/data/imdb.yaml`` can set the
    ``model``, ``optim`` and ``trainer`` sections of its benchmark as well as ``data``."""
    with open(path, encoding="utf-8") as f:
        return f.readline().strip() == _GLOBAL_PACKAGE


def _global_preset(cfg: DictConfig, key: str, path: Path) -> DictConfig:
    """The preset's own group section replaces that section (schema defaults underneath, as for a
    plain option); the other sections it names are merged over the current config."""
    preset = OmegaConf.load(path)
    if key in preset:
        cfg[key] = OmegaConf.structured(Config)[key]
    return preset


def compose(overrides: Sequence[str] = (), config_file: str | Path | None = None) -> DictConfig:
    """The resolved, validated config (without the backbone-dependent check of gate layers)."""
    cfg = OmegaConf.structured(Config)
    cfg = merge(cfg, OmegaConf.load(CONF_DIR / "config.yaml"), "conf/config.yaml")
    groups = config_groups()
    dotlist, selections = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key in groups:
            if value not in groups[key]:
                raise ConfigError(f"{key}={value!r} is not a known {key} config; allowed: {', '.join(groups[key])}")
            selections.append((key, CONF_DIR / key / f"{value}.yaml"))
        else:
            dotlist.append(item)
    # Presets (files marked `# @package _global_`) first, so an explicit `model=...` wins over the
    # model a benchmark preset names; dot-list overrides win over both.
    marked = sorted(((key, path, _is_global(path)) for key, path in selections), key=lambda sel: not sel[2])
    for key, path, is_global in marked:
        if is_global:
            cfg = merge(cfg, _global_preset(cfg, key, path), str(path.relative_to(CONF_DIR.parent)))
        else:
            cfg[key] = OmegaConf.merge(OmegaConf.structured(Config)[key], OmegaConf.load(path))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {str(path)!r}: no such file")
        cfg = merge(cfg, OmegaConf.load(path), str(path))
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    cfg = merge(cfg, cli, "override")
    validate(cfg)
    return cfg


@functools.lru_cache(maxsize=8)
def _pretrained_config(name: str):
    """The config of a named / local backbone (no weights), read once per process."""
    from retention.backbones import backbone_config

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
        from retention.backbones import position_offset

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
    from retention.encoder import SEQ2SEQ_MODEL_TYPES, SUPPORTED_MODEL_TYPES

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
