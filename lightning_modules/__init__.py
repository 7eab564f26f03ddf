"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``)."""

from .classification import RetentionClassifier
from .system import RetentionSystem

# data module's ``task`` attribute -> the LightningModule class that trains it (``from_config``).
TASK_SYSTEMS = {"classification": RetentionClassifier}

__all__ = ["RetentionClassifier", "RetentionSystem", "TASK_SYSTEMS"]
