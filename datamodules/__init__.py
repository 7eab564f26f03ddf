"""Lightning DataModules for the Adaptive Retention benchmarks."""

from .needle import NeedleDataModule, NeedleSpec, generate_needle

DATAMODULES = {"needle": NeedleDataModule}

__all__ = ["DATAMODULES", "NeedleDataModule", "NeedleSpec", "generate_needle"]
