"""``retention train``: compose and check the config, then train, test and track one run
(:func:`commands.runner.train`)."""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from conf.compose import compose
from conf.schema import ConfigError

from .cli import EXIT_CONFIG_ERROR


def run(args: argparse.Namespace) -> int:
    try:
        cfg = compose(args.overrides, args.config)
    except ConfigError as err:
        print(f"retention: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    # Lightning, torch and the data modules load only once the config composes.
    from .runner import check_config, train

    try:
        check_config(cfg)
    except ConfigError as err:
        print(f"retention: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    train(cfg)
    return 0
