"""Long-document summarization: arXiv and PubMed (``ccdv/arxiv-summarization``,
``ccdv/pubmed-summarization``; columns ``article`` and ``abstract``; splits train / validation / test)
on the shared :class:`~datamodules.hf.HFDataModule`.

The source (``data.text_column``, default ``article``) is cut to ``data.seq_len`` tokens
(``data.truncation`` head or tail); the target (``data.label_column``, default ``abstract``) to
``data.target_len`` tokens, which is also the generation length. An empty article or an empty target
summary is an error naming the split and the example index (or, with ``data.on_invalid=skip``, skipped
and counted). Batches: ``input_ids``, ``attention_mask``, ``labels`` (−100 at padding), padded by
``transformers.DataCollatorForSeq2Seq``.
"""

from __future__ import annotations

from typing import Any, Iterator

from transformers import DataCollatorForSeq2Seq

from conf.data_schema import SummarizationDataConfig

from .hf import HFDataModule

__all__ = ["SummarizationDataModule", "ArxivDataModule", "PubMedDataModule"]


class SummarizationDataModule(HFDataModule):
    CONFIG = SummarizationDataConfig  # truncation: head | tail (one source per target, no windows)
    task = "summarization"
    TEXT_COLUMN = "article"
    LABEL_COLUMN = "abstract"

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.target_len = self.config.target_len
        self.num_beams = self.config.num_beams

    def infer_labels(self, train) -> None:
        """Summaries have no label set."""

    def is_labeled(self, ds) -> bool:
        return self.label_column in ds.column_names and any(isinstance(t, str) and t.strip() for t in ds[self.label_column])

    def example_problems(self, batch: dict[str, list], start: int) -> Iterator[tuple[int, str, str]]:
        for column, what in ((self.text_column, "a non-empty article"), (self.label_column, "a non-empty target summary")):
            for j, text in enumerate(batch[column]):
                if not isinstance(text, str) or not text.strip():
                    yield start + j, column, f"{what}, got {text!r}"

    def cache_params(self) -> dict[str, Any]:
        return {**super().cache_params(), "target_len": self.target_len}

    def encode_batch(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        enc = self.tokenize(batch[self.text_column])
        target = self.tokenizer(text_target=batch[self.label_column], truncation=True, max_length=self.target_len)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": target["input_ids"]}

    @property
    def seq2seq_special_ids(self) -> dict[str, int]:
        """pad / bos / eos / decoder-start ids for a random-init encoder–decoder paired with this tokenizer
        (a pretrained model keeps its own config)."""
        t = self.tokenizer
        bos = t.bos_token_id if t.bos_token_id is not None else t.cls_token_id
        eos = t.eos_token_id if t.eos_token_id is not None else t.sep_token_id
        ids = {"pad": t.pad_token_id, "bos": bos, "eos": eos, "decoder_start": bos if bos is not None else t.pad_token_id}
        return {k: v for k, v in ids.items() if v is not None}

    @property
    def generation(self) -> dict[str, int]:
        return {"max_new_tokens": self.target_len, "num_beams": self.num_beams}

    @property
    def collate_fn(self):
        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100, return_tensors="pt")


class ArxivDataModule(SummarizationDataModule):
    """arXiv papers (``ccdv/arxiv-summarization``): ``article`` (body text) → ``abstract``."""

    DEFAULT_PATH = "ccdv/arxiv-summarization"


class PubMedDataModule(SummarizationDataModule):
    """PubMed papers (``ccdv/pubmed-summarization``): ``article`` (body text) → ``abstract``."""

    DEFAULT_PATH = "ccdv/pubmed-summarization"
