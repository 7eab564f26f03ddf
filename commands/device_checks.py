"""Whether the machine has the configured ``trainer.accelerator``: Lightning's own availability test
(``Accelerator.is_available()`` of the registered accelerators), run when a training starts, before
any MLflow run is created, so that ``trainer.accelerator=gpu`` on a machine without a GPU is a one-line
config error instead of a Lightning traceback. (``--print-config`` does not run it: the config may
be printed on a machine other than the one that will run it.)"""

from __future__ import annotations

from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator
from omegaconf import DictConfig

from conf.checks import ConfigError

__all__ = ["available_accelerators", "check_devices"]


def available_accelerators() -> list[str]:
    """The registered accelerators this machine has (``cpu`` always)."""
    return sorted(n for n in AcceleratorRegistry.available_accelerators() if AcceleratorRegistry[n]["accelerator"].is_available())


def check_devices(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` when ``trainer.accelerator`` names one this machine has not
    (``gpu``: CUDA or MPS, as Lightning reads it; ``auto`` and ``cpu`` always run)."""
    name = cfg.trainer.accelerator
    if name in ("auto", "cpu"):
        return
    if name == "gpu":
        ok = CUDAAccelerator.is_available() or MPSAccelerator.is_available()
    else:
        ok = AcceleratorRegistry[name]["accelerator"].is_available()
    if not ok:
        raise ConfigError(f"trainer.accelerator={name!r}: this machine has no {name} (Lightning finds none); "
                          f"available here: auto, {', '.join(available_accelerators())}")
