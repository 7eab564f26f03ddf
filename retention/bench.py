"""Speed and memory of the retained path against the full model (the measurement core of ``retention bench``).

(About 490 lines, over the usual 400: timing, gate overhead, training steps and the memory probe
share :class:`BenchSpec` and the driver; the records and the plot are already in ``bench_records``.)

For every (sequence length T, batch size B) the same wrapped encoder runs

* **full**: ``mode="dense"``, the stock model on all T tokens;
* **retained**: ``mode="hard"`` for each budget ρ, exactly M = ⌈ρ·T⌉ tokens kept from the gated
  layer on (protected [CLS]/[SEP] included), the rest physically removed;

with the repetitions **interleaved** (full, ρ₁, ρ₂, … then the next repetition, the order rotated
each time) after a warm-up, in one process, so the ratios are taken under the same machine load.
Memory is measured per phase: on CUDA ``max_memory_allocated`` after a reset; on CPU the peak
RSS (``VmHWM``) in a fresh subprocess per (T, B), reset with ``/proc/self/clear_refs`` after each
phase's own warm-up forward, with glibc's dynamic mmap threshold pinned so
freed tensors go back to the OS. "Activation memory" is the peak minus what was resident before the
forward (weights, inputs, the runtime). No Lightning here: the CLI lives in :mod:`commands.bench`, the
records (derived figures, CSV, plot) in :mod:`retention.bench_records`.

The timed retained forward gets its :meth:`RetentionEncoder.host_plan`, built inside the timed call
(it is host work), so it never waits on the device mid-forward (before the plan it did, twice).
``cuda_graphs``: the timed full and retained forwards are replays of CUDA graphs captured once per
shape and budget before the timing (:class:`retention.graphs.GraphedRetention`); ``sync_debug``
(``warn``/``error``): ``torch.cuda.set_sync_debug_mode`` around every timed forward, so a host sync
left in it warns or fails.

Budgets (:func:`bench_budgets`): every ``ratios`` ρ and every ``flops`` F (the ``schedule``'s shape at
``shape_ratio``, scaled to F of the dense FLOPs, :mod:`retention.flops`), gates at ``gate_layers``:
``--gate-layers 0 2 4 --schedule linear`` measures a progressive setting, ``--flops 0.25`` a compute
budget. Every record carries its analytic FLOPs fraction (``flops_fraction``) beside the timings.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from .backbones import MINILM, RANDOM_INIT, backbone_config, build_backbone, position_offset
from .bench_records import environment, memory_fields, timing_fields
from .budget import SCHEDULES, Budget, keep_counts
from .encoder import RetentionEncoder, transformer_layers
from .fastpath import compile_layers
from .graphs import GraphedRetention
from .flops import flops_fraction

__all__ = ["BenchSpec", "bench_budgets", "validate_spec", "run_bench", "interleaved_times", "build_encoder", "make_inputs",
           "extend_position_embeddings", "kept_per_layer", "gate_overhead", "train_steps", "measure_memory"]

_PAD_ID_OFFSET = 5  # random input ids start here, clear of pad/special ids


@dataclass
class BenchSpec:
    """What to measure. ``backbone``: ``minilm``, ``random`` (sizes from ``layers``/``hidden``/…) or a
    Hugging Face name/path of a BERT-family encoder."""

    backbone: str = MINILM
    lengths: tuple[int, ...] = (512, 1024, 2048, 4096)
    batch_sizes: tuple[int, ...] = (8,)
    ratios: tuple[float, ...] = (0.3, 0.5)
    gate_layers: tuple[int, ...] = (1,)
    schedule: str = "constant"  # the per-gate ratios across gate_layers (retention.budget.SCHEDULES)
    flops: tuple[float, ...] = ()  # FLOPs budgets F, the schedule's shape at shape_ratio scaled to F
    shape_ratio: float = 0.3
    reps: int = 10
    warmup: int = 2
    threads: int = field(default_factory=torch.get_num_threads)
    device: str = "cpu"
    autocast: str = "auto"  # auto: bf16 on CUDA, off on CPU | bf16 | off
    compile: bool = False
    memory: bool = True
    train_max_length: int = 512  # training steps (dense vs gated soft) for lengths up to this; 0: none
    train_reps: int = 5
    cuda_graphs: bool = False  # time replays of CUDA graphs (captured once per shape and budget)
    sync_debug: str = "off"  # off | warn | error: torch.cuda.set_sync_debug_mode around the timed forwards
    # random-init backbone
    arch: str = "bert"
    layers: int = 6
    hidden: int = 384
    heads: int = 12
    intermediate: int | None = None
    vocab: int = 30522
    seed: int = 0


def validate_spec(spec: BenchSpec) -> None:
    """Clear ``ValueError`` for a spec that cannot run, before anything is built."""
    for name in ("lengths", "batch_sizes"):
        values = getattr(spec, name)
        if not values or any(int(v) <= 0 for v in values):
            raise ValueError(f"{name} must be positive integers, got {list(values)}")
    if min(spec.lengths) < 4:
        raise ValueError(f"lengths must be at least 4 tokens (two protected ones plus kept ones), got {list(spec.lengths)}")
    if not spec.ratios and not spec.flops:
        raise ValueError("give at least one budget: ratios or flops")
    for name in ("ratios", "flops"):
        if any(not 0.0 < float(r) <= 1.0 for r in getattr(spec, name)):
            raise ValueError(f"{name} must lie in (0, 1], got {list(getattr(spec, name))}")
    if not 0.0 < spec.shape_ratio <= 1.0 or spec.schedule not in SCHEDULES:
        raise ValueError(f"shape_ratio must lie in (0, 1] and schedule be one of {', '.join(SCHEDULES)}, "
                         f"got {spec.shape_ratio}, {spec.schedule!r}")
    for name in ("reps", "threads", "train_reps"):
        if int(getattr(spec, name)) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(spec, name)}")
    if spec.warmup < 0 or spec.train_max_length < 0:
        raise ValueError("warmup and train_max_length must be >= 0")
    if spec.autocast not in ("auto", "bf16", "off"):
        raise ValueError(f"autocast must be one of auto, bf16, off, got {spec.autocast!r}")
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec.device!r} requested but CUDA is not available")
    if spec.sync_debug not in SYNC_DEBUG:
        raise ValueError(f"sync_debug must be one of {', '.join(SYNC_DEBUG)}, got {spec.sync_debug!r}")
    for flag, wanted in (("--cuda-graphs", spec.cuda_graphs), ("--sync-debug", spec.sync_debug != "off")):
        if wanted and not spec.device.startswith("cuda"):
            raise ValueError(f"{flag} needs a CUDA device (--device cuda); this run's device is {spec.device!r}")
    if spec.backbone == RANDOM_INIT and (spec.hidden <= 0 or spec.layers <= 0 or spec.heads <= 0 or spec.hidden % spec.heads):
        raise ValueError(f"random backbone needs positive layers/hidden/heads with hidden % heads == 0, "
                         f"got layers={spec.layers} hidden={spec.hidden} heads={spec.heads}")
    try:
        cfg = backbone_config(spec.backbone, **_random_kwargs(spec, max(spec.lengths)))
    except Exception as err:  # noqa: BLE001 - any loading failure means the name is unusable
        raise ValueError(f"unknown backbone {spec.backbone!r}: not 'minilm', 'random' or a loadable Hugging Face "
                         f"name/path ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None)
    bad = [g for g in spec.gate_layers if not 0 <= g < n_layers]
    if not spec.gate_layers or bad:
        raise ValueError(f"gate layers {list(spec.gate_layers)} out of range; the backbone has layers 0..{n_layers - 1}")
    dense_share = min(spec.gate_layers) / n_layers
    if spec.flops and min(spec.flops) <= dense_share:
        raise ValueError(f"flops {list(spec.flops)}: layers before the first gate ({min(spec.gate_layers)}) already cost "
                         f"{dense_share:.3f} of the dense forward; give flops above it or a gate at an earlier layer")


def bench_budgets(spec: BenchSpec) -> dict[str, Budget]:
    """Label → budget of every retained phase: ``rho<ρ>`` per ratio, ``flops<F>`` per FLOPs budget."""
    k = len(spec.gate_layers)
    out = {f"rho{r}": Budget(ratio=r, schedule=spec.schedule, num_layers=k) for r in spec.ratios}
    out.update({f"flops{f}": Budget(ratio=spec.shape_ratio, schedule=spec.schedule, num_layers=k, flops=f)
                for f in spec.flops})
    return out


def _random_kwargs(spec: BenchSpec, max_len: int) -> dict:
    if spec.backbone != RANDOM_INIT:
        return {}
    return dict(arch=spec.arch, vocab_size=spec.vocab, hidden_size=spec.hidden, num_layers=spec.layers,
                num_heads=spec.heads, intermediate_size=spec.intermediate, max_positions=max_len)


def extend_position_embeddings(model: nn.Module, n: int) -> bool:
    """Make a pretrained absolute-position encoder accept ``n`` positions by tiling its position
    table (Longformer's copy initialisation). Speed and memory do not depend on the values. True if extended."""
    emb = getattr(model, "embeddings", None)
    table = getattr(emb, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        raise ValueError(f"cannot extend the positions of {type(model).__name__}: no embeddings.position_embeddings table")
    extra = position_offset(getattr(model.config, "model_type", ""))
    need = n + extra
    old = table.weight.data
    if old.shape[0] >= need:
        return False
    new = old.repeat(math.ceil(need / old.shape[0]), 1)[:need].clone()
    emb.position_embeddings = nn.Embedding.from_pretrained(new, freeze=False, padding_idx=table.padding_idx)
    for name in ("position_ids", "token_type_ids"):
        buf = getattr(emb, name, None)
        if isinstance(buf, torch.Tensor):
            value = torch.arange(need).expand(1, -1) if name == "position_ids" else torch.zeros(1, need, dtype=torch.long)
            setattr(emb, name, value.to(buf.device))
    model.config.max_position_embeddings = need
    return True


def build_encoder(spec: BenchSpec, ratio: float | Budget) -> tuple[RetentionEncoder, bool]:
    """The wrapped backbone (eval mode, on ``spec.device``) and whether its positions were extended."""
    torch.manual_seed(spec.seed)
    max_len = max(spec.lengths)
    backbone = build_backbone(spec.backbone, **_random_kwargs(spec, max_len))
    extended = spec.backbone != RANDOM_INIT and extend_position_embeddings(backbone, max_len)
    k = len(spec.gate_layers)
    budget = ratio if isinstance(ratio, Budget) else Budget(ratio=ratio, schedule=spec.schedule, num_layers=k)
    enc = RetentionEncoder(backbone, spec.gate_layers, budget)
    if spec.compile:
        compile_layers(transformer_layers(backbone))
    return enc.to(spec.device).eval(), extended


def make_inputs(spec: BenchSpec, vocab: int, length: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, T) and the protected mask: position 0 ([CLS]) and T−1 ([SEP]); no padding, so every
    sequence of the batch keeps the same M."""
    g = torch.Generator().manual_seed(spec.seed + length + batch)
    ids = torch.randint(_PAD_ID_OFFSET, vocab, (batch, length), generator=g)
    prot = torch.zeros(batch, length, dtype=torch.bool)
    prot[:, 0] = prot[:, -1] = True
    return ids.to(spec.device), prot.to(spec.device)


def _bf16(spec: BenchSpec) -> bool:
    """Whether the forwards run under bf16 autocast ("auto": on CUDA only)."""
    return spec.autocast == "bf16" or (spec.autocast == "auto" and spec.device.startswith("cuda"))


def _autocast(spec: BenchSpec) -> contextlib.AbstractContextManager:
    if _bf16(spec):
        return torch.autocast(device_type="cuda" if spec.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _dtype_name(spec: BenchSpec) -> str:
    return "bf16-autocast" if _bf16(spec) else "fp32"


def _sync(spec: BenchSpec) -> None:
    if spec.device.startswith("cuda"):
        torch.cuda.synchronize()


SYNC_DEBUG = ("off", "warn", "error")


@contextlib.contextmanager
def _sync_debug(spec: BenchSpec) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode(spec.sync_debug)`` inside (the timer's own synchronize stays outside)."""
    if spec.sync_debug == "off":
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(spec.sync_debug)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def kept_per_layer(enc: RetentionEncoder, ids: torch.Tensor, prot: torch.Tensor, mode: str = "hard") -> list[int]:
    """Sequence length every transformer layer actually computed on in one forward (read from its output)."""
    seen: list[int] = []

    def record(module, args, out) -> None:
        seen.append(int((out[0] if isinstance(out, tuple) else out).shape[1]))

    handles = [layer.register_forward_hook(record) for layer in transformer_layers(enc.backbone)]
    try:
        with torch.inference_mode():
            enc(ids, None, protected=prot, mode=mode)
    finally:
        for h in handles:
            h.remove()
    return seen


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int, warmup: int, threads: int) -> dict[str, list[float]]:
    """Wall time of each function (which synchronises the device itself), one call per repetition, repetitions
    interleaved with a rotating order, all with ``threads`` torch threads. (``torch.utils.benchmark.Timer.timeit``
    is not used: it defaults to one thread and runs two untimed calls before every timed one.)"""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    torch.set_num_threads(threads)
    for rep in range(warmup + reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            t = time.perf_counter() - t0
            if rep >= warmup:
                times[k].append(t)
    return times



@contextlib.contextmanager
def _gate_timer(enc: RetentionEncoder, spec: BenchSpec, sink: list[float]) -> Iterator[None]:
    """Accumulate the wall time of every gate application (scoring + top-M selection + gather) into ``sink``."""
    inner = enc._apply_gate

    def timed(*args, **kwargs):
        _sync(spec)
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        _sync(spec)
        sink.append(time.perf_counter() - t0)
        return out

    enc._apply_gate = timed
    try:
        yield
    finally:
        del enc._apply_gate


def gate_overhead(enc: RetentionEncoder, ids: torch.Tensor, prot: torch.Tensor, spec: BenchSpec) -> tuple[float, float]:
    """Median over ``reps`` retained forwards of (gate time / forward time), and the median gate time."""
    shares, gate_times = [], []
    with torch.inference_mode(), _autocast(spec):
        for _ in range(spec.reps):
            sink: list[float] = []
            with _gate_timer(enc, spec, sink):
                _sync(spec)
                t0 = time.perf_counter()
                enc(ids, None, protected=prot, mode="hard")
                _sync(spec)
                total = time.perf_counter() - t0
            shares.append(sum(sink) / total)
            gate_times.append(sum(sink))
    return statistics.median(shares), statistics.median(gate_times)


def train_steps(enc: RetentionEncoder, ids: torch.Tensor, prot: torch.Tensor, spec: BenchSpec) -> dict[str, float]:
    """Forward + backward of a dense step and of a gated (soft path, sampled gates) step, interleaved."""
    enc.train()

    def step(mode: str) -> None:
        with _autocast(spec):
            out = enc(ids, None, protected=prot, mode=mode)
            loss = out.last_hidden_state[:, 0].float().square().mean() + out.expected_retention.sum()
        loss.backward()
        enc.zero_grad(set_to_none=True)
        _sync(spec)

    try:
        times = interleaved_times({"dense": lambda: step("dense"), "gated": lambda: step("soft")},
                             spec.train_reps, max(1, spec.warmup), spec.threads)
    finally:
        enc.eval()
    dense, gated = statistics.median(times["dense"]), statistics.median(times["gated"])
    return {"train_dense_step_s": dense, "train_gated_step_s": gated, "train_step_ratio": gated / dense}


# ----------------------------------------------------------------------------------------- memory
_PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _probe(spec: BenchSpec, length: int, batch: int) -> dict[str, dict[str, int]]:
    """Peak memory of one forward per phase (``full`` and every ratio), each after its own warm-up and reset."""
    budgets = bench_budgets(spec)
    enc, _ = build_encoder(spec, Budget(ratio=1.0, num_layers=len(spec.gate_layers)))
    ids, prot = make_inputs(spec, enc.backbone.config.vocab_size, length, batch)
    out = {}
    for label in (None, *budgets):
        enc.budget = Budget(ratio=1.0, num_layers=len(spec.gate_layers)) if label is None else budgets[label]
        mode = "dense" if label is None else "hard"

        def forward() -> None:
            with torch.inference_mode(), _autocast(spec):
                enc(ids, None, protected=prot, mode=mode)
            _sync(spec)

        forward()  # lazy initialisation (kernels, thread pools) is not the forward's memory
        gc.collect()
        if spec.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            forward()
            peak = torch.cuda.max_memory_allocated()
        else:
            before = _status_kib("VmRSS") * 1024
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            forward()
            peak = _status_kib("VmHWM") * 1024
        out["full" if label is None else label] = {
            "peak_bytes": int(peak), "resident_bytes": int(before), "activation_bytes": int(peak - before)}
    return out


def probe_main() -> None:
    """Subprocess entry: ``python -c 'from retention.bench import probe_main; probe_main()' JSON``."""
    arg = json.loads(sys.argv[1])
    spec = BenchSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in arg["spec"].items()})
    torch.set_num_threads(spec.threads)
    print("PROBE " + json.dumps(_probe(spec, arg["length"], arg["batch"])))


def measure_memory(spec: BenchSpec, length: int, batch: int) -> dict[str, dict[str, int]]:
    """Every phase's memory for one (T, B): in-process on CUDA, in a fresh subprocess on CPU."""
    if spec.device.startswith("cuda"):
        return _probe(spec, length, batch)
    payload = json.dumps({"spec": asdict(spec), "length": length, "batch": batch})
    env = {**os.environ, **_PROBE_ENV}
    res = subprocess.run([sys.executable, "-c", "from retention.bench import probe_main; probe_main()", payload],
                         capture_output=True, text=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe (T={length}, B={batch}) failed:\n{res.stderr[-2000:]}")
    return json.loads(lines[-1][len("PROBE "):])


# ----------------------------------------------------------------------------------------- driver
def run_bench(spec: BenchSpec, log: Callable[[str], None] = print) -> dict[str, object]:
    """Measure every (length, batch, ratio) configuration; returns ``{"environment": …, "records": […]}``."""
    validate_spec(spec)
    torch.set_num_threads(spec.threads)
    env = environment(spec, _dtype_name(spec))
    budgets = bench_budgets(spec)
    dense_budget = Budget(ratio=1.0, num_layers=len(spec.gate_layers))  # the full path computes no counts
    enc, extended = build_encoder(spec, dense_budget)
    env["positions_extended"] = extended
    env["parameters"] = sum(p.numel() for p in enc.backbone.parameters())
    env["gate_parameters"] = sum(p.numel() for p in enc.gates.parameters())
    vocab = enc.backbone.config.vocab_size
    records = []
    for length in spec.lengths:
        for batch in spec.batch_sizes:
            ids, prot = make_inputs(spec, vocab, length, batch)
                        # with --cuda-graphs each forward is a graph replay (one graph per path, shape and budget)
            hard, dense = (GraphedRetention(enc, mode, warmup=max(1, spec.warmup)) if spec.cuda_graphs
                           else functools.partial(enc, mode=mode) for mode in ("hard", "dense"))

            def retained(r: str) -> Callable[[], None]:
                def fn() -> None:
                    enc.budget = budgets[r]
                    plan = enc.host_plan([length] * batch, [2] * batch, padded_length=length)  # [CLS], [SEP]
                    with torch.inference_mode(), _autocast(spec), _sync_debug(spec):
                        hard(ids, None, protected=prot, plan=plan)
                    _sync(spec)
                return fn

            def full() -> None:
                enc.budget = dense_budget
                with torch.inference_mode(), _autocast(spec), _sync_debug(spec):
                    dense(ids, None)
                _sync(spec)

            fns = {"full": full, **{label: retained(label) for label in budgets}}
            if spec.cuda_graphs:
                log(f"T={length} B={batch}: capturing {len(fns)} CUDA graphs")
                for fn in fns.values():
                    fn()  # warm-up and capture, outside the timing
            log(f"T={length} B={batch}: timing full and retained {list(budgets)} ({spec.reps} interleaved reps"
                f"{', CUDA graph replays' if spec.cuda_graphs else ''})")
            times = interleaved_times(fns, spec.reps, spec.warmup, spec.threads)
            del hard, dense, fns  # the graphs' memory pools
            train = {"train_dense_step_s": None, "train_gated_step_s": None, "train_step_ratio": None}
            if length <= spec.train_max_length:
                log(f"T={length} B={batch}: training step, dense vs gated (soft path)")
                enc.budget = next(iter(budgets.values()))
                train = train_steps(enc, ids, prot, spec)
            if spec.memory:
                log(f"T={length} B={batch}: peak memory per phase (fresh subprocess)")
                mem = measure_memory(spec, length, batch)
            for label, budget in budgets.items():
                enc.budget = budget
                layers_len = kept_per_layer(enc, ids, prot)
                overhead, gate_s = gate_overhead(enc, ids, prot, spec)
                gate_counts = torch.tensor([[layers_len[g]] for g in spec.gate_layers])
                r = budget.ratio if budget.flops is None else None
                rec: dict[str, object] = {
                    "backbone": spec.backbone, "length": length, "batch": batch, "ratio": r, "flops": budget.flops,
                    "schedule": spec.schedule, "gate_layers": list(spec.gate_layers),
                    "kept_tokens": (layers_len[-1] if r is None else
                                    int(keep_counts(r, torch.tensor([length]), torch.tensor([2]))[0])),
                    "kept_per_layer": layers_len, "reps": spec.reps, "warmup": spec.warmup,
                    "flops_fraction": float(flops_fraction(gate_counts, torch.tensor([length]), enc.flops_shape)[0]),
                }
                rec.update(timing_fields(batch, length, times["full"], times[label]))
                rec["gate_overhead"] = overhead
                rec["gate_time_median_s"] = gate_s
                rec.update(memory_fields(mem["full"], mem[label]) if spec.memory else memory_fields(None, None))
                rec.update(train)
                records.append(rec)
                red = rec["activation_memory_reduction"]
                log(f"  {label}: M={rec['kept_tokens']} FLOPs {rec['flops_fraction']:.3f} of dense, speed-up {rec['speedup']:.2f}x, gate overhead "
                    f"{100 * overhead:.2f} %" + ("" if not spec.memory else
                                                 ", activation memory below the RSS resolution" if red is None else
                                                 f", activation memory {-100 * red:+.0f} %"))
    env["load_average_end"] = list(os.getloadavg())
    return {"environment": env, "spec": asdict(spec), "records": records}


