"""The ``method`` of a run, defined once: our learned gate, a heuristic selector, a trained baseline
or a sparse-attention comparator.

Imports nothing but the standard library, so ``conf/schema.py`` can type its ``method`` field with
:class:`Method` and still answer config errors without importing torch.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Method"]


class Method(StrEnum):
    """What a run trains and how its hard path selects tokens. Members are named as users type them
    (``method=gate``); as a ``str`` each equals its name, so saved configs and MLflow params read the same.

    * ``gate`` — Adaptive Retention (Rafiuddin & Khan, EMNLP 2025 Findings, arXiv 2510.08798): the
      learned context-aware scorer with Hard-Concrete gates under the Lagrangian budget;
    * ``random``, ``first``, ``l2``, ``attention`` — heuristic selectors (:mod:`retention.baselines`):
      the backbone trains densely, and at inference the selector scores tokens instead of the gate;
    * ``ltp`` — LTP (Kim et al. 2022), a trained baseline: learned thresholds on attention received;
    * ``longformer``, ``bigbird`` — sparse-attention comparators (:mod:`retention.sparse`): every token
      is kept and each query attends to about ρ·T keys.
    """

    gate = "gate"
    random = "random"
    first = "first"
    l2 = "l2"
    attention = "attention"
    ltp = "ltp"
    longformer = "longformer"
    bigbird = "bigbird"

    @property
    def is_heuristic(self) -> bool:
        """A selector with no parameters, swapped in at inference (the backbone trains densely)."""
        return self in (Method.random, Method.first, Method.l2, Method.attention)

    @property
    def trains_scorer(self) -> bool:
        """The run trains its own scorer on the soft path (ours, or LTP's thresholds)."""
        return self in (Method.gate, Method.ltp)

    @property
    def is_sparse(self) -> bool:
        """A sparse-attention comparator: no gates, every token kept."""
        return self in (Method.longformer, Method.bigbird)

    @property
    def selection(self) -> Method:
        """How the run's hard path selects by default: its own heuristic selector, or ``gate`` — the
        run's trained scorer (ours, LTP's; a sparse comparator has no selection and reports ``gate``)."""
        return self if self.is_heuristic else Method.gate

    @classmethod
    def selections(cls) -> tuple[Method, ...]:
        """The methods ``retention evaluate --methods`` swaps into a run: the trained scorer, then the heuristics."""
        return (cls.gate, *(m for m in cls if m.is_heuristic))
