"""``retention train``: compose and check the config, then train, test and track one run
(:func:`commands.runner.train`)."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from conf.compose import compose


def run(args: argparse.Namespace) -> int:
    """A :class:`ConfigError` (exit 2, one line: :func:`commands.cli.main`) comes before any work."""
    cfg = compose(args.overrides, args.config)
    # Lightning, torch and the data modules load only once the config composes.
    from .runner import check_config, train

    check_config(cfg)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    train(cfg)
    return 0
