"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``)."""

from .classification import RetentionClassifier, RetentionMultiLabelClassifier
from .system import RetentionSystem

# data module's ``task`` attribute -> the LightningModule class that trains it (``from_config``).
TASK_SYSTEMS = {"classification": RetentionClassifier, "multilabel": RetentionMultiLabelClassifier}

__all__ = ["RetentionClassifier", "RetentionMultiLabelClassifier", "RetentionSystem", "TASK_SYSTEMS"]
