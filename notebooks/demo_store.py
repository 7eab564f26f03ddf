"""A small, real MLflow store and Optuna study for the notebooks and their tests.

    python -m notebooks.demo_store ROOT      # builds it and prints the StoreInfo

:func:`build` trains tiny runs in this process through the same code as ``retention train``
(:func:`commands.runner.train`), ``retention sweep`` and ``retention evaluate`` (through
:func:`commands.cli.main`), so every metric, tag and artifact is what the real commands log:

* experiment :data:`ABLATIONS` (the needle task, T = 16, a 2-layer BERT with hidden size 32, gates
  entering layers 0 and 1, 64 steps): our gate and the random baseline at ρ = 0.3 and 0.5, and the
  ``fixed_lambda`` ablation at ρ = 0.3, each with seeds 0 and 1 (10 runs); then, as for
  docs/results.md, ``retention evaluate`` of the runs trained at ρ = 0.3 at ρ = 0.3 and 0.5
  (selections ``gate`` and ``random``, one throughput batch), whose ``evaluation/evaluation.csv``
  is logged to every evaluated run;
* a 2-trial ``retention sweep`` (study :data:`STUDY`, two objectives: the hard validation metric up,
  the achieved retention down; β, ρ and η searched) with its Optuna SQLite storage under ``root`` and
  its MLflow parent run in experiment :data:`SWEEP_EXPERIMENT`;
* a needle checkpoint (the gate run at ρ = 0.3, seed 0, of the ablation experiment) and a
  bring-your-own-data text classifier (experiment :data:`BYO_EXPERIMENT`): a tiny random-init BERT
  with the packaged MiniLM tokenizer (so its tokens are English words) trained on ``byo.jsonl``,
  short reviews written by :func:`write_byo` in the BYO schema (``text``, ``label``).

Every path lives under ``root``: ``mlflow.db`` (tracking), ``mlartifacts/`` (artifacts),
``optuna.db``, ``checkpoints/``, ``evaluation/``, ``byo.jsonl``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import torch
from mlflow.tracking import MlflowClient

from commands import cli
from commands.quiet import silence_library_noise
from commands.runner import train
from commands.sweep_study import PARENT_ATTR
from conf.compose import compose

__all__ = ["ABLATIONS", "BYO_EXPERIMENT", "STUDY", "SWEEP_EXPERIMENT", "StoreInfo", "build", "write_byo"]

ABLATIONS = "demo-ablations"
SWEEP_EXPERIMENT = "demo-sweep"
BYO_EXPERIMENT = "demo-byo"
STUDY = "demo-pareto"
RATIOS = (0.3, 0.5)
SEEDS = (0, 1)

# The needle task at T = 16 with two gated layers: seconds per run on one CPU thread.
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=32",
    "gate.layers=[0,1]", "data.seq_len=16", "data.vocab_size=40", "data.train_size=512", "data.val_size=64",
    "data.test_size=64", "data.batch_size=32", "data.eval_batch_size=64", "optim.lr=5e-3", "optim.gate_lr=0.02",
    "optim.dual_lr=0.2", "optim.scheduler=constant",
    "optim.warmup_steps=0", "budget.dense_steps=32", "budget.warmup_steps=16", "trainer.max_epochs=4",
    "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1",
]
VARIANTS = (  # (overrides, ratios): our gate, a baseline, an ablation
    (["method=gate"], RATIOS),
    (["method=random"], RATIOS),
    (["ablation=fixed_lambda", "optim.dual_lr=0.0"], (0.3,)),  # TINY's dual_lr would win over the group's 0
)
BYO_OVERRIDES = [
    "data=byo", "model=tiny", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
    "model.intermediate_size=64", "gate.layers=[1]", "data.seq_len=32", "data.batch_size=16",
    "data.eval_batch_size=32", "optim.lr=2e-3", "optim.warmup_steps=0", "budget.dense_steps=8",
    "budget.warmup_steps=8", "budget.ratio=0.5", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu", "trainer.log_every_n_steps=1",
]


@dataclass
class StoreInfo:
    """Every id, name and URI the notebooks take as parameters."""

    root: str
    tracking_uri: str
    experiment: str  # the ablation experiment
    run_ids: list[str]  # its training runs, in the order trained
    dynamics_run_ids: list[str]  # gate vs fixed_lambda, same ρ and seed: the Lagrangian against a fixed penalty
    sweep_experiment: str
    study: str
    storage: str  # the Optuna storage URL
    sweep_parent_run_id: str
    needle_run_id: str
    needle_checkpoint: str
    byo_experiment: str
    byo_run_id: str
    byo_checkpoint: str
    byo_data: str  # the JSONL file the BYO run trained on
    seconds: dict[str, float] = field(default_factory=dict)  # build time per stage

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


POSITIVE = ("wonderful", "brilliant", "charming", "delightful", "superb", "moving", "gripping", "excellent")
NEGATIVE = ("boring", "dreadful", "clumsy", "tedious", "awful", "shallow", "predictable", "terrible")
NEUTRAL = ("the", "film", "story", "actors", "plot", "music", "ending", "was", "and", "really", "quite",
           "a", "with", "camera", "scenes", "director", "script", "but", "overall", "it", "felt", "of", "every")


def write_byo(path: Path, n: int = 384, seed: int = 0) -> Path:
    """``n`` short movie reviews as JSONL in the BYO schema (``{"text": ..., "label": "positive"|"negative"}``):
    ordinary English filler words with one or two sentiment words that decide the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(10, 22))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append({"text": " ".join(words).capitalize() + ".", "label": "positive" if label else "negative"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(overrides: list[str]) -> str:
    """One run through :func:`commands.runner.train`; returns its MLflow run id."""
    return train(compose(overrides), print_summary=False)["run_id"]


def _sweep_config(root: Path, uri: str, common: list[str]) -> Path:
    cfg = {
        "study": {"name": STUDY, "storage": f"sqlite:///{root / 'optuna.db'}", "objectives": ["metric", "retention"],
                  "sampler": "auto", "pruner": "none", "n_trials": 2, "seed": 0},
        "base": {"overrides": [*TINY, *common, f"logging.experiment={SWEEP_EXPERIMENT}", "logging.save_checkpoints=false"]},
        "search_space": {
            "gate.beta": {"type": "float", "low": 0.1, "high": 2.0, "log": True},
            "budget.ratio": {"type": "float", "low": 0.1, "high": 0.6},
            "optim.dual_lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        },
    }
    path = root / "sweep.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def build(root: Path, threads: int | None = 1) -> StoreInfo:
    """Build the demo store under ``root`` (created; must not hold a previous store). ``threads``:
    torch threads while building (restored after; None leaves them)."""
    silence_library_noise()  # as `retention train` does: no litlogger tip, one device banner
    root = Path(root).resolve()
    if (root / "mlflow.db").exists():
        raise FileExistsError(f"{root / 'mlflow.db'} exists: build the demo store into an empty folder")
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    # An experiment's artifacts go under root, not the working directory.
    client = MlflowClient(uri)
    for name in (ABLATIONS, SWEEP_EXPERIMENT, BYO_EXPERIMENT):
        client.create_experiment(name, artifact_location=(root / "mlartifacts" / name).as_uri())
    common = [f"logging.tracking_uri={uri}", f"logging.checkpoint_dir={root / 'checkpoints'}"]
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        runs: dict[tuple[str, float, int], str] = {}
        for seed in SEEDS:
            for variant, ratios in VARIANTS:
                for rho in ratios:
                    runs[(variant[0], rho, seed)] = _train([*TINY, *common, *variant, f"budget.ratio={rho}", f"seed={seed}",
                                                            f"data.seed={seed}", f"logging.experiment={ABLATIONS}"])
        seconds["ablation runs"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        evaluated = [run for (variant, rho, seed), run in runs.items() if rho == RATIOS[0]]
        code = cli.main(["evaluate", "--run-id", *evaluated, "--tracking-uri", uri, "--budgets", *map(str, RATIOS),
                         "--methods", "gate", "random", "--throughput-batches", "1", "--out", str(root / "evaluation")])
        if code != 0:
            raise RuntimeError(f"retention evaluate exited with {code}")
        seconds["evaluate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        code = cli.main(["sweep", "--config", str(_sweep_config(root, uri, common))])
        if code != 0:
            raise RuntimeError(f"retention sweep exited with {code}")
        seconds["sweep"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        byo_data = write_byo(root / "byo.jsonl")
        byo_run = _train([*BYO_OVERRIDES, *common, f"data.data_files={byo_data}", f"logging.experiment={BYO_EXPERIMENT}"])
        seconds["byo run"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)

    storage = f"sqlite:///{root / 'optuna.db'}"
    parent = optuna.load_study(study_name=STUDY, storage=storage).user_attrs[PARENT_ATTR]
    needle_run = runs[("method=gate", 0.3, 0)]
    return StoreInfo(
        root=str(root), tracking_uri=uri, experiment=ABLATIONS, run_ids=list(runs.values()),
        dynamics_run_ids=[needle_run, runs[("ablation=fixed_lambda", 0.3, 0)]],
        sweep_experiment=SWEEP_EXPERIMENT, study=STUDY, storage=storage,
        sweep_parent_run_id=parent,
        needle_run_id=needle_run, needle_checkpoint=client.get_run(needle_run).data.tags["checkpoint_path"],
        byo_experiment=BYO_EXPERIMENT, byo_run_id=byo_run, byo_checkpoint=client.get_run(byo_run).data.tags["checkpoint_path"],
        byo_data=str(byo_data), seconds={k: round(v, 1) for k, v in seconds.items()},
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    info = build(Path(sys.argv[1]))
    print(info.to_json())
