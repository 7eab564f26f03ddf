"""Lightning systems that train Adaptive Retention (the method itself lives in ``retention``)."""

from .classification import RetentionClassifier
from .system import RetentionSystem

__all__ = ["RetentionClassifier", "RetentionSystem"]
