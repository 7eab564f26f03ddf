"""Extractive QA with Adaptive Retention and drop-and-restore.

The question (and [CLS]/[SEP]) are *protected*: never dropped, counted toward M. On the hard path the
context tokens dropped at any gated layer keep the state they entered that gate with and are scattered
back to their positions before the span head (``RetentionEncoder.forward(restore=True)``), so start/end
logits exist at every one of the T positions. The soft path (training) reads the same restored state,
mixed by the gates: h = z̃·h_final + (1 − z̃)·h_at_gate for one gate (the encoder's module docstring has
the general formula), so a closed gate trains exactly the state the hard path restores. A window's best span (start ≤ end < start + ``max_answer_tokens``,
both in the context) is decoded to character offsets of the original context through the tokenizer's
offset mapping; an example split into several windows (sliding-window policy) takes the best-scoring
window's span. SQuAD exact match / F1 (torchmetrics) on the soft, hard and dense paths.

A batch carries ``input_ids``, ``attention_mask``, ``protected`` (B, T) bool, ``start_positions`` /
``end_positions`` (B,) (0 = [CLS] when the answer is not in this window), ``offsets`` (B, T, 2) char
offsets into the example's context, ``context_mask`` (B, T) bool, ``example_index`` (B,), and in
validation and test each window's position in its split (``datamodules.loaders.DATASET_INDEX``). The data
module answers ``eval_examples(stage)``: ``example_index`` → ``{"id", "context", "answers": [gold texts]}``.

Under DDP each window's best span is gathered from every rank (:class:`lightning_modules.metrics.SpanCandidates`,
a window the distributed sampler repeated counts once) before the best window per question is chosen
and EM / F1 are computed, so they are those of the whole split.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.text import squad

from datamodules.loaders import DATASET_INDEX

from .metrics import SpanCandidates
from .system import EVAL_PATHS, Optimisation, RetentionSystem

__all__ = ["RetentionQA", "best_spans"]


def best_spans(start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, max_answer_tokens: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Highest start[i] + end[j] over context positions with i ≤ j < i + ``max_answer_tokens``.

    Banded, O(T·L) memory instead of the T×T score matrix. Returns (score, i, j), each (B,);
    score is −inf for a window without context tokens."""
    b, t = start.shape
    neg = torch.finfo(start.dtype).min
    s = start.masked_fill(~context, neg)
    e = end.masked_fill(~context, neg)
    best = torch.full((b,), float("-inf"), dtype=start.dtype, device=start.device)
    bi = torch.zeros(b, dtype=torch.long, device=start.device)
    bj = torch.zeros_like(bi)
    for k in range(min(max_answer_tokens, t)):
        both = context[:, : t - k] & context[:, k:]
        score = (s[:, : t - k] + e[:, k:]).masked_fill(~both, float("-inf"))
        val, i = score.max(1)
        better = val > best
        best = torch.where(better, val, best)
        bi = torch.where(better, i, bi)
        bj = torch.where(better, i + k, bj)
    return best, bi, bj


class RetentionQA(RetentionSystem):
    METRIC = "f1"
    METRIC_LABEL = "SQuAD F1"

    def __init__(self, encoder: nn.Module, optim: Optimisation, dropout: float, max_answer_tokens: int,
                 method: str = "gate") -> None:
        """A span head (dropout, d → 2 logits per position) on ``encoder``'s hidden states; predicted
        spans are at most ``max_answer_tokens`` long. ``encoder``, ``optim``, ``method``: as in
        :class:`RetentionSystem`."""
        super().__init__(encoder, optim, method)
        d = self.encoder.backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, 2))
        self.max_answer_tokens = max_answer_tokens
        self.loss_fn = nn.CrossEntropyLoss(reduction="none")
        self.candidates = nn.ModuleDict({f"{stage}_{path}": SpanCandidates() for stage in ("val", "test") for path in EVAL_PATHS})

    def forward(self, input_ids, attention_mask=None, protected=None, mode: str = "auto", plan=None):
        """(start_logits, end_logits), each (B, T) — every position, on every path — and the encoder
        output; ``plan``: the batch's host plan (:mod:`lightning_modules.host_plans`) or None."""
        if mode == "auto":
            mode = "soft" if self.training else "hard"
        out = self.encoder(input_ids, attention_mask, protected=protected, mode=mode, restore=mode != "dense", plan=plan)
        hidden = out.last_hidden_state if mode == "dense" else out.restored_hidden_state
        start, end = self.head(hidden).unbind(-1)
        if attention_mask is not None:
            pad = ~attention_mask.bool()
            start = start.masked_fill(pad, torch.finfo(start.dtype).min)
            end = end.masked_fill(pad, torch.finfo(end.dtype).min)
        return start, end, out

    def span_loss(self, start, end, batch) -> torch.Tensor:
        """Each window's loss (B,): the mean of the start and end positions' cross-entropies."""
        return 0.5 * (self.loss_fn(start, batch["start_positions"]) + self.loss_fn(end, batch["end_positions"]))

    def protected(self, batch: dict) -> torch.Tensor:
        """The question and the special tokens, as the data module marked them."""
        return batch["protected"]

    def task_loss(self, batch: dict, mode: str):
        start, end, out = self(batch["input_ids"], batch["attention_mask"], batch["protected"], mode=mode,
                               plan=self.host_plan_of(batch))
        return self.span_loss(start, end, batch).mean(), out

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, stage: str, batch) -> None:
        for path in self.eval_paths:
            start, end, out = self(batch["input_ids"], batch["attention_mask"], batch["protected"], mode=path,
                                   plan=self.host_plan_of(batch))
            if path in ("hard", "soft"):
                self.log_retention(stage, out, on_step=False, path=path, batch=batch)
            if path == "soft":
                self.log_example_mean(stage, "loss_soft", batch, self.span_loss(start, end, batch))
            score, i, j = best_spans(start.float(), end.float(), batch["context_mask"].bool(), self.max_answer_tokens)
            rows = torch.arange(i.shape[0], device=i.device)
            char_start = batch["offsets"][rows, i, 0]
            char_end = batch["offsets"][rows, j, 1]
            self.candidates[f"{stage}_{path}"].update(batch[DATASET_INDEX], batch["example_index"], score, char_start, char_end)

    def squad_scores(self, key: str, examples) -> dict[str, torch.Tensor] | None:
        """SQuAD exact match and F1 (0–100) of the best span per question collected under ``key``
        (``<stage>_<path>``) since the last call, from every DDP rank's windows (the gathering is a
        collective: every rank calls it); None when nothing was collected."""
        candidates = self.candidates[key]
        if not candidates.update_called:
            return None
        best = candidates.compute()
        candidates.reset()
        preds, target = [], []
        for ex, cs, ce in best.tolist():
            e = examples[ex]
            preds.append({"prediction_text": e["context"][cs:ce], "id": e["id"]})
            target.append({"answers": {"text": list(e["answers"]), "answer_start": [0] * len(e["answers"])}, "id": e["id"]})
        return squad(preds, target)

    def _epoch_end(self, stage: str) -> None:
        examples = self.trainer.datamodule.eval_examples(stage)
        for path in self.eval_paths:
            result = self.squad_scores(f"{stage}_{path}", examples)
            if result is not None:  # the same value on every rank: the mean over ranks changes nothing
                self.log(f"{stage}/f1_{path}", result["f1"] / 100.0, prog_bar=path == "hard", sync_dist=True)
                self.log(f"{stage}/em_{path}", result["exact_match"] / 100.0, sync_dist=True)
