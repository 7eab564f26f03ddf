"""End to end through the `retention` CLI: bad configs exit 2 before any work; a tiny run is tracked in MLflow."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from commands import cli, runner

from .helpers import TINY

ROOT = Path(__file__).resolve().parents[1]

BAD = [
    ("budget.ratio=0", "budget.ratio", "(0, 1]"),
    ("budget.ratio=1.5", "budget.ratio", "(0, 1]"),
    ("gate.beta=0", "gate.beta", "> 0"),
    ("gate.beta=-1", "gate.beta", "> 0"),
    ("gate.gamma=0", "gate.gamma", "< 0"),
    ("gate.zeta=1.0", "gate.zeta", "> 1"),
    ("optim.lr=-0.001", "optim.lr", ">= 0"),
    ("optim.gate_lr=-1", "optim.gate_lr", ">= 0"),
    ("optim.dual_lr=-0.01", "optim.dual_lr", ">= 0"),
    ("budget.init_lambda2=-1", "budget.init_lambda2", ">= 0"),
    ("optim.dual_step=newton", "optim.dual_step", "adam, sgd"),
    ("gate.layers=[3]", "gate.layers", "0..1"),  # the main job's model has 2 layers
    ("gate.layers=[-1]", "gate.layers", "0..1"),
    ("budget.ratio=abc", "budget.ratio", "Float"),
    ("budget.ratoi=0.3", "ratoi", "Did you mean"),
    ("model=nonexistent", "model", "minilm"),
    ("data.name=imagenet", "data.name", "needle"),
    ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches", "(0, 1]"),
    ("trainer.limit_val_batches=-1", "trainer.limit_val_batches", "int >= 0"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval", "int >= 1"),
    ("trainer.limit_test_batches=abc", "trainer.limit_test_batches", "float in (0, 1]"),
    ("gate.context=max", "gate.context", "mean, running, none"),
    ("gate.relaxation=gumbel", "gate.relaxation", "hard_concrete, sigmoid, straight_through"),
    ("budget.schedule=cubic", "budget.schedule", "constant, linear"),
    ("budget.inference=sample", "budget.inference", "top_m, threshold"),
    ("optim.scheduler=step", "optim.scheduler", "linear, cosine, constant"),
    ("model.attn_implementation=flash", "model.attn_implementation", "sdpa, eager"),
    ("model.arch=gpt2", "model.arch", "xlm-roberta"),
    ("optim.betas=[0.9]", "optim.betas", "two values in [0, 1)"),
    ("data.min_seq_len=600", "data.min_seq_len", "<= data.seq_len (512)"),
    ("data.num_pairs=3", "data.num_pairs", "data module 'needle'"),
    ("trainer.precision=bogus", "trainer.precision", "32-true, 64-true"),
    ("trainer.strategy=bogus", "trainer.strategy", "ddp, ddp_spawn"),
    ("trainer.accelerator=bogus", "trainer.accelerator", "auto, cpu, cuda, gpu, mps, tpu"),
    ("model.backbone=no-such-org/no-such-model", "model.backbone", "hf download no-such-org/no-such-model"),
    ("model.backbone=./no/such/folder", "model.backbone", "no such folder"),
    ("budget.dense_fraction=1.5", "budget.dense_fraction", "[0, 1]"),
    ("budget.warmup_fraction=0.8", "budget.dense_fraction", "a sum <= 1"),  # with the default dense_fraction 0.5
    ("budget.dense_steps=-1", "budget.dense_steps", ">= 0"),
]

# A key of the selected data module only: (overrides, key, what the message says is allowed)
BAD_DATA = [
    (["data=needle", "data.num_pairs=3"], "data.num_pairs", "data module 'needle'"),
    (["data=synthetic_qa", "data.num_pairs=3"], "data.num_pairs", "num_facts"),
    (["data=qasper", "data.truncation=tail"], "data.truncation", "head, sliding_window"),
    (["data=arxiv", "data.truncation=sliding_window"], "data.truncation", "head, tail"),
    (["data=imdb", "data.truncation=sliding_window", "data.stride=300"], "data.stride", "< data.seq_len // 2 (256)"),
    (["data=imdb", "data.on_invalid=ignore"], "data.on_invalid", "error, skip"),
    (["data=kv_retrieval", "data.truncation=head"], "data.truncation", "data module 'kv_retrieval'"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if the CLI gets as far as reading data or building a model."""

    def boom(*a, **k):
        raise AssertionError("work started before the config was validated")

    monkeypatch.setattr(runner, "build_datamodule", boom)
    monkeypatch.setattr(runner, "build_system", boom)
    monkeypatch.setattr(runner, "train", boom)
    monkeypatch.setattr(runner, "make_logger", boom)


@pytest.mark.parametrize("override,key,allowed", BAD)
def test_bad_config_exits_2_naming_key(override, key, allowed, capsys, no_work):
    assert cli.main(["train", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert key in err and allowed in err


@pytest.mark.parametrize("overrides,key,allowed", BAD_DATA)
def test_bad_data_key_exits_2_naming_key_and_module(overrides, key, allowed, capsys, no_work):
    assert cli.main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert key in err and allowed in err


def test_data_section_holds_the_selected_modules_keys_only():
    """``data=<name>`` and ``data.name=<name>`` type the section by that module's schema; the registries
    of data configs (conf) and DataModules agree."""
    from conf.compose import compose
    from conf.data_schema import DATA_SCHEMAS
    from datamodules import DATAMODULES

    assert DATAMODULES.keys() == DATA_SCHEMAS.keys()
    for name, cls in DATAMODULES.items():
        assert cls.CONFIG is DATA_SCHEMAS[name], name
    assert set(compose(["data=needle"]).data) == {
        "name", "seq_len", "min_seq_len", "vocab_size", "num_classes", "num_needles", "tokens_per_class",
        "cue_families", "train_size", "val_size", "test_size", "batch_size", "eval_batch_size", "num_workers", "seed"}
    # a data.name that changes the module starts the section from its defaults, as data=<name> does;
    # later sources refine it
    kv = compose(["data.name=kv_retrieval", "data.train_size=100"])
    assert (kv.data.seq_len, kv.data.train_size, kv.data.num_pairs, kv.data.num_keys) == (1024, 100, 4, 32)
    assert compose(["data=needle"]).data.train_size == 4096 and compose([]).data.train_size == 9600
    assert compose(["data=synthetic_qa", "data.num_facts=3"]).data.num_facts == 3


def test_schema_archs_are_the_wrappers_model_types():
    """model.arch is a string checked against ARCHS (not an Enum: "xlm-roberta" is no member name)."""
    from conf.schema import ARCHS
    from retention.encoder import SUPPORTED_MODEL_TYPES

    assert sorted(ARCHS) == sorted(SUPPORTED_MODEL_TYPES)


def test_choices_come_out_as_plain_strings_and_a_saved_config_composes_again(tmp_path):
    """The composed config, its YAML and its MLflow params hold the strings users type; the
    ``config.yaml`` saved beside a checkpoint composes back to the same config."""
    from omegaconf import OmegaConf

    from conf.compose import compose

    cfg = compose(["data=qasper", "model=tiny", "gate.context=running", "ablation=no_relaxation"])
    for key, value in (("gate.context", "running"), ("gate.relaxation", "sigmoid"), ("ablation", "no_relaxation"),
                       ("budget.inference", "top_m"), ("data.truncation", "sliding_window"), ("data.on_invalid", "error")):
        got = OmegaConf.select(cfg, key)
        assert got == value and type(got) is str, key
    assert "context: running" in OmegaConf.to_yaml(cfg)
    params = runner.flatten_params(OmegaConf.to_container(cfg, resolve=True))
    assert params["gate.context"] == "running" and str(params["data.truncation"]) == "sliding_window"
    saved = tmp_path / runner.CONFIG_NEXT_TO_CHECKPOINT
    OmegaConf.save(cfg, saved, resolve=True)
    assert compose([], config_file=saved) == cfg


@pytest.mark.parametrize("value,expected", [("20", 20), ("0.25", 0.25), ("1", 1), ("1.0", 1.0)])
def test_batch_limits_keep_lightnings_int_batches_float_fraction(value, expected, monkeypatch):
    """``trainer.limit_train_batches=20`` reaches Lightning as the int 20 (20 batches), not 20.0
    (which Lightning reads as an out-of-range fraction); a float stays a fraction."""
    seen = {}
    monkeypatch.setattr(runner, "train", lambda cfg, **_: seen.update(cfg=cfg))
    assert cli.main(["train", *TINY, f"trainer.limit_train_batches={value}", f"trainer.val_check_interval={value}"]) == 0
    for key in ("limit_train_batches", "val_check_interval"):
        got = seen["cfg"].trainer[key]
        assert got == expected and type(got) is type(expected), (key, got)


def test_gate_layer_checked_against_pretrained_backbone(capsys, no_work):
    assert cli.main(["train", "model=minilm", "gate.layers=[6]"]) == 2
    assert "0..5" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    exe = [sys.executable, "-m", "commands.cli"]
    res = subprocess.run([*exe, "train", "budget.ratio=2"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "budget.ratio" in res.stderr and "(0, 1]" in res.stderr


def test_config_file_merges_and_unknown_key_in_file_fails(tmp_path, capsys, no_work):
    good = tmp_path / "good.yaml"
    good.write_text("budget:\n  ratio: 0.5\n")
    assert cli.main(["train", "--config", str(good), "--print-config"]) == 0
    assert "ratio: 0.5" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate:\n  temprature: 0.5\n")
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "temprature" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_train_run_is_tracked_in_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", *TINY, f"logging.tracking_uri={uri}", "logging.experiment=e2e"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["e2e"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["run_id"] in out
    assert run["params.budget.ratio"] == "0.3" and run["params.gate.layers"] == "[1]"
    assert run["params.gate.context"] == "mean" and run["params.budget.schedule"] == "constant"
    for metric in ("train/task_loss_step", "train/lambda_l1", "train/expected_retention_l1_step",
                   "test/acc_dense", "test/acc_hard", "test/acc_soft", "test/kept_fraction_l1", "val/acc_hard"):
        assert f"metrics.{metric}" in runs.columns and runs[f"metrics.{metric}"].notna().all(), metric
    assert run["metrics.test/kept_fraction_l1"] == pytest.approx(10 / 32)  # ⌈0.3·32⌉ = 10 kept
    client = mlflow.tracking.MlflowClient(uri)
    assert "config.yaml" in [a.path for a in client.list_artifacts(run["run_id"])]
    ckpt = client.get_run(run["run_id"]).data.tags["checkpoint_path"]
    assert ckpt.endswith("best.ckpt") and (tmp_path / "checkpoints" / run["run_id"] / "best.ckpt").exists()
    for label in ("dense accuracy", "retained accuracy", "achieved retention, layer 1", "final lambda, layer 1",
                  "random selection accuracy (same model, rho = 0.3)", "end of training |g-hat - rho|, layer 1"):
        assert label in out
    # the needle task's decisive-token rate, and the same model with random selection (logged beside, not over, ours)
    for metric in ("test/needle_kept_hard", "test/acc_hard_random", "test/needle_kept_hard_random"):
        assert runs[f"metrics.{metric}"].notna().all(), metric


SUMMARY = {"run_id": "abc", "tracking_uri": "sqlite:///m.db", "checkpoint": None, "metric_label": "accuracy",
           "dense": 1.0, "soft": 0.99, "retained": 0.99, "random": 0.48, "needle_kept": 0.991, "random_needle_kept": 0.3,
           "retained_over_dense": 0.99, "ratio": 0.3, "tokens": None, "kept": {0: 0.3008}, "lambda": {0: 1.5}}


def test_summary_reports_random_selection_the_needle_and_the_budget_gap():
    """The results block (ours, random on the same model, the needle's survival), |g-hat - rho| per gated
    layer, and one warning line only when a gap exceeds runner.BUDGET_TOLERANCE (0.05)."""
    close = runner.format_summary({**SUMMARY, "budget_gap": {0: 0.012}})
    assert "needle kept in 99.1 % of test sequences" in close and "needle kept in 30.0 % of test sequences" in close
    assert "random / dense 0.480" in close
    (gap,) = [line for line in close.splitlines() if line.startswith("end of training |g-hat - rho|, layer 0")]
    assert gap.split()[-1] == "0.0120"
    assert "warning" not in close
    far = runner.format_summary({**SUMMARY, "budget_gap": {0: 0.2}})
    (warning,) = [line for line in far.splitlines() if line.startswith("warning")]
    assert "g-hat - rho > 0.05 (layer 0 +0.200)" in warning and "more tokens" in warning
    under = runner.format_summary({**SUMMARY, "budget_gap": {0: -0.281}})
    (warning,) = [line for line in under.splitlines() if line.startswith("warning")]
    assert "g-hat - rho < -0.05 (layer 0 -0.281)" in warning and "closed below the budget" in warning
    assert "budget.constraint=equality budget.lagrangian=augmented holds g-hat at rho" in warning  # the switches that hold it there
    (gap,) = [line for line in under.splitlines() if line.startswith("end of training |g-hat - rho|, layer 0")]
    assert gap.split()[-1] == "0.2810"
    # already in that form: the hint is the step sizes, not the switches the run already has
    held = runner.format_summary({**SUMMARY, "budget_gap": {0: -0.1}, "budget_form": ("equality", "augmented")})
    (warning,) = [line for line in held.splitlines() if line.startswith("warning")]
    assert "smaller optim.gate_lr" in warning and "budget.lagrangian=augmented holds" not in warning


def test_every_preset_group_option_composes():
    """experiment/ (global presets, not a Config section), method/ and ablation/ are train groups;
    conf/sweep/ is not."""
    from conf.compose import compose, config_groups

    groups = config_groups()
    assert {"experiment", "method", "ablation", "model", "data"} <= set(groups) and "sweep" not in groups
    for name in groups["experiment"]:
        cfg = compose([f"experiment={name}"])
        if name == "progressive":  # no task of its own: stacked after a task's preset, it keeps that task
            stacked = compose(["experiment=listops", "experiment=progressive"])
            assert stacked.data == compose(["experiment=listops"]).data and list(stacked.gate.layers) == [0, 2, 4]
            continue
        cue = cfg.data.name == "needle" and cfg.data.cue_families > 0  # the context-vector study: one short T
        if name.endswith("_pretrain"):  # stage 1: short sequences, positions sized for stage 2
            stage2 = compose([f"experiment={name.removesuffix('_pretrain')}"])
            if cue:
                assert dict(cfg.data) == {**stage2.data, "train_size": cfg.data.train_size} and cfg.gate == stage2.gate
            elif cfg.data.name == "byo":  # real text: stage 1 fine-tunes on the same pages at the same length
                assert cfg.data == stage2.data and cfg.model == stage2.model and cfg.gate.layers == stage2.gate.layers
            else:
                assert cfg.data.seq_len < stage2.data.seq_len == cfg.model.max_positions == stage2.model.max_positions
            assert cfg.budget.dense_fraction == 1.0 and stage2.budget.dense_fraction == 0.0
        elif cfg.data.name == "synthetic_qa":  # hard vs soft QA: the target reaches rho before training ends
            assert cfg.budget.dense_fraction + cfg.budget.warmup_fraction < 1
        elif cfg.data.name == "byo":  # the real-text results: Debian's manual pages (scripts/debian_text.py)
            assert all(str(f).startswith("data/debian/") for f in cfg.data.data_files.values())
        elif not cue:  # the results page's long-context settings (the needle at T >= 1024)
            assert cfg.data.seq_len >= (1024 if cfg.data.name == "needle" else 512)
    for name in groups["method"]:
        assert compose([f"method={name}"]).method == name


def test_ltp_with_gates_started_at_the_budget_exits_2_before_any_work(capsys, no_work):
    assert cli.main(["train", "method=ltp", "gate.start_at_budget=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gate.start_at_budget=true with method=ltp" in err


@pytest.mark.parametrize("variant", ["method=ltp", "ablation=fixed_lambda"])
def test_a_fixed_penalty_stays_fixed_under_a_task_preset_in_either_order(variant):
    """LTP and the fixed-λ ablation penalise with a constant λ: no dual ascent, and no quadratic term,
    although experiment=man_section starts λ₂ at 10 and ascends with η 0.1. The variant wins wherever it
    stands on the command line (it used to lose when written first)."""
    from conf.compose import compose

    after, before = compose(["experiment=man_section", variant]), compose([variant, "experiment=man_section"])
    assert after == before
    assert (after.optim.dual_lr, after.budget.init_lambda2) == (0.0, 0.0)
    assert after.budget.init_lambda == (0.2 if variant == "method=ltp" else 1.0)
    assert after.data.data_files == compose(["experiment=man_section"]).data.data_files


def test_trainer_choices_are_lightnings():
    """trainer.precision / strategy / accelerator accept exactly what Lightning's Trainer accepts (conf/
    holds copies: it imports no Lightning)."""
    import typing

    import lightning as L
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from conf.schema import ACCELERATORS, PRECISIONS, STRATEGIES

    def literals(hint) -> set:
        args = typing.get_args(hint)
        return set(args) if typing.get_origin(hint) is typing.Literal else set().union(*map(literals, args))

    precision = literals(typing.get_type_hints(L.Trainer.__init__)["precision"])
    assert set(PRECISIONS) == {str(v) for v in precision}  # an int (16) arrives as its string ("16")
    assert set(STRATEGIES) == {"auto", *StrategyRegistry.available_strategies()}
    assert set(ACCELERATORS) == {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}


def test_accelerator_the_machine_lacks_fails_before_any_work(monkeypatch, capsys, no_work):
    """``trainer.accelerator=gpu`` on a machine without one: one line, exit 2 (Lightning's own test of
    availability says so), before the run starts; ``--print-config`` (maybe on another machine) passes."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: False))
    for name in ("gpu", "cuda"):
        assert cli.main(["train", *TINY, f"trainer.accelerator={name}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"retention: config error: trainer.accelerator={name!r}: this machine has no {name} "
                       f"(Lightning finds none); available here: auto, cpu"]
    assert cli.main(["train", *TINY, "trainer.accelerator=gpu", "--print-config"]) == 0


def test_unknown_backbone_fails_at_once_without_the_network(capsys, monkeypatch, no_work):
    """Not a folder and not cached: an error at once saying how to download it, without trying the
    network (it retried the hub for 31 s before)."""
    import socket

    def no_network(*a, **k):
        raise AssertionError("the config check tried the network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert cli.main(["train", "model.backbone=no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the Hugging Face cache" in err[0]


@pytest.mark.parametrize("text,where", [
    ("budget:\n  ratio: 0.5\n gate: [1\n", "line 3, column 2"),
    ('seed: "unclosed\n', "line 2, column 1"),
    ("budget:\n\tratio: 0.5\n", "line 2, column 1"),
])
def test_malformed_yaml_config_is_one_line_with_its_position(text, where, tmp_path, capsys, no_work):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}, {where}: malformed YAML" in err[0]


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.mark.parametrize("argv,code", [(["train", "--print-config"], 0), (["train", "budget.ratio=2"], 2),
                                       (["train", "model=minilm", "--print-config"], 0)])
def test_print_config_and_config_errors_import_no_torch(argv, code):
    """What makes them answer in well under 2 s: no torch, Lightning or transformers is imported."""
    res = _python(f"import sys; from commands import cli; rc = cli.main({argv!r}); "
                  "print(rc, sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    assert res.stdout.splitlines()[-1] == f"{code} []", res.stdout + res.stderr


def test_train_help_lists_config_groups_and_where_keys_are_documented():
    from conf.compose import config_groups

    res = _python("import sys; from commands import cli\ntry: cli.main(['train', '--help'])\nexcept SystemExit: pass\n"
                  "print('torch' in sys.modules)")
    assert res.stdout.splitlines()[-1] == "False"
    for group, options in config_groups().items():
        assert f"  {group}={'|'.join(options)}" in res.stdout
    assert "model=minilm|tiny" in res.stdout and "conf/schema.py" in res.stdout and "conf/data_schema.py" in res.stdout


def test_print_config_into_a_closed_pipe_ends_quietly():
    """``retention train --print-config | head -1``: no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "commands.cli", "train", "--print-config"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and err == ""


def test_torch_free_copies_agree_with_the_code_they_describe():
    """backbone_checks.TASKS is each DataModule's task; SEQ2SEQ_ARCHS the wrapper's encoder–decoders."""
    from commands.backbone_checks import TASKS
    from conf.schema import SEQ2SEQ_ARCHS
    from datamodules import DATAMODULES
    from retention.encoder import SEQ2SEQ_MODEL_TYPES

    assert TASKS == {name: getattr(cls, "task", "classification") for name, cls in DATAMODULES.items()}
    assert SEQ2SEQ_ARCHS == SEQ2SEQ_MODEL_TYPES


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta", "xlm-roberta", "bart", "t5"])
def test_backbone_layers_and_positions_read_from_config_json_as_transformers_reads_them(model_type, tmp_path):
    """The torch-free reading of a saved config.json gives transformers' layer count, and the position
    limit of retention.backbones (max_position_embeddings less the position offset)."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    from commands.backbone_checks import backbone_num_layers
    from conf.schema import ConfigError
    from retention.backbones import position_offset

    config = AutoConfig.for_model(model_type, num_hidden_layers=3) if model_type != "t5" else AutoConfig.for_model("t5", num_layers=3)
    config.save_pretrained(tmp_path / model_type)
    limit = getattr(config, "max_position_embeddings", None)
    fits = limit - position_offset(model_type) if limit else 4096

    def cfg(seq_len):
        return OmegaConf.create({"model": {"backbone": str(tmp_path / model_type)}, "data": {"seq_len": seq_len}})

    assert backbone_num_layers(cfg(fits)) == config.num_hidden_layers == 3
    if limit:
        with pytest.raises(ConfigError, match=f"data.seq_len={fits + 1} is out of range; allowed: <= {fits}"):
            backbone_num_layers(cfg(fits + 1))
