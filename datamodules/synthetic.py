"""The synthetic long-context suite: tasks where only a few tokens decide the label, so a gate
that keeps them provably wins and one that drops them provably loses (ListOps is the exception
that needs most of its tokens — the hard case).

Every generator is a pure function of (spec, size, seed) (synthetic QA also of the tokenizer's word list), vectorised in torch where the task
allows (key-value retrieval, associative recall) and a seeded :class:`random.Random` where it is
recursive (ListOps). Splits use disjoint seed streams (:func:`split_seed`).

Shared vocabulary layout: 0 [PAD], 1 [CLS], 2 [SEP]; task tokens from 3 on; then distractors.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass

import lightning as L
import torch
from torch.utils.data import TensorDataset

from .hf import TokenizerMixin, resolve_tokenizer_name
from .loaders import SplitLoaders

__all__ = [
    "PAD_ID", "CLS_ID", "SEP_ID", "SyntheticDataModule", "DictDataset",
    "KVSpec", "generate_kv_retrieval", "KVRetrievalDataModule",
    "ListOpsSpec", "generate_listops", "listops_value", "ListOpsDataModule", "LISTOPS_TOKENS",
    "MQARSpec", "generate_mqar", "MQARDataModule", "split_seed",
    "SynthQASpec", "generate_synthetic_qa", "SyntheticQADataModule",
]

PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
FIRST_TASK_TOKEN = 3
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


def split_seed(seed: int, split: str) -> int:
    """The generator seed of ``split`` for data seed ``seed``: disjoint streams for train, val and test."""
    return seed * 1000 + _SPLIT_OFFSET[split]


class DictDataset(TensorDataset):
    """A TensorDataset whose items are dicts keyed by field name."""

    def __init__(self, data: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
        super().__init__(*(data[k] for k in keys))
        self.keys = keys

    def __getitem__(self, index):
        return dict(zip(self.keys, super().__getitem__(index)))


class SyntheticDataModule(SplitLoaders, L.LightningDataModule):
    """Train / val / test splits generated from ``seed`` with a distinct stream per split.

    Subclasses set ``spec`` (a frozen dataclass), ``keys`` (the batch fields) and implement
    :meth:`generate`; ``num_labels`` and ``vocab_size`` come from the spec.
    """

    task = "classification"
    special_token_ids = (CLS_ID, SEP_ID)
    pad_token_id = PAD_ID
    keys: tuple[str, ...] = ("input_ids", "attention_mask", "labels")

    def __init__(self, spec, train_size: int, val_size: int, test_size: int, batch_size: int,
                 eval_batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.save_hyperparameters({**asdict(spec), "train_size": train_size, "val_size": val_size, "test_size": test_size,
                                   "batch_size": batch_size, "eval_batch_size": eval_batch_size,
                                   "num_workers": num_workers, "seed": seed})
        self.spec = spec
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.datasets: dict[str, DictDataset] = {}

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_labels(self) -> int:
        return self.spec.num_classes

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    def setup(self, stage: str | None = None) -> None:
        for split, size in self.sizes.items():
            if split not in self.datasets:
                self.datasets[split] = DictDataset(self.generate(size, split_seed(self.hparams.seed, split)), self.keys)


def _lengths_and_mask(size: int, seq_len: int, min_seq_len: int, g: torch.Generator):
    lo = min_seq_len or seq_len
    lengths = torch.randint(lo, seq_len + 1, (size,), generator=g)
    pos = torch.arange(seq_len).expand(size, seq_len)
    return lengths, pos, (pos < lengths.unsqueeze(1)).long()


def _frame(ids: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[CLS] … [SEP] then padding."""
    ids[:, 0] = CLS_ID
    ids.scatter_(1, (lengths - 1).unsqueeze(1), SEP_ID)
    return ids.masked_fill(mask == 0, PAD_ID)


def _random_slots(size: int, num_slots: torch.Tensor, k: int, total: int, g: torch.Generator) -> torch.Tensor:
    """``k`` distinct slot indices per row, uniform in ``[0, num_slots[row])`` (vectorised)."""
    keys = torch.rand(size, total, generator=g).masked_fill(torch.arange(total) >= num_slots.unsqueeze(1), 2.0)
    return keys.argsort(dim=1)[:, :k]


# ---------------------------------------------------------------------------- key-value retrieval
@dataclass(frozen=True)
class KVSpec:
    """``[CLS] … k₁ v₁ … k_P v_P … q [SEP]``: P key-value pairs (adjacent, at random positions among
    distractors), then the query key q (one of the P keys) just before [SEP]. Label = the class of
    the value paired with q. Keys are tokens 3..3+num_keys−1, values the next num_classes tokens."""

    seq_len: int = 1024
    min_seq_len: int = 0
    vocab_size: int = 256
    num_keys: int = 32
    num_classes: int = 8
    num_pairs: int = 4

    @property
    def first_value(self) -> int:
        return FIRST_TASK_TOKEN + self.num_keys

    @property
    def first_distractor(self) -> int:
        return self.first_value + self.num_classes

    def __post_init__(self) -> None:
        if self.first_distractor >= self.vocab_size:
            raise ValueError(f"data.vocab_size={self.vocab_size} is too small: needs > {self.first_distractor} "
                             "(3 special + num_keys + num_classes + at least one distractor)")
        if self.num_pairs > self.num_keys:
            raise ValueError(f"data.num_pairs={self.num_pairs} exceeds data.num_keys={self.num_keys} (keys are distinct)")
        shortest = self.min_seq_len or self.seq_len
        if 2 * self.num_pairs + 3 > shortest:
            raise ValueError(f"{self.num_pairs} pairs + query + [CLS]/[SEP] do not fit in length {shortest}")


def generate_kv_retrieval(spec: KVSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` examples determined by ``seed``; also returns ``pair_positions`` (B, P) (position of
    each key; its value follows), ``query_position`` (B,) and ``query_pair`` (B,)."""
    g = torch.Generator().manual_seed(seed)
    lengths, pos, mask = _lengths_and_mask(size, spec.seq_len, spec.min_seq_len, g)
    ids = torch.randint(spec.first_distractor, spec.vocab_size, (size, spec.seq_len), generator=g)
    # Pair slots: positions 1 + 2s, s < (len − 3) // 2, so pairs never touch the query or [SEP].
    slots = _random_slots(size, (lengths - 3) // 2, spec.num_pairs, spec.seq_len // 2, g)
    key_pos = 1 + 2 * slots
    keys = torch.rand(size, spec.num_keys, generator=g).argsort(1)[:, : spec.num_pairs]  # distinct keys
    values = torch.randint(0, spec.num_classes, (size, spec.num_pairs), generator=g)
    ids.scatter_(1, key_pos, FIRST_TASK_TOKEN + keys)
    ids.scatter_(1, key_pos + 1, spec.first_value + values)
    which = torch.randint(0, spec.num_pairs, (size,), generator=g)
    query_pos = lengths - 2
    ids.scatter_(1, query_pos.unsqueeze(1), FIRST_TASK_TOKEN + keys.gather(1, which.unsqueeze(1)))
    ids = _frame(ids, lengths, mask)
    return {"input_ids": ids, "attention_mask": mask, "labels": values.gather(1, which.unsqueeze(1)).squeeze(1),
            "pair_positions": key_pos, "query_position": query_pos, "query_pair": which}


class KVRetrievalDataModule(SyntheticDataModule):
    def __init__(self, seq_len: int = 1024, min_seq_len: int = 0, vocab_size: int = 256, num_keys: int = 32,
                 num_classes: int = 8, num_pairs: int = 4, train_size: int = 4096, val_size: int = 512,
                 test_size: int = 1024, batch_size: int = 32, eval_batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0) -> None:
        spec = KVSpec(seq_len, min_seq_len, vocab_size, num_keys, num_classes, num_pairs)
        super().__init__(spec, train_size, val_size, test_size, batch_size, eval_batch_size, num_workers, seed)

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_kv_retrieval(self.spec, size, seed)


# ---------------------------------------------------------------------------- ListOps
# The Long Range Arena grammar (Tay et al. 2021; Nangia & Bowman 2018): operators MIN, MAX, MED
# (median, rounded down), SM (sum mod 10) over digits 0–9, written "[MAX 2 9 [MIN 4 7 ] 0 ]".
LISTOPS_TOKENS = ["[MIN", "[MAX", "[MED", "[SM", "]"] + [str(d) for d in range(10)]
_LISTOPS_ID = {tok: FIRST_TASK_TOKEN + i for i, tok in enumerate(LISTOPS_TOKENS)}
_VALUE_P = 0.25  # LRA: at depth < max_depth an operator node with probability 0.25


@dataclass(frozen=True)
class ListOpsSpec:
    """Expressions whose token count (with [CLS]/[SEP]) lies in [min_seq_len, seq_len]
    (min_seq_len 0: seq_len // 2), nesting ≤ max_depth, 2..max_args arguments per operator."""

    seq_len: int = 1024
    min_seq_len: int = 0
    max_depth: int = 10
    max_args: int = 10
    max_tries: int = 10_000

    num_classes: int = 10
    vocab_size: int = FIRST_TASK_TOKEN + len(LISTOPS_TOKENS)

    @property
    def min_len(self) -> int:
        return self.min_seq_len or self.seq_len // 2

    def __post_init__(self) -> None:
        if self.min_len > self.seq_len or self.min_len < 3:
            raise ValueError(f"data.min_seq_len={self.min_seq_len}: need 3 <= min length <= seq_len ({self.seq_len})")
        if self.max_depth < 1 or self.max_args < 2:
            raise ValueError(f"ListOps needs max_depth >= 1 and max_args >= 2 (got {self.max_depth}, {self.max_args})")


def _listops_tree(rng: random.Random, depth: int, spec: ListOpsSpec, budget: int) -> tuple[list[str], int]:
    """LRA's ``generate_tree``: tokens of a random expression and its length; abandons (returns a
    length > budget) as soon as the expression cannot fit."""
    if depth >= spec.max_depth or rng.random() > _VALUE_P:
        return [str(rng.randrange(10))], 1
    op = rng.choice(LISTOPS_TOKENS[:4])
    tokens, length = [op], 2
    for _ in range(rng.randint(2, spec.max_args)):
        sub, n = _listops_tree(rng, depth + 1, spec, budget - length)
        tokens += sub
        length += n
        if length > budget:
            return tokens, length
    tokens.append("]")
    return tokens, length


def listops_value(tokens: list[str]) -> int:
    """Evaluate an expression (the label), with an explicit stack."""
    stack: list[list] = [[]]
    for tok in tokens:
        if tok.startswith("["):
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            if op == "[MIN":
                v = min(args)
            elif op == "[MAX":
                v = max(args)
            elif op == "[MED":
                v = int(statistics.median(args))
            else:
                v = sum(args) % 10
            stack[-1].append(v)
        else:
            stack[-1].append(int(tok))
    (value,) = stack[0]
    return value


def generate_listops(spec: ListOpsSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` expressions by rejection on length, as LRA does; raises if ``max_tries`` trees in a
    row miss the length window (then widen it or lower max_depth)."""
    rng = random.Random(seed)
    ids = torch.full((size, spec.seq_len), PAD_ID, dtype=torch.long)
    labels = torch.empty(size, dtype=torch.long)
    body_max = spec.seq_len - 2
    for i in range(size):
        for _ in range(spec.max_tries):
            tokens, n = _listops_tree(rng, 1, spec, body_max)
            if spec.min_len - 2 <= n <= body_max:
                break
        else:
            raise ValueError(f"ListOps: no expression of length {spec.min_len}..{spec.seq_len} in {spec.max_tries} tries "
                             f"(max_depth={spec.max_depth}, max_args={spec.max_args}); widen the window")
        row = [CLS_ID, *(_LISTOPS_ID[t] for t in tokens), SEP_ID]
        ids[i, : len(row)] = torch.tensor(row)
        labels[i] = listops_value(tokens)
    return {"input_ids": ids, "attention_mask": (ids != PAD_ID).long(), "labels": labels}


class ListOpsDataModule(SyntheticDataModule):
    def __init__(self, seq_len: int = 1024, min_seq_len: int = 0, max_depth: int = 10, max_args: int = 10,
                 train_size: int = 4096, val_size: int = 512, test_size: int = 1024, batch_size: int = 32,
                 eval_batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        spec = ListOpsSpec(seq_len, min_seq_len, max_depth, max_args)
        super().__init__(spec, train_size, val_size, test_size, batch_size, eval_batch_size, num_workers, seed)

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_listops(self.spec, size, seed)


# ---------------------------------------------------------------------------- associative recall
@dataclass(frozen=True)
class MQARSpec:
    """Multi-query associative recall (Zoology's MQAR over long distractor text):
    ``[CLS] … k₁ v₁ … k_P v_P … q₁ … q_Q [SEP]``; the Q queries (distinct keys among the P pairs)
    sit just before [SEP]; label j = the value class paired with q_j. The head reads the hidden
    state at each query position (the queries are protected)."""

    seq_len: int = 1024
    min_seq_len: int = 0
    vocab_size: int = 256
    num_keys: int = 32
    num_classes: int = 8
    num_pairs: int = 8
    num_queries: int = 4

    def __post_init__(self) -> None:
        KVSpec(self.seq_len, self.min_seq_len, self.vocab_size, self.num_keys, self.num_classes, self.num_pairs)
        if not 1 <= self.num_queries <= self.num_pairs:
            raise ValueError(f"data.num_queries={self.num_queries}: need 1 <= num_queries <= num_pairs ({self.num_pairs})")
        if 2 * self.num_pairs + self.num_queries + 2 > (self.min_seq_len or self.seq_len):
            raise ValueError("pairs + queries + [CLS]/[SEP] do not fit in the shortest sequence")


def generate_mqar(spec: MQARSpec, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` examples; ``labels`` (B, Q), ``query_positions`` (B, Q), ``pair_positions`` (B, P)."""
    kv = KVSpec(spec.seq_len, spec.min_seq_len, spec.vocab_size, spec.num_keys, spec.num_classes, spec.num_pairs)
    g = torch.Generator().manual_seed(seed)
    lengths, pos, mask = _lengths_and_mask(size, spec.seq_len, spec.min_seq_len, g)
    ids = torch.randint(kv.first_distractor, spec.vocab_size, (size, spec.seq_len), generator=g)
    q = spec.num_queries
    slots = _random_slots(size, (lengths - 2 - q) // 2, spec.num_pairs, spec.seq_len // 2, g)
    key_pos = 1 + 2 * slots
    keys = torch.rand(size, spec.num_keys, generator=g).argsort(1)[:, : spec.num_pairs]
    values = torch.randint(0, spec.num_classes, (size, spec.num_pairs), generator=g)
    ids.scatter_(1, key_pos, FIRST_TASK_TOKEN + keys)
    ids.scatter_(1, key_pos + 1, kv.first_value + values)
    which = torch.rand(size, spec.num_pairs, generator=g).argsort(1)[:, :q]  # distinct pairs queried
    query_pos = (lengths - 1 - q).unsqueeze(1) + torch.arange(q)
    ids.scatter_(1, query_pos, FIRST_TASK_TOKEN + keys.gather(1, which))
    ids = _frame(ids, lengths, mask)
    return {"input_ids": ids, "attention_mask": mask, "labels": values.gather(1, which),
            "query_positions": query_pos, "pair_positions": key_pos}


class MQARDataModule(SyntheticDataModule):
    task = "multiquery"
    keys = ("input_ids", "attention_mask", "labels", "query_positions")

    def __init__(self, seq_len: int = 1024, min_seq_len: int = 0, vocab_size: int = 256, num_keys: int = 32,
                 num_classes: int = 8, num_pairs: int = 8, num_queries: int = 4, train_size: int = 4096,
                 val_size: int = 512, test_size: int = 1024, batch_size: int = 32, eval_batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0) -> None:
        spec = MQARSpec(seq_len, min_seq_len, vocab_size, num_keys, num_classes, num_pairs, num_queries)
        super().__init__(spec, train_size, val_size, test_size, batch_size, eval_batch_size, num_workers, seed)

    def generate(self, size: int, seed: int) -> dict[str, torch.Tensor]:
        return generate_mqar(self.spec, size, seed)


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


class SyntheticQADataModule(TokenizerMixin, SplitLoaders, L.LightningDataModule):
    """:class:`SynthQASpec` examples through the same QA windows and span head as QASPER
    (``task = "qa"``): the question is protected, the answer must survive the gates."""

    task = "qa"

    def __init__(self, seq_len: int = 1024, num_pairs: int = 4, max_answer_tokens: int = 30, train_size: int = 4096,
                 val_size: int = 512, test_size: int = 1024, batch_size: int = 32, eval_batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, tokenizer: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = SynthQASpec(seq_len, num_facts=num_pairs)
        self.max_answer_tokens = max_answer_tokens
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.datasets: dict[str, list[dict]] = {}
        self._examples: dict[str, dict[int, dict]] = {}
        self.tokenizer_name = tokenizer or resolve_tokenizer_name(None, "random")

    @classmethod
    def from_config(cls, cfg) -> "SyntheticQADataModule":
        d = cfg.data
        return cls(seq_len=d.seq_len, num_pairs=d.num_pairs, max_answer_tokens=d.max_answer_tokens,
                   train_size=d.train_size, val_size=d.val_size, test_size=d.test_size, batch_size=d.batch_size,
                   eval_batch_size=d.eval_batch_size, num_workers=d.num_workers, seed=d.seed,
                   tokenizer=resolve_tokenizer_name(d.tokenizer, cfg.model.backbone))

    def setup(self, stage: str | None = None) -> None:
        from .qa_windows import tokenize_qa

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
        import functools

        from .qa_windows import collate_qa

        return functools.partial(collate_qa, pad_token_id=self.pad_token_id)
