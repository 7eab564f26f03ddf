"""``retention train``: compose and check the config, then train, test and track one run
(:func:`commands.runner.train`)."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from conf.compose import compose

from .backbone_checks import check_config


def run(args: argparse.Namespace) -> int:
    """A :class:`ConfigError` or :class:`DataError` (exit 2, one line: :func:`commands.cli.main`) comes
    before any work: compose, the backbone and data-file checks (no torch: ``--print-config`` answers
    at once), then, once the runner is imported, the checks that need torch (:func:`commands.runner.check_run`:
    the machine has the accelerator, ``model.init_from`` loads safely)."""
    cfg = compose(args.overrides, args.config)
    check_config(cfg)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    # Lightning, torch and the data modules load only once the config composes.
    from .runner import check_run, train

    check_run(cfg)
    train(cfg)
    return 0
