"""Lightning DataModules for the Adaptive Retention benchmarks."""

from __future__ import annotations

import inspect

from .cuad import CUADDataModule
from .hf import DataError, HFDataModule
from .needle import NeedleDataModule, NeedleSpec, generate_needle
from .synthetic import KVRetrievalDataModule, ListOpsDataModule, MQARDataModule, SyntheticQADataModule
from .text_classification import BYODataModule, IMDbDataModule, SST2DataModule
from .qasper import QasperDataModule
from .summarization import ArxivDataModule, PubMedDataModule

DATAMODULES = {
    "needle": NeedleDataModule,
    "kv_retrieval": KVRetrievalDataModule,
    "mqar": MQARDataModule,
    "listops": ListOpsDataModule,
    "synthetic_qa": SyntheticQADataModule,
    "sst2": SST2DataModule,
    "imdb": IMDbDataModule,
    "cuad": CUADDataModule,
    "byo": BYODataModule,
}
DATAMODULES["qasper"] = QasperDataModule
DATAMODULES["arxiv"] = ArxivDataModule
DATAMODULES["pubmed"] = PubMedDataModule


def _accepted(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def check_data_config(cfg) -> None:
    """A ``data.*`` value that the selected data module does not read is an error (before any work),
    unless it is still the schema default: nothing set by the user is ignored silently."""
    from omegaconf import OmegaConf

    from conf.schema import ConfigError, DataConfig

    cls = DATAMODULES[cfg.data.name]
    accepted = _accepted(cls) | {"name"}
    defaults = OmegaConf.to_container(OmegaConf.structured(DataConfig))
    for key, value in OmegaConf.to_container(cfg.data, resolve=True).items():
        if key not in accepted and value != defaults[key]:
            raise ConfigError(
                f"data.{key}={value!r} is not used by data module {cfg.data.name!r} "
                f"(select the module with data={cfg.data.name} so the other keys reset, or remove the override)"
            )


def build_datamodule(cfg):
    """The DataModule ``DATAMODULES[data.name]``: its ``from_config(cfg)`` when it has one (HF modules
    also read ``model.backbone`` for the tokenizer), else the ``data`` fields it accepts."""
    from omegaconf import OmegaConf

    cls = DATAMODULES[cfg.data.name]
    if hasattr(cls, "from_config"):
        return cls.from_config(cfg)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return cls(**{k: v for k, v in data.items() if k in _accepted(cls)})


__all__ = [
    "DATAMODULES", "DataError", "HFDataModule", "NeedleDataModule", "NeedleSpec", "generate_needle",
    "SST2DataModule", "IMDbDataModule", "CUADDataModule", "BYODataModule", "build_datamodule", "check_data_config",
    "QasperDataModule", "ArxivDataModule", "PubMedDataModule", "KVRetrievalDataModule", "MQARDataModule", "ListOpsDataModule", "SyntheticQADataModule",
]
