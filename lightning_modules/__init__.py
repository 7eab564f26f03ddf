"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``).

``TASK_SYSTEMS`` maps a data module's ``task`` to the LightningModule that trains it, and
:func:`build_system` builds that system for a config and a data module."""

from __future__ import annotations

from conf.schema import ConfigError

from .classification import RetentionClassifier, RetentionMultiLabelClassifier, RetentionMultiQueryClassifier
from .qa import RetentionQA
from .summarization import RetentionSummarizer
from .system import RetentionSystem

# data module's ``task`` attribute -> the LightningModule class that trains it
TASK_SYSTEMS: dict[str, type[RetentionSystem]] = {
    "classification": RetentionClassifier,
    "multilabel": RetentionMultiLabelClassifier,
    "multiquery": RetentionMultiQueryClassifier,
    "qa": RetentionQA,
    "summarization": RetentionSummarizer,
}


def build_system(cfg, dm) -> RetentionSystem:
    """The task's LightningModule for ``cfg``: ``TASK_SYSTEMS[dm.task]`` (default ``classification``)."""
    task = getattr(dm, "task", "classification")
    if task not in TASK_SYSTEMS:
        raise ConfigError(f"data.name={cfg.data.name!r} declares task {task!r}; known tasks: {', '.join(sorted(TASK_SYSTEMS))}")
    return TASK_SYSTEMS[task].from_config(cfg, dm)


__all__ = [
    "RetentionSystem", "RetentionClassifier", "RetentionMultiLabelClassifier", "RetentionMultiQueryClassifier",
    "RetentionQA", "RetentionSummarizer", "TASK_SYSTEMS", "build_system",
]
