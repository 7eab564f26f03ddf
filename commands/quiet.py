"""What the command line silences: library messages that repeat on every run and say nothing about it.

:func:`silence_library_noise` runs once at the start of every command (``commands.cli.main``) and in
every spawned sweep worker. It imports neither Lightning nor torch (so ``--help`` stays fast): a
:mod:`logging` filter attaches to a logger by name before the library creates it, and a
:mod:`warnings` filter matches the warning's text, category and the module it is attributed to.
Each filter is as narrow as one message; every other warning and log line of the libraries still
shows.

- The litlogger tip (Lightning 2.6 logs it at INFO for every ``Trainer`` without a ``LitLogger``): an
  advertisement, dropped.
- The ``LeafSpec`` deprecation (a ``FutureWarning`` torch ≥ 2.10 raises when Lightning's own
  ``lightning/pytorch/utilities/_pytree.py`` builds a ``LeafSpec``): about Lightning's code, nothing a
  user can change, dropped.
- The device banner (``GPU available: …, used: …``, ``TPU available: …``, ``LOCAL_RANK: … -
  CUDA_VISIBLE_DEVICES: …``), which Lightning logs for every ``Trainer``: shown once per process (it
  says whether the run uses the GPU), its repeats dropped (a sweep builds one Trainer per trial).
  ``retention evaluate``, which tests on the CPU with a Trainer per row, shows none.
- The load report of a checkpoint's unused pooler (transformers ≥ 5 logs ``BertModel LOAD REPORT``
  with ``pooler.dense.weight | UNEXPECTED`` each time the packaged MiniLM loads): the backbone is
  built without its pooler on purpose (``retention.backbones.build_backbone``, ``add_pooling_layer=
  False``: the heads read hidden states, never the pooled output, and DDP fails on parameters that
  get no gradient), so the checkpoint's pooler weights are expected to go unused. Dropped only when
  every row of the report is an unexpected ``pooler.*`` key; a report with any other row (a missing
  or mismatched weight, another unused head) still shows whole.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["DEVICE_BANNER", "LITLOGGER_TIP", "LOAD_REPORT_LOGGER", "silence_library_noise"]

# The logger Lightning's rank_zero_info writes to (the tip and the GPU / TPU lines), and the CUDA
# accelerator's own logger (the LOCAL_RANK line).
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
CUDA_LOGGER = "lightning.pytorch.accelerators.cuda"
# The logger transformers' from_pretrained writes its load report to (a WARNING).
LOAD_REPORT_LOGGER = "transformers.modeling_utils"

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
DEVICE_BANNER = ("GPU available: ", "TPU available: ", "LOCAL_RANK: ")
LEAFSPEC_DEPRECATION = "`isinstance(treespec, LeafSpec)` is deprecated"
LOAD_REPORT = " LOAD REPORT"
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # the report is coloured on a terminal


class DropLitLoggerTip(logging.Filter):
    """Drops the record whose message starts with :data:`LITLOGGER_TIP`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LITLOGGER_TIP)


class DeviceBannerOnce(logging.Filter):
    """Passes each line of the device banner (:data:`DEVICE_BANNER`) the first time this process
    logs it, and drops it when it comes again; passes every other record."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(DEVICE_BANNER):
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


class DropUnusedPoolerReport(logging.Filter):
    """Drops a transformers load report (first line ``<Model> LOAD REPORT from: …``, then a
    ``Key | Status`` table, then notes) whose every row is an UNEXPECTED ``pooler.*`` key; passes
    every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = ANSI_STYLE.sub("", record.getMessage()).split("\n\nNotes:", 1)[0].split("\n")
        if len(lines) < 4 or LOAD_REPORT not in lines[0]:
            return True
        rows = [[cell.strip() for cell in line.split("|")] for line in lines[3:]]  # after the header and its rule
        return not all(len(row) > 1 and row[0].startswith("pooler.") and row[1] == "UNEXPECTED" for row in rows)


def _add_once(logger_name: str, kind: type[logging.Filter]) -> None:
    """Attach a ``kind`` filter to the logger unless it has one (main may run more than once in a process)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def silence_library_noise() -> None:
    """Install the filters described in the module docstring (idempotent)."""
    _add_once(RANK_ZERO_LOGGER, DropLitLoggerTip)
    _add_once(RANK_ZERO_LOGGER, DeviceBannerOnce)
    _add_once(CUDA_LOGGER, DeviceBannerOnce)
    _add_once(LOAD_REPORT_LOGGER, DropUnusedPoolerReport)
    # torch's deprecation of LeafSpec, raised from Lightning's _pytree helper (not from our code):
    # only that message, only that category, only when attributed to that Lightning module.
    warnings.filterwarnings("ignore", message=re.escape(LEAFSPEC_DEPRECATION), category=FutureWarning,
                            module=r"lightning\.pytorch\.utilities\._pytree")
