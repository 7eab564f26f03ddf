"""What the command line silences (commands/quiet.py): the litlogger tip, the LeafSpec deprecation,
the repeated device banner and the packaged MiniLM's unused-pooler load report, in-process and in what
`retention train`, `sweep` and `evaluate` print."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from transformers import AutoModelForMaskedLM

from commands.quiet import CUDA_LOGGER, LOAD_REPORT_LOGGER, RANK_ZERO_LOGGER, silence_library_noise
from retention.backbones import MINILM, build_backbone, resolve_backbone_path

from .helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
TIP = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://pypi.org/project/litlogger/)"
LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead."


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records():
    """The messages that pass the filters of Lightning's rank-zero logger and its CUDA accelerator's logger."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in (RANK_ZERO_LOGGER, CUDA_LOGGER)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler.messages
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_tip_dropped_banner_once_other_lines_kept(records):
    silence_library_noise()
    silence_library_noise()  # idempotent: one filter of each kind per logger
    rank_zero, cuda = logging.getLogger(RANK_ZERO_LOGGER), logging.getLogger(CUDA_LOGGER)
    assert len(rank_zero.filters) == len({type(f) for f in rank_zero.filters}) == 2
    # a banner line already shown in this process (an earlier test's Trainer) is not shown again
    for f in (*rank_zero.filters, *cuda.filters):
        getattr(f, "seen", set()).clear()
    for _ in range(3):  # three Trainers
        rank_zero.info(TIP + " to enable LitLogger.")
        rank_zero.info("GPU available: True (cuda), used: True")
        rank_zero.info("TPU available: False, using: 0 TPU cores")
        cuda.info("LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]")
        rank_zero.info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    rank_zero.info("GPU available: True (cuda), used: False")  # a different banner: shown
    assert records == [
        "GPU available: True (cuda), used: True", "TPU available: False, using: 0 TPU cores",
        "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]", "`Trainer.fit` stopped: `max_epochs=1` reached.",
        "`Trainer.fit` stopped: `max_epochs=1` reached.", "`Trainer.fit` stopped: `max_epochs=1` reached.",
        "GPU available: True (cuda), used: False",
    ]


@pytest.fixture
def load_reports():
    """The messages that pass the filters of the logger transformers' ``from_pretrained`` reports to."""
    handler = _Records()
    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_packaged_minilm_loads_without_the_unused_pooler_report(load_reports, capfd):
    silence_library_noise()
    build_backbone(MINILM)  # the project's loader: a BertModel without its pooler
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err and load_reports == []
    # a report with any other row still shows, whole: the masked-LM head is missing from the checkpoint
    AutoModelForMaskedLM.from_pretrained(resolve_backbone_path(MINILM))
    (report,) = [m for m in load_reports if "LOAD REPORT" in m]  # (transformers also warns about the tied head)
    assert "BertForMaskedLM LOAD REPORT" in report
    assert "pooler.dense.weight" in report and "cls.predictions" in report and "MISSING" in report


def test_leafspec_deprecation_ignored_only_from_lightnings_pytree():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        warnings.warn_explicit(LEAFSPEC, FutureWarning, "x.py", 20, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(LEAFSPEC, FutureWarning, "x.py", 21, module="commands.runner")
        warnings.warn_explicit("another deprecation", FutureWarning, "x.py", 22, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(LEAFSPEC, UserWarning, "x.py", 23, module="lightning.pytorch.utilities._pytree")
    # only the first is dropped: the same text from another module, or another text or category, shows
    assert [(str(w.message), w.category, w.lineno) for w in caught] == [
        (LEAFSPEC, FutureWarning, 21), ("another deprecation", FutureWarning, 22), (LEAFSPEC, UserWarning, 23)]


def _cli(args: list[str], cwd: Path) -> str:
    """stdout + stderr of ``python -m commands.cli ARGS`` (this tree's modules, one torch thread); asserts exit 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "commands.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_train_sweep_and_evaluate_print_no_tip_no_leafspec_and_the_banner_at_most_once(tmp_path):
    train = _cli(["train", *TINY], tmp_path)
    assert "retained accuracy (top-M, rho = 0.3)" in train  # the summary
    sweep_cfg = tmp_path / "s.json"  # JSON is YAML
    sweep_cfg.write_text(json.dumps({"study": {"name": "q", "seed": 0, "pruner": "none"},
                                     "base": {"overrides": TINY},
                                     "search_space": {"budget.ratio": {"type": "float", "low": 0.2, "high": 0.6}}}))
    sweep = _cli(["sweep", "--config", str(sweep_cfg), "--n-trials", "2"], tmp_path)
    assert "2 trials: 2 complete" in sweep
    evaluate = _cli(["evaluate", "--experiment", "adaptive-retention", "--budgets", "0.3", "0.5",
                     "--methods", "gate", "random", "--throughput-batches", "0"], tmp_path)
    assert evaluate.count("| gate ") + evaluate.count("| random ") == 3 * 2 * 2  # 3 runs x 2 methods x 2 budgets
    for out in (train, sweep, evaluate):
        assert "litlogger" not in out and "LeafSpec" not in out
    for out in (train, sweep):  # one Trainer in train, two in the sweep: the banner once
        assert out.count("GPU available: ") == out.count("TPU available: ") == 1
    assert "GPU available" not in evaluate and "TPU available" not in evaluate  # 12 CPU Trainers: none
