"""``retention train``: compose and check the config, then train, test and track one run
(:func:`commands.runner.train`); ``--resume RUN_ID|PATH`` continues a run from its ``last.ckpt``."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from conf.compose import compose
from conf.schema import ConfigError


def run(args: argparse.Namespace) -> int:
    """A :class:`ConfigError` (exit 2, one line: :func:`commands.cli.main`) comes before any work.
    A run killed by SIGINT / SIGTERM exits 128 + the signal number (130 / 143) after marking it KILLED."""
    if args.resume and args.config:
        raise ConfigError("--resume takes the run's own config.yaml; --config cannot be given with it")
    cfg = compose(args.overrides, args.config) if not args.resume else None
    # Lightning, torch and the data modules load only once the config composes.
    from .runner import RunKilled, check_config, default_tracking_uri, resume_target, train

    target = resume_target(args.resume, args.overrides, default_tracking_uri) if args.resume else None
    cfg = target.cfg if target is not None else cfg
    check_config(cfg)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        train(cfg, resume=target)
    except RunKilled as err:
        return err.exit_code
    return 0
