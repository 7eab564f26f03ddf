"""Ranking distillation (ToP, Li et al., KDD 2023): the gates learn the dense model's final-layer
token ranking, so early gates drop what the last layer would have ignored.

**Teacher.** The same weights, run densely under ``no_grad`` in eval mode (dropout off) with eager
attention, on the batch the soft path trains on. ToP distils from a frozen copy of the model
fine-tuned densely; here the dense phase trains the same weights the gates sit on, and a frozen copy
would double the backbone's memory and pin the ranking to the start of the gated phase while the
backbone keeps adapting to the gates. Running the current weights densely costs one forward without
a backward per gated step and follows the model the gates serve. The teacher's importance of token t
is the attention it receives in the final layer (:func:`retention.baselines.attention_received`,
PoWER-BERT's and LTP's score):

    s_t = 1/(H·N) Σ_h Σ_{q valid} A_h^{(L)}[q → t]

**Loss.** Listwise, over the rankable tokens R of each sequence (valid and not protected: protected
tokens are kept whatever their score), for every gate k with log α_k (B, T):

    q_t = s_t / Σ_{u∈R} s_u,    p_k = softmax_{t∈R}(log α_k,t),
    L_rank = mean_k mean_b KL(q ‖ p_k) = mean_k mean_b Σ_{t∈R} q_t (log q_t − log p_k,t).

KL is invariant to a shift of log α, so the ranking loss shapes the order and the Lagrangian alone
sets how many gates are open.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from .baselines import attention_received, eager_attention

__all__ = ["teacher_importance", "ranking_kl", "ranking_distillation_loss"]


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block (dropout off), each restored to its own mode after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def teacher_importance(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) s_t of the module docstring: the final layer's attention received, from a dense forward
    of ``backbone`` (the stock model, no gates) under ``no_grad``, eval mode and eager attention."""
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    with torch.no_grad(), _eval_mode(backbone), eager_attention(backbone):
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    probs = out.attentions[-1].float().mean(1)  # (B, T, T), mean over heads
    return attention_received(probs, valid)


def ranking_kl(log_alpha: torch.Tensor, teacher: torch.Tensor, rankable: torch.Tensor) -> torch.Tensor:
    """(B,) KL(q ‖ p) of the module docstring for one gate: q the teacher's scores normalised over the
    rankable tokens, p = softmax of ``log_alpha`` over them; 0 for a sequence with nothing to rank."""
    q = teacher.float().masked_fill(~rankable, 0.0)
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    log_p = torch.log_softmax(log_alpha.float().masked_fill(~rankable, float("-inf")), dim=-1)
    log_p = log_p.masked_fill(~rankable, 0.0)  # no -inf · 0 where nothing is ranked
    return (torch.xlogy(q, q) - q * log_p).sum(-1)


def ranking_distillation_loss(log_alphas: Sequence[torch.Tensor], teacher: torch.Tensor, rankable: torch.Tensor) -> torch.Tensor:
    """L_rank = mean over gates and sequences of :func:`ranking_kl`. ``log_alphas``: the soft path's
    per-gate scores, each (B, T) (every position present on the soft path)."""
    return torch.stack([ranking_kl(la, teacher, rankable).mean() for la in log_alphas]).mean()
