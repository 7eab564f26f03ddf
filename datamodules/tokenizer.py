"""The tokenizer of a text DataModule (Hugging Face datasets, synthetic QA): which one, loaded once,
and what the systems read from it."""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer

from retention.backbones import MINILM, RANDOM_INIT, resolve_backbone_path

__all__ = ["TokenizerMixin", "resolve_tokenizer_name"]


def resolve_tokenizer_name(tokenizer: str | None, backbone: str) -> str:
    """The tokenizer to load: ``data.tokenizer`` if set, else the backbone's own; a randomly
    initialised backbone has none, so it borrows the packaged MiniLM's (BERT uncased WordPiece).
    Short names (``minilm``) resolve like backbones do."""
    name = tokenizer or (MINILM if backbone == RANDOM_INIT else backbone)
    return resolve_backbone_path(name)


class TokenizerMixin:
    """The tokenizer ``self.tokenizer_name`` (loaded on first use, with :meth:`tokenizer_kwargs`) and
    what the systems read from it: vocabulary size, protected special tokens, padding id."""

    _tokenizer = None

    def tokenizer_kwargs(self) -> dict[str, Any]:
        return {}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name, **self.tokenizer_kwargs())
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """Protected tokens: [CLS]/[SEP] (BERT) or <s>/</s> (RoBERTa) of the tokenizer."""
        t = self.tokenizer
        ids = {t.cls_token_id, t.sep_token_id, t.bos_token_id, t.eos_token_id} - {None}
        return tuple(sorted(ids))

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id
