"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``).

A system receives built modules: :func:`build_system` builds the backbone, the encoder around it and
the optimisation settings from a config, then the LightningModule of the data module's ``task``
(``TASK_SYSTEMS``)::

    system = build_system(cfg, dm)

    # or by hand, from modules built elsewhere:
    encoder = RetentionEncoder(backbone, gate_layers=[1], budget=Budget(ratio=0.3))
    system = RetentionClassifier(encoder, optimisation(cfg), num_labels=4, dropout=0.1)
"""

from __future__ import annotations

from .build import TASK_SYSTEMS, build_encoder, build_system, max_positions, optimisation, task_of
from .classification import RetentionClassifier, RetentionMultiLabelClassifier, RetentionMultiQueryClassifier
from .qa import RetentionQA
from .summarization import RetentionSummarizer
from .system import Optimisation, RetentionSystem, lr_factor

__all__ = [
    "RetentionSystem", "RetentionClassifier", "RetentionMultiLabelClassifier", "RetentionMultiQueryClassifier",
    "RetentionQA", "RetentionSummarizer", "Optimisation", "TASK_SYSTEMS", "build_encoder", "build_system",
    "lr_factor", "max_positions", "optimisation", "task_of",
]
