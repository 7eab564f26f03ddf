"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``)."""

from .classification import RetentionClassifier, RetentionMultiLabelClassifier, RetentionMultiQueryClassifier
from .qa import RetentionQA
from .summarization import RetentionSummarizer
from .system import RetentionSystem

# data module's ``task`` attribute -> the LightningModule class that trains it (``from_config``).
TASK_SYSTEMS = {
    "classification": RetentionClassifier,
    "multilabel": RetentionMultiLabelClassifier,
    "multiquery": RetentionMultiQueryClassifier,
    "qa": RetentionQA,
    "summarization": RetentionSummarizer,
}

__all__ = ["RetentionClassifier", "RetentionMultiLabelClassifier", "RetentionMultiQueryClassifier", "RetentionQA",
           "RetentionSummarizer", "RetentionSystem", "TASK_SYSTEMS"]
