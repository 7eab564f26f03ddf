"""Subclass DataModules that add keyword options to :class:`~datamodules.hf.HFDataModule` and pass the
rest on with ``**kwargs``: :func:`extends_signature` gives their ``__init__`` the combined signature, so
``HFDataModule.from_config`` and the check that every ``data.*`` key is read see every option.

Such an ``__init__`` calls ``HFDataModule.__init__(self, ...)`` rather than ``super().__init__``: a
frame without the ``__class__`` cell is skipped by Lightning's ``save_hyperparameters`` (which reads
the frame's locals by the class's signature), so the base's own frame records the hyperparameters."""

from __future__ import annotations

import inspect

__all__ = ["extends_signature"]


def extends_signature(cls):
    """Class decorator: ``cls.__init__``'s signature = its base's parameters + its own keyword-only ones."""
    base = inspect.signature(cls.__mro__[1].__init__)
    own = inspect.signature(cls.__init__)
    params = [p for p in base.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [p for p in own.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    cls.__init__.__signature__ = base.replace(parameters=params)
    return cls
