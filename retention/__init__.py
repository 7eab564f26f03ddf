"""Adaptive Retention (Rafiuddin & Khan, EMNLP 2025 Findings, arXiv 2510.08798): learned per-token
Hard-Concrete gates under an exact token budget.

Framework-free (plain torch + transformers); the Lightning system lives in ``lightning_modules``.
This package imports nothing itself (``retention.methods`` is read by the config schema without
torch); import from the modules. Where each equation of the method lives:

* Hard-Concrete sample, P(z > 0), deterministic gate; the ablations' relaxations — :mod:`retention.hard_concrete`
* scorer s_t = vᵀ tanh(W h_t + U c_t) + b and its contexts (Eq. 3, the running average) — :mod:`retention.gate`
* M = ⌈ρ·T_valid⌉, expected retention ĝ, Lagrangian Σ λ(ĝ − ρ), schedules — :mod:`retention.budget`
* exact top-M selection, gather / scatter (drop-and-restore) — :mod:`retention.selection`
* FLOPs of a layer, a gate and the retained forward; the integer M_ℓ of a FLOPs budget — :mod:`retention.flops`
* ranking distillation (ToP): the teacher's attention received, the listwise KL — :mod:`retention.distill`
* soft gating and physical removal on a stock HF encoder — :mod:`retention.encoder`
* the run's ``Method`` (gate, heuristic selectors, LTP, sparse comparators) — :mod:`retention.methods`
* heuristic selectors and LTP behind the same budget — :mod:`retention.baselines`
* Longformer / BigBird at a comparable attention budget — :mod:`retention.sparse`
"""
