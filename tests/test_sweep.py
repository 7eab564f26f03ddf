"""`retention sweep` and `retention compare`: every trial a nested MLflow run, failures recorded, resume,
pruning, killed workers, a real PostgreSQL storage and a real MLflow tracking server.

Trials train the tiny config (seconds each). Spawned workers and subprocesses run one torch thread.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from commands import cli, compare, sweep, sweep_config, sweep_report, sweep_study
from commands.compare import pareto_front

from .helpers import TINY

SPACE = {  # the default search space, narrowed so tiny trials stay tiny
    "gate.beta": {"type": "float", "low": 0.3, "high": 1.0, "log": True},
    "budget.ratio": {"type": "float", "low": 0.2, "high": 0.6},
    "optim.dual_lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh folder (the Optuna and MLflow SQLite files land there); one torch thread, also for subprocesses."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def write_sweep(path: Path, study: dict, space: dict = SPACE, base: list[str] = ()) -> str:
    path.write_text(json.dumps({"study": study, "base": {"overrides": [*TINY, *base]}, "search_space": space}))
    return str(path)  # JSON is YAML


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite store (creating one takes seconds; tests copy it)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.tracking.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def uri(workdir, mlflow_db_template) -> str:
    shutil.copy(mlflow_db_template, workdir / "mlflow.db")
    return f"sqlite:///{workdir / 'mlflow.db'}"


def load(name: str, storage=None):
    """The study from ``storage`` (default: the sweep's default, ``./optuna.db``)."""
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{Path.cwd() / sweep_study.DEFAULT_STORAGE}")


def trial_runs(uri: str, parent: str):
    mlflow.set_tracking_uri(uri)
    exp = mlflow.tracking.MlflowClient().get_run(parent).info.experiment_id
    return mlflow.search_runs(experiment_ids=[exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


def assert_trials_tracked(study, uri: str, states=("COMPLETE",)) -> None:
    """Every trial is a nested run of the study's parent with its params, number and final state."""
    parent = study.user_attrs[sweep_study.PARENT_ATTR]
    runs = trial_runs(uri, parent).set_index("tags.optuna.trial_number")
    assert sorted(runs.index) == sorted(str(t.number) for t in study.trials)
    for t in study.trials:
        run = runs.loc[str(t.number)]
        assert run["run_id"] == t.user_attrs["mlflow_run_id"]
        assert run["tags.optuna.trial_state"] == t.state.name and t.state.name in states
        for key, value in t.params.items():
            assert float(run[f"params.{key}"]) == pytest.approx(value, rel=1e-12), key
        if t.state == TrialState.COMPLETE:
            assert run["status"] == "FINISHED"
            assert run["metrics.objective/metric"] == pytest.approx(t.values[0])
            assert run["metrics.val/acc_hard"] >= 0 and not run[["metrics.train/task_loss_step", "metrics.test/acc_hard"]].isna().any()


# --------------------------------------------------------------------------- before any trial
BAD_SPACE = [
    ("search_space={gate.temprature: {low: 0.1, high: 1.0}}", "search_space.gate.temprature", "temprature"),
    ("search_space={gate.beta: {low: 2.0, high: 1.0}}", "search_space.gate.beta", "invalid distribution"),
    ("search_space={optim.dual_lr: {low: 0.0, high: 0.1, log: true}}", "search_space.optim.dual_lr", "invalid distribution"),
    ("search_space={gate.beta: {type: gaussian, low: 0.1, high: 1.0}}", "search_space.gate.beta", "gaussian"),
    ("search_space={data.num_needles: {type: categorical}}", "search_space.data.num_needles", "choices"),
    ("search_space={budget.ratio: {low: 0.1, high: 1.5}}", "search_space.budget.ratio", "(0, 1]"),
    ("search_space={model.num_layers: {type: categorical, choices: [2, 1]}}", "search_space.model.num_layers", "0..0"),
    ("search_space={gate.layers: {type: categorical, choices: [[1], [0, 1]]}}", "search_space.gate.layers", "choices must be"),
    ("search_space={gate.beta: {lo: 0.1}}", "search_space.gate.beta.lo", "low"),
    ("search_space={model: {type: categorical, choices: [tiny, huge]}}", "search_space.model", "huge"),
    ("study.objectives=[metric,retention]", "study.pruner", "single-objective"),
    ("study.pruner_args={n_startup: 3}", "study.pruner_args", "n_startup"),
    ("study.enqueue=[{gate.betaa: 0.5}]", "study.enqueue[0]", "gate.betaa"),
    ("study.enqueue=[{budget.ratio: 0.9}]", "study.enqueue[0]", "outside"),
    ("gate.temprature=0.5", "temprature", "GateConfig"),
    # a trial trains in its worker's process: several devices (DDP) per trial are refused
    ("trainer.devices=2", "trainer.devices=2", "a sweep trial trains in one process"),
    ("trainer.num_nodes=2", "trainer.num_nodes=2", "a sweep trial trains in one process"),
    ("search_space={trainer.devices: {type: categorical, choices: [1, 2]}}", "search_space.trainer.devices (value 2)",
     "a sweep trial trains in one process"),
]


@pytest.mark.parametrize("override,entry,detail", BAD_SPACE)
def test_bad_sweep_config_fails_before_any_trial(override, entry, detail, workdir, capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the study was opened before the sweep config was validated")

    monkeypatch.setattr(sweep, "open_study", boom)
    monkeypatch.setattr(sweep, "run_worker", boom)
    assert cli.main(["sweep", *TINY, override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and entry in err and detail in err, err
    assert not list(workdir.iterdir())  # no Optuna or MLflow store


def test_trials_on_two_devices_with_ddp_spawn_are_refused_before_the_study_opens(workdir, capsys, monkeypatch):
    """A sweep trial trains in its worker's process (commands.sweep_config.check_one_process)."""
    def boom(*a, **k):
        raise AssertionError("the study was opened before the sweep config was validated")

    monkeypatch.setattr(sweep, "open_study", boom)
    assert cli.main(["sweep", *TINY, "trainer.devices=2", "trainer.strategy=ddp_spawn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("retention: config error: trainer.devices=2, trainer.num_nodes=1 start 2 processes; a sweep trial trains in "
                   "one process (set trainer.devices=1; run trials in parallel with study.workers=N)"), err
    assert not list(workdir.iterdir())


def test_config_groups_are_schema_sections_only():
    from conf.compose import config_groups

    assert "sweep" not in config_groups() and {"model", "data"} <= set(config_groups())


def test_packaged_sweep_configs_resolve(capsys):
    for name in ("default", "pareto"):
        scfg = sweep_config.compose_sweep(name, ["study.n_trials=3", "trainer.max_epochs=1"])
        assert scfg.base.overrides[-1] == "trainer.max_epochs=1" and scfg.study.n_trials == 3
        assert set(sweep_config.check_sweep(scfg)) == {"gate.beta", "budget.ratio", "optim.dual_lr"}
    assert sweep_config.compose_sweep("pareto").study.objectives == ["metric", "retention"]


def test_pareto_front():
    retention = [0.3, 0.3, 0.5, 0.2, 0.6, float("nan")]
    metric = [0.8, 0.9, 0.85, 0.5, 0.95, 1.0]
    assert sorted(pareto_front(retention, metric)) == [1, 3, 4]


# --------------------------------------------------------------------------- storages
def test_default_storage_is_sqlite_with_heartbeats_and_a_log_path_a_journal(workdir):
    study = sweep_config.compose_sweep(None, ["study.heartbeat_interval=7", "study.grace_period=9"]).study
    assert sweep_study.storage_url(None) == f"sqlite:///{workdir / 'optuna.db'}"
    rdb = sweep_study.make_storage(study)
    assert isinstance(rdb, optuna.storages.RDBStorage) and rdb.url == f"sqlite:///{workdir / 'optuna.db'}"
    assert rdb.get_heartbeat_interval() == 7
    study.storage = "runs/j.log"
    assert sweep_study.storage_url(study.storage) == f"journal:{workdir / 'runs' / 'j.log'}"
    assert sweep_study.rdb_url("postgresql://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"
    assert sweep_study.storage_url("postgresql://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"


@pytest.mark.parametrize("storage", ["x.sqlite", "/no/such/dir/optuna", "optuna"])
def test_a_storage_that_is_no_url_nor_db_or_log_path_exits_2_in_one_line(storage, workdir, capsys):
    assert cli.main(["sweep", *TINY, "--storage", storage]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"retention: config error: study.storage={storage!r} is not a storage; expected an SQLAlchemy URL "
                   "(sqlite:///PATH/optuna.db, postgresql://USER:PASSWORD@HOST/DB), a PATH.db SQLite file or a PATH.log "
                   "Optuna journal file"), err
    assert not list(workdir.iterdir())  # no Optuna or MLflow store


def test_a_db_path_is_an_sqlite_study(workdir, uri, capsys):
    """``--storage PATH.db`` (not ``sqlite:///PATH.db``) opens that SQLite file, as the default ``./optuna.db``."""
    (workdir / "runs").mkdir()
    assert sweep_study.storage_url("runs/o.db") == f"sqlite:///{workdir / 'runs' / 'o.db'}"
    assert sweep_study.rdb_url(None) == sweep_study.rdb_url(sweep_study.DEFAULT_STORAGE)
    assert cli.main(["sweep", "--storage", "runs/o.db", "--n-trials", "0", *TINY, "study.name=plain",
                     f"logging.tracking_uri={uri}"]) == 0
    assert f"at sqlite:///{workdir / 'runs' / 'o.db'}: 0 trials so far" in capsys.readouterr().out
    assert load("plain", f"sqlite:///{workdir / 'runs' / 'o.db'}").user_attrs[sweep_study.PARENT_ATTR]


@pytest.mark.parametrize("sampler,objectives", [("tpe", ["metric"]), ("nsga2", ["metric", "retention"])])
def test_a_resumed_seeded_study_draws_new_parameters_reproducibly(sampler, objectives, workdir, uri):
    """Re-opening a seeded study (as a second ``retention sweep`` does) must not replay the first run's random
    stream; the same history (seed, trials so far) gives the same resumed trials."""
    def run(name: str, n: int) -> list[dict]:
        scfg = sweep_config.compose_sweep(write_sweep(workdir / f"{name}.yaml", {
            "name": name, "seed": 0, "sampler": sampler, "pruner": "none", "objectives": objectives}),
            [f"logging.tracking_uri={uri}"])
        dists = sweep_config.build_distributions(scfg)
        study, _, _ = sweep_study.open_study(scfg)
        study.optimize(lambda t: [t.suggest_float(k, d.low, d.high, log=d.log) for k, d in dists.items()][:len(objectives)],
                       n_trials=n)
        return [t.params for t in study.trials]

    first = run("resumed", 2)
    assert first[0] != first[1]
    resumed = run("resumed", 2)
    assert resumed[:2] == first
    assert resumed[2] not in first and resumed[3] not in first  # before: trials 2, 3 repeated trials 0, 1
    assert sweep_study.sampler_seed(0, 0, 1) == 1 and sweep_study.sampler_seed(None, 5, 0) is None
    run("again", 2)
    assert run("again", 2) == resumed  # same seed, same history: same resumed trials


def test_importances_rank_for_the_objectives_direction(workdir, uri):
    """``metric`` (maximised) = 10·[a > 0.5] − 12·[b < 0.1] on a 10 × 10 grid: a decides the high values, b the
    lowest. fANOVA splits the variance: a's share is 25 / (25 + 12.96) (the terms are additive, Var 10·[a > 0.5]
    = 25, Var 12·[b < 0.1] = 144 · 0.09). Optuna's default evaluator, given the objective as ``target``, ranks b
    first (the parameter of the lowest values: backwards for a maximised objective). ``retention`` (minimised)
    = b + 0.05·a: b's share is 1 / (1 + 0.0025)."""
    dists = {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
    study = optuna.create_study(directions=["maximize", "minimize"])
    grid = [(i + 0.5) / 10 for i in range(10)]
    study.add_trials([create_trial(state=TrialState.COMPLETE, params={"a": a, "b": b}, distributions=dists,
                                   values=[10 * (a > 0.5) - 12 * (b < 0.1), b + 0.05 * a]) for a in grid for b in grid])
    with pytest.warns(UserWarning, match="importances of params to achieve low `target` values"):  # PED-ANOVA
        assert list(optuna.importance.get_param_importances(study, target=lambda t: t.values[0])) == ["b", "a"]

    scfg = sweep_config.compose_sweep("pareto", [])
    client = mlflow.tracking.MlflowClient(uri)
    parent = client.create_run(client.create_experiment("imp")).info.run_id
    summary = sweep_report.summarize(study, scfg, client, parent)
    path = client.download_artifacts(parent, "param_importances.json", str(workdir))
    table = json.loads(Path(path).read_text())
    assert list(table) == ["metric", "retention"] and list(table["metric"]) == ["a", "b"] and list(table["retention"]) == ["b", "a"]
    assert table["metric"]["a"] == pytest.approx(25 / 37.96, abs=0.01)
    assert table["retention"]["b"] == pytest.approx(1 / 1.0025, abs=0.01)
    assert f"parameter importances for metric (fANOVA): a {table['metric']['a']:.3f}, b {table['metric']['b']:.3f}" in summary
    assert sweep_report.param_importances(study, ["metric", "retention"]) == table  # seeded: the same again


def test_importances_of_an_objective_every_trial_scored_alike_are_undefined(workdir, uri):
    """fANOVA has no variance to split (Optuna's default evaluator would still rank the parameters, by noise):
    the summary says so, and only the varying objective gets importances and a plot."""
    dists = {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trials([create_trial(state=TrialState.COMPLETE, params={"a": a, "b": 0.5}, distributions=dists,
                                   values=[0.25, a]) for a in (0.1, 0.4, 0.7, 0.9)])
    client = mlflow.tracking.MlflowClient(uri)
    parent = client.create_run(client.create_experiment("flat")).info.run_id
    summary = sweep_report.summarize(study, sweep_config.compose_sweep("pareto", []), client, parent)
    assert "parameter importances for metric undefined: every completed trial has metric = 0.25" in summary
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert "param_importances_retention.png" in artifacts and "param_importances_metric.png" not in artifacts
    table = json.loads(Path(client.download_artifacts(parent, "param_importances.json", str(workdir))).read_text())
    assert list(table) == ["retention"] and table["retention"]["a"] == pytest.approx(1.0)  # b never varies


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(workdir, uri):
    cfg = write_sweep(workdir / "s.yaml", {"name": "two", "seed": 0, "pruner": "none"})
    assert cli.main(["sweep", "--config", cfg, "--workers", "2", "--n-trials", "4", f"logging.tracking_uri={uri}"]) == 0
    study = load("two")
    assert len(study.trials) == 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # two processes ran them
    assert_trials_tracked(study, uri)
    client = mlflow.tracking.MlflowClient(uri)
    parent = client.get_run(study.user_attrs[sweep_study.PARENT_ATTR])
    assert parent.data.tags["sweep.role"] == "parent" and parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial_number"] == str(study.best_trial.number)
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_trial.json", "trials.csv", "optimization_history.png"} <= artifacts
    varied = len({t.value for t in study.trials}) > 1  # tiny one-epoch trials may all score alike: nothing to explain
    assert ("param_importances.png" in artifacts) == varied and ("param_importances.json" in artifacts) == varied


@pytest.mark.slow
def test_failed_and_nan_trials_recorded_others_complete_and_resume_adds(workdir, uri):
    space = {**SPACE, "data.num_needles": {"type": "categorical", "choices": [1, 40]},
             "optim.lr": {"type": "categorical", "choices": [0.002, 1.0e30]}}
    enqueue = [{"data.num_needles": 40, "optim.lr": 0.002},  # 40 needles do not fit in 32 tokens: raises
               {"data.num_needles": 1, "optim.lr": 1.0e30},  # diverges: NaN loss
               {"data.num_needles": 1, "optim.lr": 0.002}]
    cfg = write_sweep(workdir / "s.yaml", {"name": "fail", "seed": 0, "pruner": "none", "enqueue": enqueue}, space)
    args = ["sweep", "--config", cfg, f"logging.tracking_uri={uri}"]
    assert cli.main([*args, "--n-trials", "3"]) == 0
    study = load("fail")
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "num_needles=40" in study.trials[0].user_attrs["fail_reason"]
    assert "training loss is nan" in study.trials[1].user_attrs["fail_reason"]
    runs = trial_runs(uri, study.user_attrs[sweep_study.PARENT_ATTR]).set_index("tags.optuna.trial_number")
    assert runs.loc["0", "status"] == "FAILED" and "num_needles=40" in runs.loc["0", "tags.optuna.fail_reason"]
    assert runs.loc["1", "status"] == "FAILED" and "nan" in runs.loc["1", "tags.optuna.fail_reason"]
    assert runs.loc["2", "status"] == "FINISHED"
    parent = study.user_attrs[sweep_study.PARENT_ATTR]

    assert cli.main([*args[:3], "--n-trials", "2", *args[3:]]) == 0  # the same sweep again: two more trials
    study = load("fail")
    assert len(study.trials) == 5 and [t.state for t in study.trials[:3]] == states  # added, nothing lost
    assert study.user_attrs[sweep_study.PARENT_ATTR] == parent
    assert_trials_tracked(study, uri, states=("COMPLETE", "FAIL"))


@pytest.mark.slow
def test_pruning_prunes_a_trial_that_cannot_learn(workdir, uri):
    space = {"optim.lr": {"type": "categorical", "choices": [0.005, 0.0]}}
    easy = ["data.seq_len=16", "data.train_size=512", "data.val_size=64", "model.hidden_size=32",
            "optim.scheduler=constant", "trainer.max_epochs=3", "optim.gate_lr=0.0"]
    cfg = write_sweep(workdir / "s.yaml", {"name": "prune", "pruner": "median", "storage": "prune.log",
                                           "pruner_args": {"n_startup_trials": 1, "n_warmup_steps": 0},
                                           "enqueue": [{"optim.lr": 0.005}, {"optim.lr": 0.0}]}, space, easy)
    assert cli.main(["sweep", "--config", cfg, "--n-trials", "2", f"logging.tracking_uri={uri}"]) == 0
    study = load("prune", optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend("prune.log")))
    assert not (workdir / sweep_study.DEFAULT_STORAGE).exists()  # a *.log storage is a journal file
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE and good.value > 0.5  # the needle task is learned
    assert bad.state == TrialState.PRUNED and max(bad.intermediate_values.values()) < good.value
    assert_trials_tracked(study, uri, states=("COMPLETE", "PRUNED"))
    run = trial_runs(uri, study.user_attrs[sweep_study.PARENT_ATTR]).set_index("tags.optuna.trial_number").loc["1"]
    assert run["status"] == "KILLED" and "pruned" in run["tags.optuna.prune_reason"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number
def test_killed_worker_trial_failed_and_retried_completed_trial_kept(workdir, uri):
    """A worker killed with SIGKILL mid-trial stops its heartbeat; the next sweep fails the silent trial
    (Optuna's fail_stale_trials), marks its MLflow run failed and runs the re-queued retry."""
    grace = 2
    cfg = write_sweep(workdir / "s.yaml", {"name": "kill", "seed": 0, "pruner": "none",
                                           "heartbeat_interval": 1, "grace_period": grace})
    args = ["sweep", "--config", cfg, "--n-trials", "1", f"logging.tracking_uri={uri}"]
    assert cli.main(args) == 0  # trial 0 completes
    # A worker running a long trial (500 epochs) is killed with SIGKILL mid-trial.
    proc = subprocess.Popen([sys.executable, "-m", "commands.cli", *args, "trainer.max_epochs=500"],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            trials = load("kill").trials
            if len(trials) == 2 and trials[1].state == TrialState.RUNNING and "mlflow_run_id" in trials[1].user_attrs:
                break
            assert proc.poll() is None, "the worker ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("the second trial never started")
        time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = load("kill").trials[1]
    assert killed.state == TrialState.RUNNING  # nothing else can know yet
    time.sleep(grace + 1)  # the last heartbeat is now older than the grace period
    assert cli.main(args) == 0  # the next sweep fails it and runs the retry
    study = load("kill")
    t0, t1, t2 = study.trials
    assert t0.state == TrialState.COMPLETE
    assert t1.state == TrialState.FAIL and t1.user_attrs["worker"].endswith(f":{proc.pid}")
    assert t2.state == TrialState.COMPLETE and t2.params == t1.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t2) == 1
    runs = trial_runs(uri, study.user_attrs[sweep_study.PARENT_ATTR]).set_index("tags.optuna.trial_number")
    reason = runs.loc["1", "tags.optuna.fail_reason"]
    assert runs.loc["1", "status"] == "FAILED" and f"no heartbeat for {grace} s" in reason and f":{proc.pid}" in reason
    assert runs.loc["2", "tags.optuna.retry_of"] == "1" and runs.loc["2", "status"] == "FINISHED"


# --------------------------------------------------------------------------- PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1, run as an unprivileged user."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("postgres")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on PATH")
    root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run([*as_user, initdb, "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--locale=C"], check=True, capture_output=True, env=env)
    subprocess.run([*as_user, pg_ctl, "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True, env=env)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(root / "data"), "-m", "immediate", "-w", "stop"], capture_output=True, env=env)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(workdir, uri, postgres_url):
    cfg = write_sweep(workdir / "s.yaml", {"name": "pg", "seed": 0, "pruner": "none"})
    assert cli.main(["sweep", "--config", cfg, "--storage", postgres_url, "--workers", "2", "--n-trials", "2",
                     f"logging.tracking_uri={uri}"]) == 0
    study = optuna.load_study(study_name="pg", storage=sweep_study.rdb_url(postgres_url))
    assert len(study.trials) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert_trials_tracked(study, uri)
    assert not (workdir / sweep_study.DEFAULT_STORAGE).exists()


# --------------------------------------------------------------------------- MLflow server + compare
@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the MLflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a throw-away server: no graceful shutdown needed
        proc.wait(timeout=30)


@pytest.mark.slow
def test_sweep_logs_to_tracking_server_and_compare_reads_it(workdir, mlflow_server, capsys):
    cfg = write_sweep(workdir / "s.yaml", {"name": "http", "seed": 1, "pruner": "none"})
    assert cli.main(["sweep", "--config", cfg, "--n-trials", "2", f"logging.tracking_uri={mlflow_server}"]) == 0
    study = load("http")
    assert_trials_tracked(study, mlflow_server)
    parent = study.user_attrs[sweep_study.PARENT_ATTR]
    assert "optimization_history.png" in {a.path for a in mlflow.tracking.MlflowClient(mlflow_server).list_artifacts(parent)}
    capsys.readouterr()
    out = workdir / "cmp"
    assert cli.main(["compare", "--tracking-uri", mlflow_server, "--parent", parent, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    import pandas as pd

    table = pd.read_csv(out / "runs.csv")
    assert sorted(table["trial"]) == [0, 1] and set(table["run_id"]) == {t.user_attrs["mlflow_run_id"] for t in study.trials}
    for t in study.trials:
        row = table[table["trial"] == t.number].iloc[0]
        assert row["gate.beta"] == pytest.approx(t.params["gate.beta"]) and row["state"] == "COMPLETE"
        assert row["test/acc_hard"] == pytest.approx(t.user_attrs["test_acc_hard"])
        assert row["retention"] == pytest.approx(t.user_attrs["retention"], abs=0.05)
    assert list(table["test/acc_hard"]) == sorted(table["test/acc_hard"], reverse=True)
    assert table["pareto"].any()
    for f in ("runs.md", "metric_vs_retention.png", "metric_vs_gate.beta.png", "metric_vs_budget.ratio.png", "metric_vs_optim.dual_lr.png"):
        assert (out / f).stat().st_size > 0, f
    assert parent not in printed and all(t.user_attrs["mlflow_run_id"] in printed for t in study.trials)

    # filter and sort, on the same server
    assert cli.main(["compare", "--tracking-uri", mlflow_server, "--experiment", "adaptive-retention",
                     "--filter", "tags.`optuna.trial_number` != '0'", "--sort", "budget.ratio", "--ascending",
                     "--params", "budget.ratio", "--out", str(out)]) == 0
    table = pd.read_csv(out / "runs.csv")
    assert list(table["trial"]) == [1] and list(table.columns[:4]) == ["run_id", "run_name", "trial", "state"]
    assert "budget.ratio" in table and "gate.beta" not in table


@pytest.mark.slow
def test_compare_rejects_unknown_sources_and_columns(workdir, uri, capsys):
    assert cli.main(["compare", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.create_experiment("e")
    for ratio, acc in ((0.3, 0.8), (0.5, 0.9), (0.5, 0.7)):
        run = client.create_run(exp).info.run_id
        client.log_param(run, "budget.ratio", ratio)
        client.log_metric(run, "test/acc_hard", acc)
        client.log_metric(run, "test/kept_fraction_l1", ratio)
        client.set_terminated(run)
    assert cli.main(["compare", "--tracking-uri", uri, "--experiment", "e", "--sort", "nope"]) == 2
    assert "--sort 'nope' is not a column" in capsys.readouterr().err
    assert cli.main(["compare", "--tracking-uri", uri, "--runs", "0" * 32]) == 2
    assert cli.main(["compare", "--tracking-uri", uri, "--experiment", "e", "--out", "c"]) == 0
    import pandas as pd

    table = pd.read_csv(workdir / "c" / "runs.csv")
    assert list(table["test/acc_hard"]) == [0.9, 0.8, 0.7] and list(table["pareto"]) == [True, True, False]
    assert list(table["budget.ratio"]) == [0.5, 0.3, 0.5]
    assert cli.main(["compare", "--tracking-uri", uri, "--experiment", "e", "--sort", "retention", "--ascending",
                     "--filter", "metrics.`test/acc_hard` > 0.75", "--out", "c"]) == 0
    table = pd.read_csv(workdir / "c" / "runs.csv")
    assert list(table["retention"]) == [0.3, 0.5] and list(table["test/acc_hard"]) == [0.8, 0.9]
    assert (workdir / "c" / "metric_vs_retention.png").stat().st_size and (workdir / "c" / "metric_vs_budget.ratio.png").stat().st_size


def _log_run(client, exp: str, params: dict, metrics: dict, tags: dict = (), status: str = "FINISHED") -> str:
    run = client.create_run(exp, tags=dict(tags)).info.run_id
    for k, v in params.items():
        client.log_param(run, k, v)
    for k, v in metrics.items():
        client.log_metric(run, k, v)
    client.set_terminated(run, status)
    return run


def test_compare_on_mixed_runs_gives_a_table_and_plots_only_swept_or_chosen_params(workdir, uri, capsys):
    """One experiment: a sweep's parent and two trials, a plain train run, a run of another method
    and data module (its own data.* keys, a string param only it logs, 100 model params of other
    values) and a run that failed before logging anything."""
    import pandas as pd

    client = mlflow.tracking.MlflowClient(uri)
    exp = client.create_experiment("mixed")
    common = {"method": "gate", "data.name": "needle", "data.num_needles": 1, "budget.ratio": 0.3, "gate.beta": 0.5,
              "seed": 0, "logging.run_name": "None", **{f"model.p{i}": 0 for i in range(100)}}
    _log_run(client, exp, {}, {}, {"sweep.role": "parent", "sweep.params": "budget.ratio,gate.beta"})
    trials = [_log_run(client, exp, {**common, "budget.ratio": r, "gate.beta": b, "logging.run_name": f"t{n}"},
                       {"test/acc_hard": acc, "test/kept_fraction_l1": r},
                       {"sweep.role": "trial", "sweep.params": "budget.ratio,gate.beta", "optuna.trial_number": str(n),
                        "optuna.trial_state": "COMPLETE"})
              for n, (r, b, acc) in enumerate(((0.2, 0.4, 0.7), (0.5, 0.9, 0.9)))]
    train = _log_run(client, exp, common, {"test/acc_hard": 0.8, "test/kept_fraction_l1": 0.3})
    other = {**{k: v for k, v in common.items() if not k.startswith("data.")}, "method": "random", "budget.ratio": "None",
             "data.name": "kv_retrieval", "data.num_pairs": 4, "data.tokenizer": "word", **{f"model.p{i}": 1 for i in range(100)}}
    kv = _log_run(client, exp, other, {"test/acc_hard": 0.6, "test/kept_fraction_l1": 0.25})
    failed = _log_run(client, exp, {}, {}, status="FAILED")

    assert cli.main(["compare", "--tracking-uri", uri, "--experiment", "mixed", "--out", "c"]) == 0
    table = pd.read_csv(workdir / "c" / "runs.csv").set_index("run_id")
    assert sorted(table.index) == sorted([*trials, train, kv, failed])  # the parent left out
    # the searched keys, then (by name) what every run that logged params logs and differs: not data.num_needles /
    # data.num_pairs / data.tokenizer (only some runs log them), not logging.*
    assert list(table.columns[3:8]) == ["budget.ratio", "gate.beta", "data.name", "method", "model.p0"]
    assert len([c for c in table.columns if c.startswith(("model.", "data.", "logging."))]) == 101
    assert table.loc[kv, "method"] == "random" and pd.isna(table.loc[kv, "budget.ratio"])  # logged "None": unset
    assert table.loc[train, "budget.ratio"] == 0.3 and pd.isna(table.loc[failed, "test/acc_hard"])
    assert list(table["test/acc_hard"].dropna()) == [0.9, 0.8, 0.7, 0.6]  # sorted, best first
    assert sorted(p.name for p in (workdir / "c").glob("*.png")) == [
        "metric_vs_budget.ratio.png", "metric_vs_gate.beta.png", "metric_vs_retention.png"]

    # --params: a string param only one run logs, and one every run logs (categories)
    assert cli.main(["compare", "--tracking-uri", uri, "--experiment", "mixed", "--params", "data.tokenizer", "data.name",
                     "--out", "p"]) == 0
    assert sorted(p.name for p in (workdir / "p").glob("*.png")) == [
        "metric_vs_data.name.png", "metric_vs_data.tokenizer.png", "metric_vs_retention.png"]
    assert list(pd.read_csv(workdir / "p" / "runs.csv").columns[4:6]) == ["data.tokenizer", "data.name"]

    # runs of no sweep: the differing params are plotted when they are few, else none (and it says so)
    capsys.readouterr()
    assert cli.main(["compare", "--tracking-uri", uri, "--runs", train, kv, failed, "--out", "r"]) == 0
    # budget.ratio, data.name, method and model.p0..p99
    assert "103 params differ between these runs (no sweep): none plotted" in capsys.readouterr().out
    assert [p.name for p in (workdir / "r").glob("*.png")] == ["metric_vs_retention.png"]
    plain = client.create_experiment("plain")
    for ratio, seed in ((0.3, 0), (0.5, 0), (0.5, 1)):
        _log_run(client, plain, {**common, "budget.ratio": ratio, "seed": seed}, {"test/acc_hard": 0.5 + ratio, "test/kept_fraction_l1": ratio})
    assert cli.main(["compare", "--tracking-uri", uri, "--experiment", "plain", "--out", "f"]) == 0
    assert list(pd.read_csv(workdir / "f" / "runs.csv").columns[3:5]) == ["budget.ratio", "seed"]
    assert sorted(p.name for p in (workdir / "f").glob("*.png")) == [
        "metric_vs_budget.ratio.png", "metric_vs_retention.png", "metric_vs_seed.png"]


def test_compare_picks_the_task_metric_not_another_hard_path_figure():
    """Needle runs log ``needle_kept_hard`` as often as ``acc_hard``; whatever the column order, the
    table's primary metric is the task's (it was chosen by column order when the two tied)."""
    import pandas as pd

    for order in (1, -1):
        cols = ["metrics.test/needle_kept_hard", "metrics.val/needle_kept_hard", "metrics.test/acc_hard",
                "metrics.val/acc_hard", "metrics.test/kept_fraction_l0"][::order]
        df = pd.DataFrame({"run_id": ["a", "b"], "status": ["FINISHED"] * 2, **{c: [0.5, 0.7] for c in cols}})
        table, metric, _, _ = compare.build_table(df)
        assert metric == "acc" and "test/acc_hard" in table.columns
