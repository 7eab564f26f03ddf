"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``)."""

from .classification import RetentionClassifier, RetentionMultiLabelClassifier, RetentionMultiQueryClassifier
from .system import RetentionSystem

# data module's ``task`` attribute -> the LightningModule class that trains it (``from_config``).
TASK_SYSTEMS = {
    "classification": RetentionClassifier,
    "multilabel": RetentionMultiLabelClassifier,
    "multiquery": RetentionMultiQueryClassifier,
}

__all__ = ["RetentionClassifier", "RetentionMultiLabelClassifier", "RetentionMultiQueryClassifier", "RetentionSystem", "TASK_SYSTEMS"]
