"""Composing the config tree: schema defaults ← conf/config.yaml ← group selections
(``model=minilm``; presets marked ``# @package _global_`` before plain options, method and
ablation presets after task presets) ← ``--config FILE``
← dot-list overrides (``budget.ratio=0.5``); then validation.

The ``data`` section is typed by the schema of the data module finally selected (``data=kv_retrieval``
or ``data.name=kv_retrieval``; :data:`conf.data_schema.DATA_SCHEMAS`): a key that module does not have
is an error naming the key and the module. The section starts afresh (that module's defaults) at the
last source that selects a module: a ``data=<name>`` option (then its preset), or a ``data.name`` that
changes the module (so a saved ``config.yaml`` of a QASPER run, given as ``--config``, does not
inherit the needle keys of ``conf/config.yaml``); later sources refine it. ``data.seed`` (data
generation, split carving) is the top-level ``seed`` unless a source of the data section sets it
(a saved ``config.yaml`` does).

The composed config is returned with every choice as its plain string (``OmegaConf.to_container(...,
enum_to_str=True)``, in struct mode): what the printed config, the ``config.yaml`` beside a checkpoint,
the MLflow params and Lightning's checkpointed hyperparameters hold (torch's ``weights_only`` loading
rejects Enum classes), and what a saved ``config.yaml`` loads back as, so the code after compose sees
one kind of config however it was made.
Every failure is a :class:`conf.schema.ConfigError` whose one-line message names the key."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from conf import CONF_DIR
from conf.schema import Config, ConfigError, data_schema, validate

__all__ = ["compose", "config_groups", "load_run_config", "merge"]


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


def merge(base: DictConfig, other, source: str, data_name: str | None = None) -> DictConfig:
    """``OmegaConf.merge`` whose failure is a one-line :class:`ConfigError` naming ``source`` and the
    key (for a key of the ``data`` section, also the data module ``data_name``)."""
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        msg = str(err).splitlines()[0]
        if data_name is not None and isinstance(err, ConfigKeyError) and key.startswith("data."):
            msg += f" (data module {data_name!r} has no such key)"
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{msg}") from None


_GLOBAL_PACKAGE = "# @package _global_"


def _is_global(path: Path) -> bool:
    """A group option file whose first line is ``# @package _global_`` (Hydra's convention) is a
    preset: its content is merged at the root, so e.g. ``conf/data/imdb.yaml`` can set the
    ``model``, ``optim`` and ``trainer`` sections of its benchmark as well as ``data``."""
    with open(path, encoding="utf-8") as f:
        return f.readline().strip() == _GLOBAL_PACKAGE


_VARIANT_GROUPS = ("method", "ablation")


def _rank(key: str, option: str, path: Path) -> int:
    """The order group selections merge in, stable within a rank (so two ``experiment=`` presets stack
    in command-line order): task presets (``experiment=``, ``data=`` presets) first, then the method and
    ablation presets, so that ``method=ltp`` keeps its fixed penalty (``optim.dual_lr: 0``) whether it
    is written before or after ``experiment=man_section``; then plain options, so an explicit
    ``model=...`` wins over the model a preset names."""
    if not _is_global(path):
        return 2
    return 1 if key in _VARIANT_GROUPS else 0


@dataclass
class _Layer:
    """One source merged over the config: its content (rooted at the top of the tree) and the section
    it starts afresh from the schema defaults (a group selection's own section), if any."""

    source: str
    content: DictConfig
    resets: str | None = None


def _load(path: Path, source: str) -> DictConfig:
    """The YAML file as a config; malformed YAML is a one-line :class:`ConfigError` with the line and
    column where the parser stopped (1-based, as editors count) and what it found there."""
    try:
        loaded = OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(p for p in (err.context, err.problem) if p)
        raise ConfigError(f"{source}{where}: malformed YAML: {what}") from None
    except (yaml.YAMLError, OmegaConfBaseException, OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source}: cannot be read: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{source}: expected a mapping of sections (model:, budget:, ...), got a YAML list")
    return loaded


def _layers(overrides: Sequence[str], config_file: str | Path | None) -> list[_Layer]:
    """conf/config.yaml, the group selections in :func:`_rank`'s order, ``--config FILE``, then the
    dot-list overrides."""
    layers = [_Layer("conf/config.yaml", _load(CONF_DIR / "config.yaml", "conf/config.yaml"))]
    groups = config_groups()
    dotlist, selections = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key in groups:
            if value not in groups[key]:
                raise ConfigError(f"{key}={value!r} is not a known {key} config; allowed: {', '.join(groups[key])}")
            selections.append((key, value, CONF_DIR / key / f"{value}.yaml"))
        else:
            dotlist.append(item)
    for key, option, path in sorted(selections, key=lambda sel: _rank(*sel)):
        source = str(path.relative_to(CONF_DIR.parent))
        content = _load(path, source)
        if not _is_global(path):
            content = OmegaConf.create({key: content})
        if key == "data" and "data" in content and "name" not in content.data:
            content.data.name = option  # `data=<name>` selects the module <name>
        layers.append(_Layer(source, content, key if key in content else None))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {str(path)!r}: no such file")
        layers.append(_Layer(str(path), _load(path, str(path))))
    try:
        layers.append(_Layer("override", OmegaConf.from_dotlist(dotlist)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    return layers


def _data_module(layers: list[_Layer]) -> tuple[Any, int]:
    """(the ``data.name`` the last layer that sets one sets, the index of the last layer that selects
    a module: a ``data=`` option, or a ``data.name`` other than the one before)."""
    name, start = None, 0
    for i, layer in enumerate(layers):
        selected = OmegaConf.select(layer.content, "data.name", default=None)
        if layer.resets == "data" or (selected is not None and name is not None and selected != name):
            start = i
        name = selected if selected is not None else name
    return name, start


def compose(overrides: Sequence[str] = (), config_file: str | Path | None = None) -> DictConfig:
    """The resolved, validated config (without the backbone-dependent check of gate layers), its
    choices as plain strings (see the module docstring)."""
    layers = _layers(overrides, config_file)
    name, restart = _data_module(layers)
    schema = data_schema(name)

    def fresh(section: str) -> DictConfig:
        if section == "data":
            return OmegaConf.merge(OmegaConf.structured(schema), {"name": name})
        return OmegaConf.structured(Config)[section]

    cfg = OmegaConf.structured(Config)
    cfg.data = fresh("data")
    for i, layer in enumerate(layers):
        content = layer.content
        if i < restart and "data" in content:  # a later module selection starts the section afresh
            content = OmegaConf.masked_copy(content, [k for k in content if k != "data"])
        if layer.resets is not None:
            cfg[layer.resets] = fresh(layer.resets)
        cfg = merge(cfg, content, layer.source, data_name=name)
    if not any(OmegaConf.select(layer.content, "data.seed", default=None) is not None for layer in layers[restart:]):
        cfg.data.seed = cfg.seed  # one `seed=N` seeds the data too, unless a source sets data.seed
    validate(cfg)
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(plain, True)
    return plain


def load_run_config(path: str | Path) -> DictConfig:
    """A trained run's saved ``config.yaml`` (beside its checkpoint), completed with the **schema
    defaults** for every key newer than the run (e.g. ``budget.lagrangian``, ``distill``): a new key's
    schema default is the behaviour from before it existed, which is what the run trained with. Not
    conf/config.yaml's values: those are the main job's, not the run's. Returned as :func:`compose`
    returns a config (plain strings, struct mode); not validated again (the run was, when it trained)."""
    path = Path(path)
    saved = _load(path, str(path))
    name = OmegaConf.select(saved, "data.name")
    if name is None:
        raise ConfigError(f"{path}: data.name is missing; expected the config.yaml that `retention train` writes")
    cfg = OmegaConf.structured(Config)
    cfg.data = OmegaConf.merge(OmegaConf.structured(data_schema(name)), {"name": name})
    cfg = merge(cfg, saved, str(path), data_name=name)
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(plain, True)
    return plain
