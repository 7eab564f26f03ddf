"""Evaluation metrics that are exact under DDP: every rank's inputs are gathered, and an example
that Lightning's ``DistributedSampler`` gave to two ranks (it pads an evaluation split so that every
rank gets the same number of examples) counts once.

Each metric keeps its inputs row by row with the row's position in its split
(``batch[datamodules.loaders.DATASET_INDEX]``) in concatenated ("cat") states; torchmetrics gathers
them from every rank before :meth:`compute`, which keeps the first row of each position and only then
reduces. So a 2-process evaluation gives the metrics of the same model evaluated in 1 process, up to
the order of floating-point sums.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["Deduplicated", "ExampleMean", "SpanCandidates", "first_occurrences"]


def first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions (sorted by ``index``) of the first row of each distinct value of ``index`` (N,)."""
    values, inverse = torch.unique(index, return_inverse=True)
    rows = torch.arange(len(index), device=index.device)
    first = torch.full((len(values),), len(index), dtype=torch.long, device=index.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin")


class Deduplicated(Metric):
    """``metric`` over the distinct examples seen by every rank: ``update(index, *inputs)`` stores the
    inputs (each (B, ...) tensors) with the examples' positions ``index`` (B,); :meth:`compute` keeps
    the first row of each position and feeds them to ``metric`` in one update. ``metric`` is computed
    on already gathered rows, so its own synchronisation is switched off (``sync_on_compute``)."""

    full_state_update = False

    def __init__(self, metric: Metric, num_inputs: int) -> None:
        super().__init__()
        metric.sync_on_compute = False
        self.metric, self.num_inputs = metric, num_inputs
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for k in range(num_inputs):
            self.add_state(f"input{k}", default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, *inputs: torch.Tensor) -> None:
        if len(inputs) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} inputs, got {len(inputs)}")
        self.index.append(index.long())
        for k, x in enumerate(inputs):
            getattr(self, f"input{k}").append(x.detach())

    def compute(self) -> torch.Tensor:
        keep = first_occurrences(dim_zero_cat(self.index))
        inputs = [dim_zero_cat(getattr(self, f"input{k}"))[keep] for k in range(self.num_inputs)]
        self.metric.reset()
        self.metric.update(*inputs)
        return self.metric.compute()


class ExampleMean(Deduplicated):
    """The mean of a per-example value over the distinct examples: ``update(index, values)``, values (B,)."""

    def __init__(self) -> None:
        super().__init__(MeanMetric(), num_inputs=1)


class SpanCandidates(Metric):
    """Extractive QA's best span per question over every rank's windows. ``update(index, example,
    score, start, end)``: per window (B,) its position in the split, its question's
    ``example_index``, its best span's score and character offsets. :meth:`compute` drops repeated
    windows, then keeps for each question the span of its highest-scoring window (the first window
    on a tie, as a sequential pass over the split would) and returns (Q, 3) long rows
    (example_index, char_start, char_end), sorted by example_index."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("index", "example", "score", "start", "end"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index, example, score, start, end) -> None:
        self.index.append(index.long())
        self.example.append(example.long())
        self.score.append(score.detach().double())
        self.start.append(start.long())
        self.end.append(end.long())

    def compute(self) -> torch.Tensor:
        index, example, score, start, end = (dim_zero_cat(x) for x in (self.index, self.example, self.score,
                                                                      self.start, self.end))
        keep = first_occurrences(index)  # windows in split order
        example, score, start, end = example[keep], score[keep], start[keep], end[keep]
        questions, inverse = torch.unique(example, return_inverse=True)
        best = torch.full((len(questions),), float("-inf"), dtype=score.dtype, device=score.device)
        best = best.scatter_reduce(0, inverse, score, reduce="amax")
        is_best = score == best[inverse]
        rows = torch.arange(len(score), device=score.device).masked_fill(~is_best, len(score))
        first = torch.full((len(questions),), len(score), dtype=torch.long, device=score.device)
        first = first.scatter_reduce(0, inverse, rows, reduce="amin")
        return torch.stack([questions, start[first], end[first]], dim=1)
