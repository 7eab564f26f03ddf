"""``retention train``: compose and check the config, then train, test and track one run
(:func:`commands.runner.train`), or continue a run with ``--resume``."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from conf.compose import compose
from conf.schema import ConfigError

from .backbone_checks import check_config


def run(args: argparse.Namespace) -> int:
    """A :class:`ConfigError` or :class:`DataError` (exit 2, one line: :func:`commands.cli.main`) comes
    before any work: compose, the backbone and data-file checks (no torch: ``--print-config`` answers
    at once), then, once the runner is imported, the checks that need torch
    (:func:`commands.runner.check_run`: the machine has the accelerator, ``model.init_from`` loads
    safely). ``--resume`` takes the run's own config.yaml instead of composing one. A run killed by
    SIGINT / SIGTERM exits 128 + the signal number (130 / 143) after marking it KILLED."""
    if args.resume and args.config:
        raise ConfigError("--resume takes the run's own config.yaml; --config cannot be given with it")
    cfg = None
    if not args.resume:
        cfg = compose(args.overrides, args.config)
        check_config(cfg)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
    # Lightning, torch and the data modules load only once the config composes.
    from .runner import RunKilled, check_run, default_tracking_uri, resume_target, train

    target = resume_target(args.resume, args.overrides, default_tracking_uri) if args.resume else None
    if target is not None:
        cfg = target.cfg
        check_config(cfg)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
    check_run(cfg)
    try:
        train(cfg, resume=target)
    except RunKilled as err:
        return err.exit_code
    return 0
