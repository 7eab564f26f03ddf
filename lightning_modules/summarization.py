"""Encoder–decoder summarization with Adaptive Retention (BART and T5 families).

The gates sit in the encoder: :class:`retention.encoder.RetentionEncoder` wraps the stock model's encoder stack
(``model.get_encoder()``) with the same hooks as an encoder-only backbone. The decoder then
cross-attends to what the encoder kept:

* hard path (inference): the encoder output is the physically shorter (B, M_max, d) tensor of retained
  states, and the cross-attention mask is its ``valid`` mask — the decoder's keys/values (and its
  cross-attention KV cache during generation) have M_max entries, not T. That is where the memory goes.
* soft path (training): the length stays T; the encoder output is scaled by the cumulative gate z̃ and
  tokens whose gate is exactly 0 are masked out of cross-attention, so a closed gate removes a token from
  the decoder as it does on the hard path, while open gates pass their gradient through the scaling.
* dense: the same weights, nothing dropped.

Generation (greedy or beam, ``num_beams``) runs ``model.generate(encoder_outputs=..., attention_mask=...)``
on the path's encoder output; ROUGE-1/2/L F-measures (torchmetrics ``rouge_score`` of each example,
averaged over the split's examples, as ``ROUGEScore`` averages them) on the three paths, and
``loss_<path>``, the mean over examples of each example's mean target-token cross-entropy. Both are
gathered over DDP ranks, each example once (:class:`lightning_modules.metrics.ExampleMean`).
A batch carries ``input_ids``, ``attention_mask`` and ``labels`` (target ids, −100 at padding).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.text.rouge import rouge_score
from transformers.modeling_outputs import BaseModelOutput

from .metrics import ExampleMean
from .system import EVAL_PATHS, Optimisation, RetentionSystem

__all__ = ["RetentionSummarizer"]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


class RetentionSummarizer(RetentionSystem):
    METRIC = "rouge1"
    METRIC_LABEL = "ROUGE-1 F"

    NOT_HYPERPARAMETERS = (*RetentionSystem.NOT_HYPERPARAMETERS, "seq2seq", "tokenizer")

    def __init__(self, encoder: nn.Module, seq2seq: nn.Module, optim: Optimisation, tokenizer=None,
                 generation: dict | None = None, method: str = "gate") -> None:
        """``seq2seq``: the stock encoder–decoder with its LM head (``AutoModelForSeq2SeqLM``);
        ``encoder`` wraps its encoder stack (``seq2seq.get_encoder()``). ``tokenizer`` decodes
        generated ids for ROUGE; ``generation``: keyword arguments of ``generate`` (default greedy,
        64 new tokens). ``optim``, ``method``: as in :class:`RetentionSystem`."""
        if encoder.backbone is not seq2seq.get_encoder():
            raise ValueError("the retention encoder must wrap seq2seq.get_encoder(), the stack the decoder reads")
        super().__init__(encoder, optim, method)
        self.seq2seq = seq2seq
        self.generation = dict(generation or {"max_new_tokens": 64, "num_beams": 1})
        self.example_means.update({f"{stage}_{name}_{path}": ExampleMean() for stage in ("val", "test")
                                   for path in EVAL_PATHS for name in ("loss", *ROUGE_KEYS)})
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ encoder paths
    def encode(self, input_ids, attention_mask, mode: str, plan=None):
        """(encoder_outputs, cross-attention mask, retention output) for one path (see module docstring);
        ``plan``: the batch's host plan (:mod:`lightning_modules.host_plans`) or None."""
        if mode == "auto":
            mode = "soft" if self.training else "hard"
        out = self.encoder(input_ids, attention_mask, mode=mode, plan=plan)
        hidden = out.last_hidden_state
        cross_mask = out.valid
        if mode == "soft":
            z = out.gate_values
            hidden = hidden * z.unsqueeze(-1).to(hidden.dtype)
            cross_mask = out.valid & (z > 0)
        return BaseModelOutput(last_hidden_state=hidden), cross_mask.long(), out

    def forward(self, input_ids, attention_mask, labels, mode: str = "auto", per_example: bool = False, plan=None):
        """(loss, retention output): the mean target-token cross-entropy of the batch, or with
        ``per_example`` each example's own mean (B,)."""
        enc, cross_mask, out = self.encode(input_ids, attention_mask, mode, plan)
        result = self.seq2seq(encoder_outputs=enc, attention_mask=cross_mask, labels=labels)
        if not per_example:
            return result.loss, out
        tokens = F.cross_entropy(result.logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counts = (labels != -100).sum(1).clamp_min(1)
        return tokens.sum(1) / counts, out

    def generate(self, input_ids, attention_mask, mode: str = "hard", plan=None, **overrides) -> torch.Tensor:
        enc, cross_mask, _ = self.encode(input_ids, attention_mask, mode, plan)
        kwargs = {**self.generation, **overrides}
        return self.seq2seq.generate(encoder_outputs=enc, attention_mask=cross_mask, **kwargs)

    def task_loss(self, batch: dict, mode: str):
        return self(batch["input_ids"], batch["attention_mask"], batch["labels"], mode=mode, plan=self.host_plan_of(batch))

    # ------------------------------------------------------------------ evaluation
    def _texts(self, ids: torch.Tensor) -> list[str]:
        ids = ids.masked_fill(ids < 0, self.tokenizer.pad_token_id or 0)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _evaluate(self, stage: str, batch) -> None:
        references = self._texts(batch["labels"])
        plan = self.host_plan_of(batch)
        for path in self.eval_paths:
            losses, out = self(batch["input_ids"], batch["attention_mask"], batch["labels"], mode=path, per_example=True, plan=plan)
            self.log_example_mean(stage, f"loss_{path}", batch, losses)
            if path in ("hard", "soft"):
                self.log_retention(stage, out, on_step=False, path=path, batch=batch)
            generated = self._texts(self.generate(batch["input_ids"], batch["attention_mask"], mode=path, plan=plan))
            scores = [rouge_score(g, r, rouge_keys=ROUGE_KEYS) for g, r in zip(generated, references)]
            for key in ROUGE_KEYS:
                values = torch.stack([s[f"{key}_fmeasure"] for s in scores]).to(self.device)
                self.log_example_mean(stage, f"{key}_{path}", batch, values, prog_bar=key == "rouge1" and path == "hard")
