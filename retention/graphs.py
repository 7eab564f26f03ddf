"""CUDA graphs for fixed shapes: capture a forward once per input shape, then replay it.

On a GPU a small forward is host-bound: the device finishes each kernel before Python has launched
the next (docs/performance.md, "GPU: NVIDIA H200"). A CUDA graph records the kernels of one call and
replays them with a single launch. The recipe is torch's (``torch.cuda.graphs``): warm up on a side
stream, capture under ``torch.cuda.graph``, then for every call copy the new inputs into the static
input tensors the graph reads and ``replay()``; the outputs are static tensors that each replay
overwrites.

What a graph bakes in is everything the host decided while it was captured: the tensor shapes, and
for the retained forward its :class:`retention.selection.HostPlan` (the widths M_max, which layers
need a key mask) and the budget (ρ enters the kernels as a constant). So a graph is looked up by the
input shapes, dtypes and devices plus a key of those host decisions (:func:`plan_key`), and a
forward can only be captured when it never reads back from the device: the retained forward with
a host plan (tests/test_sync_free.py), or the dense one without padding.

* :class:`GraphCache` — the bookkeeping: one captured graph per (key, input signature), static inputs,
  replay. The capture itself is a function (``capture``): :func:`cuda_capture` on a GPU;
  :func:`eager_capture` is a stand-in with the same contract that runs the forward eagerly and copies
  its result into the first call's outputs, so the bookkeeping is tested on a CPU.
* :class:`GraphedRetention` — inference through a :class:`retention.encoder.RetentionEncoder` on one
  path, with a graph per batch shape and host plan: ``GraphedRetention(encoder)(ids, mask, plan=plan)``.

Measured by ``retention bench --cuda-graphs``; unmeasured so far (no GPU in the session that wrote
it): see docs/performance.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable

import torch

from .encoder import RetentionEncoder, RetentionOutput
from .selection import HostPlan

__all__ = ["GraphCache", "GraphedRetention", "cuda_capture", "eager_capture", "plan_key", "signature"]

Capture = Callable[[Callable[[], Any], int], tuple[Callable[[], None], Any]]
"""``capture(fn, warmup) -> (replay, outputs)``: record ``fn()``; each ``replay()`` recomputes ``outputs`` in place."""


def cuda_capture(fn: Callable[[], Any], warmup: int) -> tuple[Callable[[], None], Any]:
    """``fn()`` captured in a CUDA graph, after ``warmup`` eager calls on a side stream (lazy
    initialisation such as cuBLAS handles must not happen during capture). Returns the graph's
    ``replay`` and ``fn``'s outputs, static tensors that every replay overwrites. Capturing computes
    nothing: replay once for the first result.

    Under autocast the weight-cast cache is off for warm-up and capture (the caller's autocast state
    otherwise kept): with it on, the capture would reuse casts made by the warm-up, outside the graph,
    and freed when the caller's autocast region ends — the graph would read freed memory (torch's
    ``make_graphed_callables`` refuses autocast caching for the same reason)."""
    no_cache = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"),
                              cache_enabled=False)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with no_cache, torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with no_cache, torch.cuda.graph(graph):
        outputs = fn()
    return graph.replay, outputs


def _copy_into(dst: Any, src: Any) -> None:
    """Copy every tensor of ``src`` into the tensor at the same place in ``dst`` (tensors, lists,
    tuples and dataclasses of them; anything else must be equal)."""
    if isinstance(dst, torch.Tensor):
        if dst.shape != src.shape:
            raise RuntimeError(f"a replay changed an output's shape from {tuple(dst.shape)} to {tuple(src.shape)}")
        if any(stride == 0 and size > 1 for stride, size in zip(dst.stride(), dst.shape)):
            if not torch.equal(dst, src):  # an expanded view (e.g. positions 0..T−1 of every row): not writable
                raise RuntimeError("a replay changed an expanded (broadcast) output")
        else:
            dst.copy_(src)
    elif dataclasses.is_dataclass(dst):
        for f in dataclasses.fields(dst):
            _copy_into(getattr(dst, f.name), getattr(src, f.name))
    elif isinstance(dst, (list, tuple)):
        if len(dst) != len(src):
            raise RuntimeError("a replay changed the number of outputs")
        for d, s in zip(dst, src):
            _copy_into(d, s)
    elif dst is not None or src is not None:
        if dst != src:
            raise RuntimeError(f"a replay changed a non-tensor output from {dst!r} to {src!r}")


def eager_capture(fn: Callable[[], Any], warmup: int) -> tuple[Callable[[], None], Any]:
    """A stand-in for :func:`cuda_capture` with its contract and no GPU: ``replay()`` runs ``fn()``
    eagerly and copies the result into the outputs returned here, as a graph's replay overwrites its
    static outputs (tests the bookkeeping on a CPU; not faster)."""
    for _ in range(warmup):
        fn()
    outputs = fn()
    return lambda: _copy_into(outputs, fn()), outputs


def signature(inputs: tuple[torch.Tensor | None, ...]) -> tuple:
    """What a graph's static inputs fix: each input's shape, dtype and device, or None for an absent one."""
    return tuple(None if x is None else (tuple(x.shape), x.dtype, str(x.device)) for x in inputs)


@dataclasses.dataclass
class _Graph:
    inputs: tuple[torch.Tensor | None, ...]  # the static inputs the graph reads
    replay: Callable[[], None]
    outputs: Any


class GraphCache:
    """One captured forward per (``key``, :func:`signature` of the inputs): ``cache(key, fn, *inputs)``
    captures ``fn(*static_inputs)`` the first time (``static_inputs``: copies of ``inputs``), then on
    every call copies ``inputs`` into the static ones, replays, and returns the static outputs —
    overwritten by the next call with the same key and shapes, so read (or clone) them first.
    ``key`` must hold every host-side value ``fn`` bakes in (a plan's widths, the budget, the path).
    Graphs keep the parameters' addresses: capture after loading weights, :meth:`clear` after
    replacing parameter tensors."""

    def __init__(self, warmup: int = 3, capture: Capture = cuda_capture) -> None:
        if warmup < 1 and capture is cuda_capture:
            raise ValueError("CUDA graph capture needs at least one warm-up call")
        self.warmup, self.capture = warmup, capture
        self.graphs: dict[tuple, _Graph] = {}

    def __len__(self) -> int:
        return len(self.graphs)

    def clear(self) -> None:
        """Drop every graph (and its memory pool)."""
        self.graphs.clear()

    def __call__(self, key: Hashable, fn: Callable[..., Any], *inputs: torch.Tensor | None) -> Any:
        full_key = (key, signature(inputs))
        graph = self.graphs.get(full_key)
        if graph is None:
            static = tuple(None if x is None else x.clone() for x in inputs)
            replay, outputs = self.capture(lambda: fn(*static), self.warmup)
            graph = self.graphs[full_key] = _Graph(static, replay, outputs)
        for buffer, x in zip(graph.inputs, inputs):
            if buffer is not None:
                buffer.copy_(x)
        graph.replay()
        return graph.outputs


def plan_key(plan: HostPlan | None) -> tuple | None:
    """The host decisions of ``plan`` that a captured retained forward bakes in: the widths, which
    gates and whether the input need a key mask, the budget and the inference rule (the lengths
    themselves stay on the device, in the attention mask)."""
    if plan is None:
        return None
    return plan.widths, plan.full, plan.full_input, plan.budget, plan.threshold, plan.t, len(plan.lengths)


class GraphedRetention:
    """``encoder``'s forward on ``mode`` (``hard``: the retained path; ``soft``; ``dense``), replayed
    from a CUDA graph per batch shape and host plan (:class:`GraphCache`; ``warmup``, ``capture`` as
    there). Call it as the encoder: ``graphed(input_ids, attention_mask, protected, plan=plan)`` with
    the batch's :meth:`RetentionEncoder.host_plan` — required, since a forward that reads back from
    the device cannot be captured, except on the dense path without padding. Inference only (eval
    mode, no gradient); the returned :class:`RetentionOutput` is overwritten by the next call with
    the same shapes and plan. The graph is captured under the caller's autocast state (part of the key)."""

    MODES = ("hard", "soft", "dense")

    def __init__(self, encoder: RetentionEncoder, mode: str = "hard", restore: bool = False, warmup: int = 3,
                 capture: Capture = cuda_capture) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.encoder, self.mode, self.restore = encoder, mode, restore
        self.cache = GraphCache(warmup, capture)
        self._plan: HostPlan | None = None  # the current call's (a graph runs the Python only when captured)

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, plan: HostPlan | None) -> None:
        enc = self.encoder
        if enc.training:
            raise ValueError("CUDA graphs replay inference: put the encoder in eval mode (training samples its gates)")
        if plan is None and (self.mode != "dense" or attention_mask is not None):
            raise ValueError(f"the {self.mode} path{' with padding' if self.mode == 'dense' else ''} needs the batch's "
                             "host plan (encoder.host_plan): without it the forward reads back from the device")
        if plan is not None and ((plan.t, len(plan.lengths)) != (input_ids.shape[1], input_ids.shape[0])
                                 or plan.budget != enc.budget or plan.threshold != (enc.inference == "threshold")):
            raise ValueError("the host plan was made for another batch shape, budget or inference rule")

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 protected: torch.Tensor | None = None, plan: HostPlan | None = None) -> RetentionOutput:
        self._check(input_ids, attention_mask, plan)
        device = input_ids.device.type
        autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        key = (self.mode, self.restore, plan_key(plan), id(self.encoder.selector), autocast)

        self._plan = plan
        return self.cache(key, self._forward, input_ids, attention_mask, protected)

    def _forward(self, input_ids, attention_mask, protected) -> RetentionOutput:
        with torch.no_grad():
            return self.encoder(input_ids, attention_mask, protected=protected, mode=self.mode, restore=self.restore,
                                plan=self._plan)
