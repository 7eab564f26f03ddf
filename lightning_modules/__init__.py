"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``).

The systems are imported on first use (PEP 562 ``__getattr__``): the ``retention`` command builds
its parser from the subcommand modules of this package, and a config error or ``--help`` should not
wait for Lightning, torchmetrics and transformers to load."""

from __future__ import annotations

import importlib

# exported name -> the module that defines it
_EXPORTS = {
    "RetentionSystem": ".system",
    "RetentionClassifier": ".classification",
    "RetentionMultiLabelClassifier": ".classification",
    "RetentionMultiQueryClassifier": ".classification",
    "RetentionQA": ".qa",
    "RetentionSummarizer": ".summarization",
}

# data module's ``task`` attribute -> the LightningModule class that trains it (``from_config``).
_TASKS = {
    "classification": "RetentionClassifier",
    "multilabel": "RetentionMultiLabelClassifier",
    "multiquery": "RetentionMultiQueryClassifier",
    "qa": "RetentionQA",
    "summarization": "RetentionSummarizer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name == "TASK_SYSTEMS":
        value = {task: __getattr__(cls) for task, cls in _TASKS.items()}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [*_EXPORTS, "TASK_SYSTEMS"]
