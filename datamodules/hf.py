"""Shared base for Hugging Face text DataModules: load → validate → split → tokenize (cached) → batch.

Loading: :mod:`datamodules.hf_load` (the public dataset by name, or local files in its schema).

Splits (deterministic from ``data.seed``). ``data.train_split``/``val_split``/``test_split`` name
them. A test split whose labels are all -1 (or that has no label column) is *unlabeled* — GLUE's
SST-2 test split, for example: it is not used; the validation split becomes the test split and a
validation split of ``data.val_fraction`` is carved from train. A missing validation split is carved
from train the same way; with neither validation nor test, both are carved from train. The plan is
printed (``data: train=… val=… test=…``).

Validation, before anything is tokenized: local files are checked before ``datasets`` reads them
(:mod:`conf.data_files`: missing, empty, not UTF-8, a line that does not parse), then every example
of every split used (missing column, empty text, label outside the label set, plus whatever a
subclass adds). With ``data.on_invalid=error`` (default) the first problem raises :class:`DataError`
naming the file or split, the line or example index (its row in that split as loaded), the column
and what was expected. With ``data.on_invalid=skip`` the bad examples (and unparsable lines of a
local file) are dropped and their count per split is printed, logged
(``logging``) and, when a trainer is attached, logged as ``data/skipped_<split>`` metrics.

Tokenization. The backbone's tokenizer (``AutoTokenizer`` from the model's name/path); for
``model.backbone=random`` the packaged MiniLM's tokenizer (the BERT uncased WordPiece vocabulary,
30 522 tokens), unless ``data.tokenizer`` names another. ``data.seq_len`` is the maximum length.
``data.truncation``: ``head`` keeps the first tokens, ``tail`` the last ones, ``sliding_window``
cuts a long text into windows of ``seq_len`` tokens overlapping by ``data.stride`` tokens; each
window is an example with the document's label and a ``doc_id`` column (classification metrics are
then per window). Batches are padded to their longest sequence (``DataCollatorWithPadding``).

Caching. Tokenized splits are written with ``Dataset.map(cache_file_name=…, new_fingerprint=KEY)``
under ``data.cache_dir`` (default: ``datasets``' cache, ``$HF_DATASETS_CACHE/retention``), where KEY
hashes everything that affects the result: the raw split's fingerprint (``datasets`` derives it from
the data files and their modification times), which rows were kept and how the split was carved, the
tokenizer (class, name and vocabulary), max length, truncation policy, stride, columns and label set.
A second run with the same inputs reads the cached file instead of tokenizing again.

Configuration: the fields of :class:`conf.data_schema.HFDataConfig` (a subclass's ``CONFIG`` adds its
own), as keyword arguments; ``datamodules.build_datamodule`` passes the ``data`` section.

Subclassing: set ``CONFIG``, ``task``, ``DEFAULT_PATH``, ``DEFAULT_SUBSET``, ``TEXT_COLUMN``, ``LABEL_COLUMN``
(and ``LABELS`` when the label set is fixed); override :meth:`required_columns`,
:meth:`example_problems`, :meth:`convert` (reshape validated raw rows, e.g. QA records → documents),
:meth:`encode_batch` (tokenization) and :meth:`cache_params` as needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import datasets
from datasets.fingerprint import Hasher
from transformers import DataCollatorWithPadding

from conf.data_schema import HFDataConfig

from .hf_load import DataError, carve, load_raw
from .loaders import ConfiguredDataModule
from .tokenizer import TokenizerMixin, resolve_tokenizer_name

__all__ = ["HFDataModule", "DataError"]

log = logging.getLogger(__name__)

UNLABELED = -1
_CACHE_VERSION = 1  # bump when the processing changes in a way the key does not see
_VALIDATE_BATCH = 1000
_DEFAULT_SPLITS = {"val": "validation", "test": "test"}


def _norm(value: Any) -> Any:
    """A raw label value as a dict key: integral floats (CSV columns with gaps) → int, NaN → None, and
    None for a value that cannot be a label (a JSON object or list: reported by validation)."""
    if isinstance(value, (dict, list)):
        return None
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer():
            return int(value)
    return value


class HFDataModule(TokenizerMixin, ConfiguredDataModule):
    """Base of the text DataModules that read a Hugging Face dataset (see the module docstring)."""

    CONFIG = HFDataConfig
    task = "classification"
    DEFAULT_PATH: str | None = None
    DEFAULT_SUBSET: str | None = None
    TEXT_COLUMN = "text"
    LABEL_COLUMN = "label"
    LABELS: tuple[str, ...] | None = None  # fixed label names (int labels index into them)

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        c = self.config
        self.tokenizer_name = c.tokenizer or resolve_tokenizer_name(None, "random")
        self.path = c.path or self.DEFAULT_PATH
        self.subset = c.subset if c.subset is not None else (None if c.path else self.DEFAULT_SUBSET)
        self.data_files = c.data_files
        self.text_column = c.text_column or self.TEXT_COLUMN
        self.label_column = c.label_column or self.LABEL_COLUMN
        self.configured_labels = tuple(str(v) for v in c.labels) if c.labels else None
        self.datasets: dict[str, Any] = {}
        self.skipped: dict[str, int] = {}
        self.unparsable: dict[str, int] = {}  # lines of local files dropped before loading (on_invalid=skip)
        self.split_plan: dict[str, str] = {}
        self._tokenizer = None
        self._label_names: tuple[str, ...] | None = None
        self._label_values: dict[Any, int] | None = None
        self._labels_fixed = False  # names given (config, dataset, ClassLabel): int labels index into them
        self._prepared = False
        self._logged = False

    # ------------------------------------------------------------------ tokenizer
    def tokenizer_kwargs(self) -> dict[str, Any]:
        return {"truncation_side": "left" if self.hparams.truncation == "tail" else "right"}

    # ------------------------------------------------------------------ labels
    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the label set, index = class id (fixed, configured, from the features, or from train)."""
        self.prepare()
        assert self._label_names is not None
        return self._label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def infer_labels(self, train) -> None:
        """Set the label set from ``data.labels``, the subclass's ``LABELS``, a ClassLabel feature, or the
        sorted distinct values of the train split (int labels then index into the names)."""
        feature = train.features.get(self.label_column)
        names = self.configured_labels or self.LABELS
        if names is None and getattr(feature, "names", None):
            names = tuple(feature.names)
        self._labels_fixed = names is not None
        if names is not None:
            self._label_names = tuple(names)
            self._label_values = {**{n: i for i, n in enumerate(names)}, **{i: i for i in range(len(names))}}
            return
        if self.label_column not in train.column_names:
            return  # reported by validation
        values = {_norm(v) for v in train[self.label_column]} - {None, UNLABELED, ""}
        ordered = sorted(values, key=lambda v: (isinstance(v, str), v))
        self._label_names = tuple(str(v) for v in ordered)
        self._label_values = {v: i for i, v in enumerate(ordered)}

    def label_id(self, value: Any) -> int | None:
        """Class id of a raw label value, or None when it is outside the label set."""
        assert self._label_values is not None
        return self._label_values.get(_norm(value))

    def label_expectation(self) -> str:
        names = list(self._label_names or ())
        if self._labels_fixed:
            return f"one of {names} (or its index 0..{len(names) - 1})"
        return f"one of the labels of the train split {names}"

    # ------------------------------------------------------------------ hooks for subclasses
    def required_columns(self) -> tuple[str, ...]:
        return (self.text_column, self.label_column)

    def is_labeled(self, ds) -> bool:
        """False for a split without labels (no label column, or every label -1), e.g. SST-2's test split."""
        if self.label_column not in ds.column_names:
            return False
        return any(_norm(v) not in (None, UNLABELED) for v in ds[self.label_column])

    def example_problems(self, batch: dict[str, list], start: int) -> Iterator[tuple[int, str, str]]:
        """(index, column, what was expected) for each bad example of a batch of raw rows starting at ``start``."""
        for j, text in enumerate(batch[self.text_column]):
            if not isinstance(text, str) or not text.strip():
                yield start + j, self.text_column, f"non-empty text, got {text!r}"
        for j, value in enumerate(batch[self.label_column]):
            if value is None or self.label_id(value) is None:
                yield start + j, self.label_column, f"a label {self.label_expectation()}, got {value!r}"

    def convert(self, ds, split: str):
        """Reshape validated raw rows into the examples :meth:`encode_batch` reads (default: unchanged).
        Runs before val/test are carved from train, so a carved split holds whole converted examples."""
        return ds

    def cache_params(self) -> dict[str, Any]:
        """Everything besides the rows that affects the tokenized result (part of the cache key)."""
        h = self.hparams
        return {
            "cls": type(self).__name__, "version": _CACHE_VERSION, "tokenizer": self._tokenizer_identity(),
            "seq_len": h.seq_len, "truncation": h.truncation, "stride": h.stride,
            "text": self.text_column, "label": self.label_column, "labels": self._label_names,
            "label_values": sorted(((str(k), type(k).__name__, v) for k, v in (self._label_values or {}).items())),
        }

    def tokenize(self, texts: list[str], offsets: bool = False) -> dict[str, list]:
        """Token ids and masks under the truncation policy; with ``sliding_window`` also
        ``overflow_to_sample_mapping`` (which input each window came from); with ``offsets`` the
        character span of every token (``offset_mapping``)."""
        h = self.hparams
        windows = h.truncation == "sliding_window"
        return self.tokenizer(
            texts, truncation=True, max_length=h.seq_len, return_token_type_ids=False,
            return_overflowing_tokens=windows, stride=h.stride if windows else 0, return_offsets_mapping=offsets,
        )

    def encode_batch(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        """Tokenize a batch of examples into model inputs (``input_ids``, ``attention_mask``, ``labels``)."""
        enc = self.tokenize(batch[self.text_column])
        labels = [self.label_id(v) for v in batch[self.label_column]]
        source = enc.pop("overflow_to_sample_mapping", None)
        if source is None:
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": [labels[i] for i in source], "doc_id": [indices[i] for i in source]}

    # ------------------------------------------------------------------ loading and splits
    def load_raw(self):
        """The raw ``DatasetDict`` through ``datasets.load_dataset`` (public name, or local files)."""
        raw, self.unparsable = load_raw(type(self).__name__, self.path, self.subset, self.data_files, self.hparams.cache_dir,
                                        self.hparams.on_invalid, self.cache_root() / "clean")
        return raw

    def _validate(self, split: str, ds) -> tuple[Any, list[int]]:
        """Check every example of one raw split; returns (the kept rows, the skipped indices)."""
        missing = [c for c in self.required_columns() if c not in ds.column_names]
        if missing:
            raise DataError(
                f"data split {split!r}: missing column(s) {missing}; the split has columns {ds.column_names} "
                f"(set data.text_column / data.label_column)"
            )
        bad: list[int] = []
        view = ds.select_columns(list(self.required_columns()))
        for start in range(0, len(view), _VALIDATE_BATCH):
            for index, column, expected in self.example_problems(view[start:start + _VALIDATE_BATCH], start):
                if self.hparams.on_invalid == "error":
                    raise DataError(
                        f"data split {split!r}, example {index}, column {column!r}: expected {expected} "
                        f"(data.on_invalid=skip drops such examples and reports the count)"
                    )
                bad.append(index)
        if not bad:
            return ds, []
        bad_set = set(bad)
        return ds.select([i for i in range(len(ds)) if i not in bad_set]), sorted(bad_set)

    def _carve(self, ds, ident: str, n: int, what: str):
        """Deterministic split of ``ds`` into (rest, ``n`` carved rows) with ``data.seed``."""
        return carve(ds, ident, n, what, self.hparams.seed)

    def plan_splits(self, raw) -> dict[str, tuple[Any, str, str]]:
        """role (train/val/test) → (validated raw rows, identity for the cache key, description)."""
        h = self.hparams
        if h.train_split not in raw:
            raise DataError(f"data.train_split={h.train_split!r} is not a split of the data; available: {list(raw)}")
        for role, name in (("val", h.val_split), ("test", h.test_split)):
            if name is not None and name != _DEFAULT_SPLITS[role] and name not in raw:
                raise DataError(f"data.{role}_split={name!r} is not a split of the data; available: {list(raw)}")
        val = h.val_split if h.val_split in raw else None
        test = h.test_split if h.test_split in raw else None
        unlabeled_test = test is not None and not self.is_labeled(raw[test])
        if unlabeled_test:
            test = None
        self.infer_labels(raw[h.train_split])

        checked: dict[str, tuple[Any, str]] = {}
        for name in dict.fromkeys(n for n in (h.train_split, val, test) if n):
            ds, skipped = self._validate(name, raw[name])
            self.skipped[name] = len(skipped) + self.unparsable.get(name, 0)
            checked[name] = (self.convert(ds, name), Hasher.hash([raw[name]._fingerprint, skipped]))

        train, train_id = checked[h.train_split]
        n_carve = round(h.val_fraction * len(train))  # of the whole train split, for val and for test alike
        plan: dict[str, tuple[Any, str, str]] = {}
        carved_note = f"carved from {h.train_split!r} with seed {h.seed}"
        if test is None and val is not None:
            plan["test"] = (*checked[val], f"{val!r}" + (f" (the {h.test_split!r} split is unlabeled)" if unlabeled_test else ""))
            val = None
        elif test is None:
            (train, train_id), (t, t_id) = self._carve(train, train_id, n_carve, "test")
            plan["test"] = (t, t_id, carved_note)
        else:
            plan["test"] = (*checked[test], repr(test))
        if val is None:
            (train, train_id), (v, v_id) = self._carve(train, train_id, n_carve, "val")
            plan["val"] = (v, v_id, carved_note)
        else:
            plan["val"] = (*checked[val], repr(val))
        plan["train"] = (train, train_id, repr(h.train_split))
        return plan

    # ------------------------------------------------------------------ tokenization with a cache
    def cache_root(self) -> Path:
        root = Path(self.hparams.cache_dir) if self.hparams.cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
        return root / "retention"

    def _tokenizer_identity(self) -> list:
        t = self.tokenizer
        return [type(t).__name__, t.name_or_path, len(t), Hasher.hash(sorted(t.get_vocab().items())), t.truncation_side]

    def _encode(self, ds, ident: str, role: str):
        key = Hasher.hash([ident, self.cache_params()])
        path = self.cache_root() / f"{type(self).__name__.lower()}-{role}-{key}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        return ds.map(
            self.encode_batch, batched=True, with_indices=True, remove_columns=ds.column_names,
            cache_file_name=str(path), new_fingerprint=key, load_from_cache_file=True,
            desc=f"tokenizing {role}",
        )

    # ------------------------------------------------------------------ Lightning hooks
    def prepare(self) -> None:
        """Load, validate, split and tokenize once (also triggered by ``num_labels``)."""
        if self._prepared:
            return
        raw = self.load_raw()
        plan = self.plan_splits(raw)
        for role in ("train", "val", "test"):
            ds, ident, note = plan[role]
            self.datasets[role] = self._encode(ds, ident, role)
            self.split_plan[role] = f"{len(self.datasets[role])} ({note})"
        self._prepared = True
        print("data: " + ", ".join(f"{r}={d}" for r, d in self.split_plan.items()), flush=True)
        if any(self.skipped.values()):
            counts = ", ".join(f"{s}: {n}" for s, n in self.skipped.items() if n)
            msg = f"data: skipped {sum(self.skipped.values())} invalid example(s) ({counts}) [data.on_invalid=skip]"
            log.warning(msg)
            print(msg, flush=True)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        trainer = getattr(self, "trainer", None)
        if not self._logged and trainer is not None and trainer.logger is not None and self.skipped:
            trainer.logger.log_metrics({f"data/skipped_{s}": float(n) for s, n in self.skipped.items()})
            self._logged = True

    @property
    def collate_fn(self):
        """Pads each batch to its longest sequence (``DataCollatorWithPadding``)."""
        return DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
