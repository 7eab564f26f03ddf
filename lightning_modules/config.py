"""Composing the config tree: schema defaults ← conf/config.yaml ← group selections
(``model=minilm``) ← ``--config FILE`` ← dot-list overrides (``budget.ratio=0.5``); then validation.
Every failure is a :class:`conf.schema.ConfigError` whose one-line message names the key."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conf import CONF_DIR
from conf.schema import Config, ConfigError, validate

__all__ = ["compose", "config_groups", "backbone_num_layers", "SECTIONS"]

# Config sections (model, data, ...): a group of that name replaces the section; any other group
# (ablation) is a preset merged over the whole tree.
SECTIONS = tuple(f.name for f in fields(Config) if f.name not in ("seed", "method"))


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


def compose(overrides: Sequence[str] = (), config_file: str | Path | None = None) -> DictConfig:
    """The resolved, validated config (without the backbone-dependent check of gate layers)."""
    cfg = OmegaConf.structured(Config)
    cfg = _merge(cfg, OmegaConf.load(CONF_DIR / "config.yaml"), "conf/config.yaml")
    groups = config_groups()
    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key in groups:
            if value not in groups[key]:
                raise ConfigError(f"{key}={value!r} is not a known {key} config; allowed: {', '.join(groups[key])}")
            option = OmegaConf.load(CONF_DIR / key / f"{value}.yaml")
            if key in SECTIONS:  # model=minilm: the option replaces that section
                cfg[key] = OmegaConf.merge(OmegaConf.structured(Config)[key], option)
            else:  # a preset (ablation=fixed_lambda): merged over the whole tree
                cfg = _merge(cfg, option, f"conf/{key}/{value}.yaml")
        else:
            dotlist.append(item)
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

    try:
        return int(backbone_config(cfg.model.backbone).num_hidden_layers)
    except OSError as err:
        raise ConfigError(f"model.backbone={cfg.model.backbone!r} cannot be loaded: {str(err).splitlines()[0]}") from None
