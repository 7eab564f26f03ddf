"""Loading a checkpoint a user names (``model.init_from``, ``retention evaluate --checkpoint``) without
running code from it.

``torch.load(weights_only=False)`` unpickles anything: a checkpoint file from elsewhere could run
arbitrary code when it is loaded. :func:`load_checkpoint` loads with ``weights_only=True`` (tensors,
dicts, lists, numbers, strings), allowlisting only :data:`SAFE_GLOBALS` for the duration of the load
(``torch.serialization.safe_globals``). What ``retention train`` writes needs no allowlisted class:
the system's and data module's hyperparameters are plain values (choices as strings), and
Lightning's own entries (``state_dict``, ``optimizer_states``, ``lr_schedulers``, ``loops``,
``callbacks``) are tensors and plain containers; tests/test_checkpoints.py checks real checkpoints of
every method with ``torch.serialization.get_unsafe_globals_in_checkpoint``. A checkpoint that holds
anything else is refused with a one-line :class:`CheckpointError` (exit code 2 on the command line)
naming the file and the first class or function it would have loaded.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from conf.checks import ConfigError

__all__ = ["SAFE_GLOBALS", "CheckpointError", "load_checkpoint"]

SAFE_GLOBALS: tuple = ()  # classes / functions our checkpoints hold beyond what weights_only allows: none


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, unreadable, or holds what ``weights_only`` loading refuses."""


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint dict of ``path``, loaded on the CPU with ``weights_only=True``; ``what`` names the
    option the path came from in the error message (``model.init_from``, ``--checkpoint``)."""
    if not Path(path).is_file():
        raise CheckpointError(f"{what}={str(path)!r}: no such file")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
        held = found.group(1) if found else "a class or function"
        raise CheckpointError(
            f"{what}={str(path)!r}: refused to load: it holds {held}, which is not a tensor or plain value "
            f"(weights_only loading); a checkpoint of `retention train` holds none, so this file was "
            f"written elsewhere and could run code when unpickled"
        ) from None
    except Exception as err:  # not a torch file, truncated, unreadable (torch raises several kinds)
        raise CheckpointError(f"{what}={str(path)!r}: cannot be read as a checkpoint: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{what}={str(path)!r}: not a Lightning checkpoint (no state_dict)")
    return ckpt
