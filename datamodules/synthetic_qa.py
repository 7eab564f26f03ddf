"""Synthetic extractive QA over long distractor text, through the same QA windows and span head as
QASPER. Words are whole-word tokens of the tokenizer, so the generator also depends on its vocabulary."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

from conf.data_schema import SyntheticQADataConfig

from .loaders import ConfiguredDataModule
from .qa_windows import collate_qa, tokenize_qa
from .synthetic import spec_from, split_seed
from .tokenizer import TokenizerMixin, resolve_tokenizer_name

__all__ = ["SynthQASpec", "generate_synthetic_qa", "SyntheticQADataModule"]


# ---------------------------------------------------------------------------- extractive QA
@dataclass(frozen=True)
class SynthQASpec:
    """Extractive QA over long distractor text: ``num_facts`` facts "<key> is <value words> ." hidden
    among distractor words; the question "what is <key> ?" asks one of them; the answer is that
    fact's value span (1..``max_answer_words`` words). Words are whole-word tokens of the tokenizer's
    vocabulary (keys, values and distractors from disjoint sets), so each word is one token and the
    context is about ``seq_len`` tokens long."""

    seq_len: int = 1024
    num_facts: int = 4
    max_answer_words: int = 3

    def __post_init__(self) -> None:
        if self.num_facts < 1 or self.max_answer_words < 1:
            raise ValueError(f"synthetic QA needs num_facts >= 1 and max_answer_words >= 1 (got {self.num_facts}, {self.max_answer_words})")
        if self.num_facts * (self.max_answer_words + 3) + 16 > self.seq_len:
            raise ValueError(f"{self.num_facts} facts do not fit in data.seq_len={self.seq_len}")


def _word_pool(tokenizer) -> list[str]:
    """Alphabetic whole-word tokens (≥ 3 letters) of the vocabulary, in a fixed order."""
    return sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3 and w.islower()
                  and w not in ("what", "is"))


def generate_synthetic_qa(spec: SynthQASpec, words: list[str], size: int, seed: int) -> list[dict]:
    """``size`` examples ``{"id", "question", "context", "answers", "answer_start", "answer_text"}``
    (the QA windows' input format), determined by ``seed`` and the word pool."""
    if len(words) < 300:
        raise ValueError(f"the tokenizer has only {len(words)} whole-word tokens; synthetic QA needs >= 300")
    rng = random.Random(seed)
    keys, values, distractors = words[0::3][:100], words[1::3][:100], words[2::3]
    body = spec.seq_len - 12  # room for [CLS] question [SEP] … [SEP]
    out = []
    for i in range(size):
        facts = []
        for key in rng.sample(keys, spec.num_facts):
            value = " ".join(rng.choices(values, k=rng.randint(1, spec.max_answer_words)))
            facts.append((key, value))
        n_words = body - sum(len(v.split()) + 3 for _, v in facts)
        filler = rng.choices(distractors, k=n_words)
        slots = sorted(rng.sample(range(n_words + 1), spec.num_facts))
        asked = rng.randrange(spec.num_facts)
        parts, pos, answer_start = [], 0, -1
        for k, (slot, (key, value)) in enumerate(zip(slots, facts)):
            parts.extend(filler[pos:slot])
            pos = slot
            prefix = " ".join(parts + [key, "is"]) + " "
            if k == asked:
                answer_start = len(prefix)
            parts.extend([key, "is", *value.split(), "."])
        parts.extend(filler[pos:])
        context = " ".join(parts)
        key, value = facts[asked]
        out.append({"id": f"synth-{seed}-{i}", "question": f"what is {key} ?", "context": context,
                    "answers": [value], "answer_start": answer_start, "answer_text": value})
    return out


class SyntheticQADataModule(TokenizerMixin, ConfiguredDataModule):
    """:class:`SynthQASpec` examples through the same QA windows and span head as QASPER
    (``task = "qa"``): the question is protected, the answer must survive the gates."""

    CONFIG = SyntheticQADataConfig
    task = "qa"

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.spec = spec_from(SynthQASpec, self.config)
        self.max_answer_tokens = self.config.max_answer_tokens
        self.sizes = {"train": self.config.train_size, "val": self.config.val_size, "test": self.config.test_size}
        self.datasets: dict[str, list[dict]] = {}
        self._examples: dict[str, dict[int, dict]] = {}
        self.tokenizer_name = self.config.tokenizer or resolve_tokenizer_name(None, "random")

    def setup(self, stage: str | None = None) -> None:
        words = _word_pool(self.tokenizer)
        for split, size in self.sizes.items():
            if split in self.datasets:
                continue
            examples = generate_synthetic_qa(self.spec, words, size, split_seed(self.hparams.seed, split))
            self._examples[split] = {i: e for i, e in enumerate(examples)}
            self.datasets[split] = tokenize_qa(examples, self.tokenizer, self.hparams.seq_len + 16)

    def eval_examples(self, stage: str) -> dict[int, dict]:
        return self._examples[stage]

    @property
    def collate_fn(self):
        return functools.partial(collate_qa, pad_token_id=self.pad_token_id)
