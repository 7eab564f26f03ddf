"""The sweep config of ``retention sweep``: composition, the trial configs, Optuna's distributions,
sampler and pruner, and every check that runs before a trial starts (schema: :mod:`conf.sweep_schema`).

``key=value`` overrides whose first part is ``study``, ``base`` or ``search_space`` change the sweep
config; any other (``trainer.max_epochs=1``, ``model=minilm``) is appended to ``base.overrides`` and so
changes the config every trial trains.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import optuna
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from commands.runner import check_config
from conf import CONF_DIR
from conf.compose import compose, merge
from conf.schema import ConfigError
from conf.sweep_schema import OBJECTIVES, SECTIONS, SweepConfig

__all__ = ["SAMPLERS", "PRUNERS", "compose_sweep", "compose_trial", "build_distributions", "make_sampler",
           "make_pruner", "check_sweep", "check_one_process", "processes"]

SAMPLERS = ("auto", "tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")


def compose_sweep(config: str | None, overrides: Sequence[str] = ()):
    """The sweep config: schema ← ``config`` (a path, or the name of a ``conf/sweep/`` file; default
    ``conf/sweep/default.yaml``) ← overrides of sweep sections; other overrides go to ``base.overrides``."""
    path = Path(config) if config else CONF_DIR / "sweep" / "default.yaml"
    if not path.is_file() and config and (CONF_DIR / "sweep" / f"{config}.yaml").is_file():
        path = CONF_DIR / "sweep" / f"{config}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
        raise ConfigError(f"--config {config!r}: no such file (packaged sweep configs: {names})")
    scfg = merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path), str(path))
    sweep_items, train_items = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        (sweep_items if item.split("=", 1)[0].split(".")[0] in SECTIONS else train_items).append(item)
    try:
        cli = OmegaConf.from_dotlist(sweep_items)
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    scfg = merge(scfg, cli, "override")
    scfg.base.overrides = [*scfg.base.overrides, *train_items]
    return scfg


def _override(key: str, value: Any) -> str:
    """``key=value`` in the dot-list syntax ``compose`` takes (strings stay bare: group options)."""
    return f"{key}={value}" if isinstance(value, str) else f"{key}={json.dumps(value)}"


def compose_trial(scfg, params: dict[str, Any]):
    """The train config of one trial: the base config with the sampled ``params`` applied last."""
    return compose([*scfg.base.overrides, *(_override(k, v) for k, v in params.items())], scfg.base.config)


def build_distributions(scfg) -> dict[str, Any]:
    """Optuna distributions of ``search_space``; a malformed entry raises :class:`ConfigError` naming it."""
    out = {}
    for key, spec in scfg.search_space.items():
        where = f"search_space.{key}"
        try:
            if spec.type == "categorical":
                if not spec.choices or spec.low is not None or spec.high is not None:
                    raise ValueError("a categorical entry needs a non-empty `choices` list and no low/high")
                choices = list(spec.choices)
                if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                    raise ValueError(f"choices must be null, bool, int, float or str (Optuna stores them), got {choices}")
                out[key] = CategoricalDistribution(choices)
                continue
            if spec.type not in ("float", "int"):
                raise ValueError(f"type={spec.type!r}; allowed: float, int, categorical")
            if spec.low is None or spec.high is None or spec.choices is not None:
                raise ValueError(f"a {spec.type} entry needs `low` and `high` (and no choices)")
            if spec.type == "float":
                out[key] = FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
            else:
                bounds = (spec.low, spec.high, spec.step if spec.step is not None else 1)
                if any(float(b) != int(b) for b in bounds):
                    raise ValueError(f"an int entry needs integer low/high/step, got {bounds}")
                out[key] = IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(bounds[2]))
        except ValueError as err:
            raise ConfigError(f"{where}: invalid distribution: {err}") from None
    if not out:
        raise ConfigError("search_space is empty; declare at least one `<config key>: {type, low, high}` entry")
    return out


def _edge_values(dist) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def _contains(dist, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist``: one of the choices, or inside [low, high] on the step grid."""
    if isinstance(dist, CategoricalDistribution):
        try:
            dist.to_internal_repr(value)
        except ValueError:
            return False
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not dist.low <= value <= dist.high:
        return False
    if isinstance(dist, IntDistribution) and value != int(value):
        return False
    if dist.step is None:
        return True
    k = (value - dist.low) / dist.step
    return math.isclose(k, round(k), abs_tol=1e-8)


def make_sampler(study, seed: int | None, multi: bool):
    """``study.sampler`` (``auto``: TPE for one objective, NSGA-II for two) seeded with ``seed``."""
    name = study.sampler
    if name == "auto":
        name = "nsga2" if multi else "tpe"
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(study):
    """``study.pruner`` with ``study.pruner_args`` as its keyword arguments."""
    if study.pruner == "none":
        return optuna.pruners.NopPruner()
    cls = optuna.pruners.MedianPruner if study.pruner == "median" else optuna.pruners.HyperbandPruner
    return cls(**dict(study.pruner_args))


def processes(trainer) -> int:
    """How many processes Lightning starts for the ``trainer`` config on this machine:
    ``num_nodes`` × the devices that ``accelerator`` and ``devices`` select (Lightning's own parsing;
    ``auto`` picks CUDA, then MPS, then the CPU, and ``devices=auto`` every device of it)."""
    name = trainer.accelerator
    if name in ("auto", "gpu"):
        name = ("cuda" if CUDAAccelerator.is_available() else "mps" if MPSAccelerator.is_available()
                else "cpu" if name == "auto" else "cuda")
    accelerator = AcceleratorRegistry[name]["accelerator"]
    try:
        devices = accelerator.auto_device_count() if trainer.devices == "auto" else accelerator.parse_devices(trainer.devices)
        count = len(accelerator.get_parallel_devices(devices))
    except Exception as err:  # Lightning's MisconfigurationException or ValueError, with its reason
        raise ConfigError(f"trainer.devices={trainer.devices!r}: {err}") from None
    return trainer.num_nodes * count


def check_one_process(cfg) -> None:
    """A sweep trial trains in its worker's process. Raises :class:`ConfigError` for a trial config
    that would start several (``trainer.devices`` or ``trainer.num_nodes`` above 1, whatever the
    DDP strategy): the trial's validation recorder and Optuna's pruning callback report from the worker's
    process, and the processes DDP adds would train without them (``ddp_spawn``) or start the whole
    sweep again (``ddp``). Parallel trials come from ``study.workers`` instead."""
    n = processes(cfg.trainer)
    if n > 1:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices!r}, trainer.num_nodes={cfg.trainer.num_nodes} start "
                          f"{n} processes; a sweep trial trains in one process (set trainer.devices=1; run trials in "
                          "parallel with study.workers=N)")


def check_sweep(scfg) -> dict[str, Any]:
    """Every check that can fail before a trial starts; returns the distributions.

    A searched key must exist in the train config and both ends of its range (every choice) must
    pass the train config's checks and train in one process (:func:`check_one_process`); objectives,
    sampler, pruner (with its arguments), enqueued trials and the trial budget are checked too.
    Raises :class:`ConfigError` naming the entry."""
    s = scfg.study
    base = compose(scfg.base.overrides, scfg.base.config)
    check_config(base)
    check_one_process(base)
    dists = build_distributions(scfg)
    for key, dist in dists.items():
        for value in _edge_values(dist):
            try:
                trial = compose_trial(scfg, {key: value})
                check_config(trial)
                check_one_process(trial)
            except ConfigError as err:
                raise ConfigError(f"search_space.{key} (value {value!r}): {err}") from None
    bad = [o for o in s.objectives if o not in OBJECTIVES]
    if bad or not s.objectives or len(set(s.objectives)) != len(s.objectives):
        raise ConfigError(f"study.objectives={list(s.objectives)}; allowed: [metric] or [metric, retention] (names from {', '.join(OBJECTIVES)})")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler={s.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if s.pruner not in PRUNERS:
        raise ConfigError(f"study.pruner={s.pruner!r}; allowed: {', '.join(PRUNERS)}")
    if s.pruner != "none" and len(s.objectives) > 1:
        raise ConfigError(f"study.pruner={s.pruner!r}: Optuna prunes single-objective studies only; set study.pruner=none")
    try:
        make_pruner(s)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"study.pruner_args={dict(s.pruner_args)}: {err}") from None
    for name, value, ok, allowed in (
        ("study.n_trials", s.n_trials, s.n_trials is None or s.n_trials >= 0, ">= 0 or null"),
        ("study.timeout", s.timeout, s.timeout is None or s.timeout > 0, "> 0 or null"),
        ("study.workers", s.workers, s.workers >= 1, ">= 1"),
        ("study.heartbeat_interval", s.heartbeat_interval, s.heartbeat_interval >= 1, ">= 1"),
        ("study.grace_period", s.grace_period, s.grace_period is None or s.grace_period > s.heartbeat_interval,
         "> study.heartbeat_interval or null"),
        ("study.max_retry", s.max_retry, s.max_retry >= 0, ">= 0"),
    ):
        if not ok:
            raise ConfigError(f"{name}={value!r} is out of range; allowed: {allowed}")
    for i, params in enumerate(s.enqueue):
        for key, value in params.items():
            if key not in dists:
                raise ConfigError(f"study.enqueue[{i}]: {key!r} is not in search_space")
            if not _contains(dists[key], value):
                raise ConfigError(f"study.enqueue[{i}]: {key}={value!r} is outside search_space.{key}")
    return dists
