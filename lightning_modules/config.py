"""Composing the config tree: schema defaults ← conf/config.yaml ← group selections
(``model=minilm``; presets marked ``# @package _global_`` before plain options) ← ``--config FILE``
← dot-list overrides (``budget.ratio=0.5``); then validation.
Every failure is a :class:`conf.schema.ConfigError` whose one-line message names the key."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conf import CONF_DIR
from conf.schema import Config, ConfigError, validate

__all__ = ["compose", "config_groups", "backbone_num_layers"]


def config_groups() -> dict[str, list[str]]:
    """Group name → available option names (``conf/<group>/<option>.yaml``)."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir() and not d.name.startswith(("_", "."))
    }


def _merge(base: DictConfig, other, source: str) -> DictConfig:
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
    cfg = _merge(cfg, OmegaConf.load(CONF_DIR / "config.yaml"), "conf/config.yaml")
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
    selections.sort(key=lambda sel: not _is_global(sel[1]))
    for key, path in selections:
        if _is_global(path):
            cfg = _merge(cfg, _global_preset(cfg, key, path), str(path.relative_to(CONF_DIR.parent)))
        else:
            cfg[key] = OmegaConf.merge(OmegaConf.structured(Config)[key], OmegaConf.load(path))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {str(path)!r}: no such file")
        cfg = _merge(cfg, OmegaConf.load(path), str(path))
    try:
        cli = OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    cfg = _merge(cfg, cli, "override")
    validate(cfg)
    return cfg


def backbone_num_layers(cfg: DictConfig) -> int:
    """Number of transformer layers of the configured backbone, read from its config only (no weights)."""
    if cfg.model.backbone == "random":
        return int(cfg.model.num_layers)
    from retention.backbones import backbone_config

    from retention.encoder import SUPPORTED_MODEL_TYPES

    try:
        config = backbone_config(cfg.model.backbone)
    except OSError as err:
        raise ConfigError(f"model.backbone={cfg.model.backbone!r} cannot be loaded: {str(err).splitlines()[0]}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model.backbone={cfg.model.backbone!r} has model type {config.model_type!r}, which the retention "
            f"wrapper does not support; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return int(config.num_hidden_layers)
