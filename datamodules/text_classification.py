"""Single-label text classification: SST-2 (GLUE), IMDb, and bring-your-own CSV/JSONL data.

All three are :class:`~datamodules.hf.HFDataModule` with different defaults; loading, validation,
splits, tokenization and caching live there.
"""

from __future__ import annotations

from .hf import DataError, HFDataModule

__all__ = ["SST2DataModule", "IMDbDataModule", "BYODataModule"]


class SST2DataModule(HFDataModule):
    """GLUE SST-2 (``load_dataset("nyu-mll/glue", "sst2")``; ``glue`` is the legacy alias of the same
    dataset). Columns ``sentence`` (str), ``label`` (0 negative, 1 positive), ``idx``; splits train
    (67 349), validation (872), test (1 821, unlabeled: label -1). The test split being unlabeled,
    validation serves as test and the validation split is carved from train (``data.val_fraction``)."""

    DEFAULT_PATH = "nyu-mll/glue"
    DEFAULT_SUBSET = "sst2"
    TEXT_COLUMN = "sentence"
    LABELS = ("negative", "positive")


class IMDbDataModule(HFDataModule):
    """IMDb movie reviews (``load_dataset("stanfordnlp/imdb")``, alias ``imdb``). Columns ``text``,
    ``label`` (0 neg, 1 pos); splits train (25 000), test (25 000), unsupervised (50 000, label -1,
    never used). There is no validation split: it is carved from train."""

    DEFAULT_PATH = "stanfordnlp/imdb"
    TEXT_COLUMN = "text"
    LABELS = ("neg", "pos")


class BYODataModule(HFDataModule):
    """Bring your own data: local CSV / JSON / JSONL / Parquet files (``data.data_files``) with a text
    column and a label column named by ``data.text_column`` / ``data.label_column`` (default ``text``
    and ``label``). Labels may be strings or integers; the label set is ``data.labels`` if given,
    else the sorted distinct labels of the train split (a label in val/test outside it is an error).
    Missing validation/test splits are carved from train."""

    def load_raw(self):
        if self.data_files is None and not self.path:
            raise DataError("data=byo needs data.data_files: a CSV/JSONL file, or {train: FILE, validation: FILE, test: FILE}")
        return super().load_raw()
