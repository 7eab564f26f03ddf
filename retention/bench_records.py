"""The records of ``retention bench`` (what :func:`retention.bench.run_bench` measured, one dict per
(T, B, ρ)): environment, derived figures, the CSV columns, the CSV file and the plot.

Derived figures: throughput ``seq/s = B / latency`` and ``tok/s = B·T / latency`` (median latency),
``speedup = retained seq/s ÷ full seq/s``; memory reductions ``1 − retained / full`` of the peak and
of the activation memory (peak minus what was resident before the forward).
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import statistics
import time

import torch
import transformers
from matplotlib.figure import Figure

__all__ = ["environment", "timing_fields", "memory_fields", "memory_reductions", "record_fields", "write_csv",
           "plot_records", "budget_label"]


def environment(spec, dtype: str) -> dict[str, object]:
    """Where the numbers come from (``spec``: a :class:`retention.bench.BenchSpec`; ``dtype``: how the forwards ran)."""
    if spec.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(spec.device)
    else:
        device_name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
            device_name = names[0] if names else device_name
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "device": spec.device, "device_name": device_name, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "threads": spec.threads, "cpu_cores": cores, "dtype": dtype, "compile": spec.compile,
        "load_average_start": list(os.getloadavg()), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "memory_method": ("cuda max_memory_allocated after reset" if spec.device.startswith("cuda")
                          else "VmHWM in a fresh subprocess per (T, B), reset by /proc/self/clear_refs after each phase's warm-up forward"),
    }


def latency_stats(prefix: str, times: list[float]) -> dict[str, float]:
    """Median, inter-quartile range, min and max of ``times`` (seconds)."""
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {f"{prefix}_latency_median_s": statistics.median(times), f"{prefix}_latency_iqr_s": q[2] - q[0],
            f"{prefix}_latency_min_s": min(times), f"{prefix}_latency_max_s": max(times)}


def timing_fields(batch: int, length: int, full: list[float], retained: list[float]) -> dict[str, float]:
    """Latency statistics of both paths, their throughputs and the speed-up (see the module docstring)."""
    rec = {**latency_stats("full", full), **latency_stats("retained", retained)}
    for p in ("full", "retained"):
        lat = rec[f"{p}_latency_median_s"]
        rec[f"{p}_seq_per_s"] = batch / lat
        rec[f"{p}_tok_per_s"] = batch * length / lat
    rec["speedup"] = rec["retained_seq_per_s"] / rec["full_seq_per_s"]
    return rec


def memory_fields(full: dict[str, int] | None, retained: dict[str, int] | None) -> dict[str, float | int | None]:
    """Peak, resident and activation bytes of both phases and their reductions; all None when not measured."""
    if full is None or retained is None:
        return {key: None for key in record_fields() if "bytes" in key or key.endswith("memory_reduction")}
    rec: dict[str, float | int | None] = {}
    for p, m in (("full", full), ("retained", retained)):
        rec[f"{p}_peak_bytes"] = m["peak_bytes"]
        rec[f"{p}_resident_bytes"] = m["resident_bytes"]
        rec[f"{p}_activation_bytes"] = m["activation_bytes"]
    rec.update(memory_reductions(full, retained))
    return rec


def memory_reductions(full: dict[str, int], retained: dict[str, int]) -> dict[str, float | None]:
    """Relative reductions of the retained phase against the full one: ``1 - retained / full`` for the
    total peak and for the activation memory (peak minus resident).

    ``activation_memory_reduction`` is ``None`` when the full forward's activation memory is not
    positive: at tiny shapes on CPU the forward fits in memory the allocator already holds, so the
    RSS peak does not rise above what was resident and the ratio is undefined (not 0, not infinite).
    """
    act = full["activation_bytes"]
    return {
        "memory_reduction": 1.0 - retained["peak_bytes"] / full["peak_bytes"],
        "activation_memory_reduction": 1.0 - retained["activation_bytes"] / act if act > 0 else None,
    }


def record_fields() -> list[str]:
    """The CSV columns, in order (every record has every one of these keys)."""
    lat = [f"{p}_latency_{s}" for p in ("full", "retained") for s in ("median_s", "iqr_s", "min_s", "max_s")]
    return [
        "backbone", "length", "batch", "ratio", "flops", "schedule", "gate_layers", "kept_tokens", "kept_per_layer",
        "flops_fraction", "reps", "warmup",
        *lat, "full_seq_per_s", "full_tok_per_s", "retained_seq_per_s", "retained_tok_per_s", "speedup",
        "gate_overhead", "gate_time_median_s",
        "full_peak_bytes", "full_resident_bytes", "full_activation_bytes",
        "retained_peak_bytes", "retained_resident_bytes", "retained_activation_bytes",
        "memory_reduction", "activation_memory_reduction",
        "train_dense_step_s", "train_gated_step_s", "train_step_ratio",
    ]


def write_csv(records: list[dict], path: str) -> None:
    """One row per record, columns :func:`record_fields`; lists are written space-separated."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=record_fields())
        w.writeheader()
        for rec in records:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in rec.items()})


def budget_label(rec: dict) -> str:
    """How a record's budget is named: ``rho = ρ``, or ``FLOPs = F`` for a FLOPs budget."""
    return f"FLOPs = {rec['flops']}" if rec.get("flops") is not None else f"rho = {rec['ratio']}"


def plot_records(records: list[dict], path: str, title: str = "") -> None:
    """Speed-up and activation-memory reduction against T, one line per budget (and batch size)."""
    fig = Figure(figsize=(10, 4))  # no pyplot: no backend or global figure state
    ax1, ax2 = fig.subplots(1, 2)
    batches = sorted({r["batch"] for r in records})
    for budget in sorted({budget_label(r) for r in records}):
        for batch in batches:
            rows = sorted((r for r in records if budget_label(r) == budget and r["batch"] == batch), key=lambda r: r["length"])
            label = budget + (f", B = {batch}" if len(batches) > 1 else "")
            xs = [r["length"] for r in rows]
            ax1.plot(xs, [r["speedup"] for r in rows], marker="o", label=label)
            measured = [r for r in rows if r.get("activation_memory_reduction") is not None]
            if measured:
                ax2.plot([r["length"] for r in measured], [100 * r["activation_memory_reduction"] for r in measured],
                         marker="o", label=label)
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set(xlabel="sequence length T", ylabel="speed-up (retained / full throughput)", title="throughput")
    ax2.set(xlabel="sequence length T", ylabel="activation-memory reduction (%)", title="peak memory", ylim=(0, 100))
    lengths = sorted({r["length"] for r in records})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.minorticks_off()
    if not ax2.lines:
        ax2.text(0.5, 0.5, "memory not measured", ha="center", va="center", transform=ax2.transAxes)
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
