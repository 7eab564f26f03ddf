"""Lightning DataModules for the Adaptive Retention benchmarks, by ``data.name``.

Each is built from the fields of its typed config (:data:`conf.data_schema.DATA_SCHEMAS`, the same
names; the module's ``CONFIG``), which ``conf.compose`` has already checked the ``data`` section
against."""

from __future__ import annotations

from omegaconf import OmegaConf

from conf.compose import merge
from conf.schema import ConfigError, data_schema

from .cuad import CUADDataModule
from .hf import DataError, HFDataModule
from .listops import ListOpsDataModule
from .needle import NeedleDataModule, NeedleSpec, generate_needle
from .qasper import QasperDataModule
from .recall import KVRetrievalDataModule, MQARDataModule
from .summarization import ArxivDataModule, PubMedDataModule
from .synthetic_qa import SyntheticQADataModule
from .text_classification import BYODataModule, IMDbDataModule, SST2DataModule
from .tokenizer import resolve_tokenizer_name

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
    "qasper": QasperDataModule,
    "arxiv": ArxivDataModule,
    "pubmed": PubMedDataModule,
}


def build_datamodule(cfg):
    """The DataModule ``DATAMODULES[data.name]`` from the ``data`` section (composed, or a saved
    ``config.yaml`` as ``retention evaluate`` loads it: typed by the module's schema here either way).
    A ``data.tokenizer`` field left null becomes the tokenizer of ``model.backbone``."""
    name = cfg.data.name
    if name not in DATAMODULES:
        raise ConfigError(f"data.name={name!r} is not a known data module; allowed: {', '.join(DATAMODULES)}")
    typed = merge(OmegaConf.structured(data_schema(name)), cfg.data, "data", data_name=name)
    data = OmegaConf.to_container(typed, resolve=True, enum_to_str=True)
    if "tokenizer" in data:
        data["tokenizer"] = resolve_tokenizer_name(data["tokenizer"], cfg.model.backbone)
    return DATAMODULES[name](**data)


__all__ = [
    "DATAMODULES", "DataError", "HFDataModule", "NeedleDataModule", "NeedleSpec", "generate_needle",
    "SST2DataModule", "IMDbDataModule", "CUADDataModule", "BYODataModule", "build_datamodule",
    "QasperDataModule", "ArxivDataModule", "PubMedDataModule", "KVRetrievalDataModule", "MQARDataModule",
    "ListOpsDataModule", "SyntheticQADataModule",
]
