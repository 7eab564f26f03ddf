"""One typed config per data module: the ``data`` section of the config tree.

:data:`DATA_SCHEMAS` maps ``data.name`` to the dataclass of that module's keys; ``compose`` types the
``data`` section with the selected one, so a key the module does not have is a config error naming
the key and the module (``data.num_pairs`` with ``data=needle``). ``datamodules.DATAMODULES`` maps
the same names to the DataModules, each built from its config's fields (a test checks the two
registries agree). The defaults here are the modules' own; ``conf/data/<name>.yaml`` presets set the
benchmark's values on top.

    DataConfig                      name, seq_len, batch sizes, workers, seed: every module
    ├── SyntheticDataConfig         + split sizes (generated data)
    │   ├── TokenTaskConfig         + min_seq_len (variable lengths, own vocabulary)
    │   │   ├── NeedleDataConfig, ListOpsDataConfig
    │   │   └── KVRetrievalDataConfig → MQARDataConfig
    │   └── SyntheticQADataConfig   + facts, answer length, tokenizer
    └── HFDataConfig                + Hugging Face loading, splits, columns, truncation: SST-2, IMDb, CUAD, BYO
        ├── QADataConfig            QASPER: truncation head | sliding_window, + max_answer_tokens
        └── SummarizationDataConfig arXiv, PubMed: truncation head | tail, + target length, beams

No torch here: config errors answer before any heavy import.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

from conf.checks import Choice, ConfigError, at_least, within

__all__ = [
    "DATA_SCHEMAS", "DataConfig", "SyntheticDataConfig", "TokenTaskConfig", "NeedleDataConfig",
    "KVRetrievalDataConfig", "MQARDataConfig", "ListOpsDataConfig", "SyntheticQADataConfig", "HFDataConfig",
    "QADataConfig", "SummarizationDataConfig", "Truncation", "QATruncation", "SummaryTruncation", "OnInvalid",
]


class Truncation(Choice):
    """How a text longer than ``seq_len`` is cut: keep the first tokens, the last ones, or make one
    example per window of ``seq_len`` tokens overlapping by ``stride``."""

    head = "head"
    tail = "tail"
    sliding_window = "sliding_window"


class QATruncation(Choice):
    """Extractive QA keeps the question and cuts the context: the head, or sliding windows."""

    head = "head"
    sliding_window = "sliding_window"


class SummaryTruncation(Choice):
    """Summarization reads one source per target: its head or its tail (no windows)."""

    head = "head"
    tail = "tail"


class OnInvalid(Choice):
    """A bad example: stop with an error naming it, or skip it and report the count."""

    error = "error"
    skip = "skip"


@dataclass
class DataConfig:
    """Keys every data module reads. ``name`` selects the module (and with it the schema)."""

    name: str = MISSING
    seq_len: int = field(default=512, metadata=at_least(8))  # the (maximum) sequence length
    batch_size: int = field(default=32, metadata=at_least(1))
    eval_batch_size: int = field(default=64, metadata=at_least(1))
    num_workers: int = field(default=0, metadata=at_least(0))
    seed: int = 0  # data generation / split carving; compose sets it to the top-level seed unless given

    def __post_init__(self) -> None:
        """Built in Python (a DataModule's keyword fields), a choice given as its string becomes the
        Enum member (OmegaConf does this when it builds the config); an unknown one is an error."""
        for key, kind in typing.get_type_hints(type(self)).items():
            value = getattr(self, key)
            if isinstance(kind, type) and issubclass(kind, Enum) and not isinstance(value, kind):
                if value not in kind.__members__:
                    raise ConfigError(f"data.{key}={value!r} is not allowed for data module {self.name!r}; "
                                      f"allowed: one of {', '.join(kind.__members__)}")
                setattr(self, key, kind[value])


@dataclass
class SyntheticDataConfig(DataConfig):
    """Generated data: each split is drawn from its own seed stream."""

    train_size: int = field(default=4096, metadata=at_least(1))
    val_size: int = field(default=512, metadata=at_least(1))
    test_size: int = field(default=1024, metadata=at_least(1))


@dataclass
class TokenTaskConfig(SyntheticDataConfig):
    """Tasks over their own token vocabulary, with lengths drawn from [min_seq_len, seq_len]."""

    min_seq_len: int = field(default=0, metadata=at_least(0))  # 0: the task's default shortest length

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_seq_len > self.seq_len:
            raise ConfigError(f"data.min_seq_len={self.min_seq_len} is out of range; allowed: <= data.seq_len ({self.seq_len})")


@dataclass
class NeedleDataConfig(TokenTaskConfig):
    """``datamodules/needle.py``: the label is (Σ classes of the needle tokens) mod num_classes."""

    seq_len: int = field(default=512, metadata=at_least(8))
    vocab_size: int = 128
    num_classes: int = field(default=4, metadata=at_least(2))
    num_needles: int = field(default=1, metadata=at_least(1))
    tokens_per_class: int = field(default=4, metadata=at_least(1))
    # > 0: the cue variant: F needles (one per family), a cue token before [SEP] names the family whose
    # needle's class is the label (datamodules/needle.py)
    cue_families: int = field(default=0, metadata=at_least(0))


@dataclass
class KVRetrievalDataConfig(TokenTaskConfig):
    """``datamodules/recall.py``: key-value pairs among distractors, a query key before [SEP]."""

    seq_len: int = field(default=1024, metadata=at_least(8))
    vocab_size: int = 256
    num_keys: int = field(default=32, metadata=at_least(1))  # distinct key tokens
    num_classes: int = field(default=8, metadata=at_least(2))  # value tokens = classes
    num_pairs: int = field(default=4, metadata=at_least(1))  # key-value pairs hidden in each sequence


@dataclass
class MQARDataConfig(KVRetrievalDataConfig):
    """Multi-query associative recall: ``num_queries`` queries before [SEP], one prediction each."""

    num_pairs: int = field(default=8, metadata=at_least(1))
    num_queries: int = field(default=4, metadata=at_least(1))


@dataclass
class ListOpsDataConfig(TokenTaskConfig):
    """``datamodules/listops.py``: Long Range Arena ListOps (its vocabulary and 10 classes are fixed)."""

    seq_len: int = field(default=1024, metadata=at_least(8))
    max_depth: int = field(default=10, metadata=at_least(1))  # nesting depth (LRA: 10)
    max_args: int = field(default=10, metadata=at_least(2))  # arguments per operator (LRA: 10)


@dataclass
class SyntheticQADataConfig(SyntheticDataConfig):
    """``datamodules/synthetic_qa.py``: ``num_facts`` facts "<key> is <value> ." among distractor
    words; "what is <key> ?" asks one. Words are whole-word tokens of the tokenizer."""

    seq_len: int = field(default=1024, metadata=at_least(8))
    num_facts: int = field(default=4, metadata=at_least(1))
    max_answer_tokens: int = field(default=30, metadata=at_least(1))  # longest predicted answer span
    tokenizer: Optional[str] = None  # None: the backbone's; for backbone=random the packaged MiniLM's


@dataclass
class HFDataConfig(DataConfig):
    """Hugging Face datasets (``datamodules/hf.py``). None: the data module's own default (its public
    dataset name, its column names, the backbone's tokenizer). seq_len is the maximum length."""

    path: Optional[str] = None  # load_dataset(path, subset); e.g. glue
    subset: Optional[str] = None  # the dataset's config name; e.g. sst2
    data_files: Any = None  # local CSV/JSON/JSONL/Parquet: a file, a list, or {split: file(s)}
    cache_dir: Optional[str] = None  # None: $HF_DATASETS_CACHE (tokenized splits under <dir>/retention)
    train_split: str = "train"
    val_split: Optional[str] = "validation"  # missing: carved from train (val_fraction, seed)
    test_split: Optional[str] = "test"  # missing or unlabeled: validation becomes test
    text_column: Optional[str] = None
    label_column: Optional[str] = None
    labels: Optional[list[str]] = None  # the label set; None: fixed by the dataset, else from train
    tokenizer: Optional[str] = None  # None: the backbone's; for backbone=random the packaged MiniLM's
    truncation: Truncation = Truncation.head
    stride: int = field(default=128, metadata=at_least(0))  # sliding_window: tokens shared by consecutive windows
    val_fraction: float = field(default=0.1, metadata=within(0.0, 1.0, lo_open=True, hi_open=True))
    on_invalid: OnInvalid = OnInvalid.error

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name == "byo" and self.data_files is None and not self.path:
            raise ConfigError("data.data_files is not set: data=byo needs it: a CSV/JSON/JSONL/Parquet file, or "
                              "'{train: FILE, validation: FILE, test: FILE}'")
        if self.truncation == "sliding_window" and not self.stride < self.seq_len // 2:
            raise ConfigError(f"data.stride={self.stride} is out of range; allowed: < data.seq_len // 2 "
                              f"({self.seq_len // 2}) with sliding_window")


@dataclass
class QADataConfig(HFDataConfig):
    """Extractive QA over long documents (``datamodules/qasper.py``)."""

    truncation: QATruncation = QATruncation.head
    max_answer_tokens: int = field(default=30, metadata=at_least(1))  # longest predicted answer span, in tokens


@dataclass
class SummarizationDataConfig(HFDataConfig):
    """Long-document summarization (``datamodules/summarization.py``)."""

    truncation: SummaryTruncation = SummaryTruncation.head
    target_len: int = field(default=256, metadata=at_least(1))  # target summary tokens (also the generation length)
    num_beams: int = field(default=1, metadata=at_least(1))  # beam search width (1: greedy)


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "needle": NeedleDataConfig,
    "kv_retrieval": KVRetrievalDataConfig,
    "mqar": MQARDataConfig,
    "listops": ListOpsDataConfig,
    "synthetic_qa": SyntheticQADataConfig,
    "sst2": HFDataConfig,
    "imdb": HFDataConfig,
    "cuad": HFDataConfig,
    "byo": HFDataConfig,
    "qasper": QADataConfig,
    "arxiv": SummarizationDataConfig,
    "pubmed": SummarizationDataConfig,
}
