"""`retention bench`: output files and their fields, ratios consistent with the raw numbers, the retained
forward computes on exactly M tokens per layer, invalid arguments fail clearly. No timed assertions."""

import csv
import json
import math

import pytest
import torch

from commands import bench, cli
from retention.bench import BenchSpec, build_encoder, kept_per_layer, make_inputs
from retention.bench_records import memory_reductions, plot_records, record_fields
from retention.flops import EncoderShape, flops_fraction

from .helpers import markdown_rows

TINY = ["--backbone", "random", "--layers", "3", "--hidden", "32", "--heads", "2", "--intermediate", "64",
        "--vocab", "64"]


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_record(rec):
    """Every ratio in a record follows from its raw numbers."""
    b, t = rec["batch"], rec["length"]
    for p in ("full", "retained"):
        lat = rec[f"{p}_latency_median_s"]
        assert lat > 0 and rec[f"{p}_latency_min_s"] <= lat <= rec[f"{p}_latency_max_s"]
        assert rec[f"{p}_latency_iqr_s"] >= 0
        assert _close(rec[f"{p}_seq_per_s"], b / lat)
        assert _close(rec[f"{p}_tok_per_s"], b * t / lat)
    assert _close(rec["speedup"], rec["retained_seq_per_s"] / rec["full_seq_per_s"])
    assert _close(rec["speedup"], rec["full_latency_median_s"] / rec["retained_latency_median_s"])
    if rec["full_peak_bytes"] is not None:
        assert _close(rec["memory_reduction"], 1 - rec["retained_peak_bytes"] / rec["full_peak_bytes"])
        if rec["full_activation_bytes"] > 0:
            assert _close(rec["activation_memory_reduction"],
                          1 - rec["retained_activation_bytes"] / rec["full_activation_bytes"])
        else:  # below the RSS resolution at tiny shapes: undefined, not a number
            assert rec["activation_memory_reduction"] is None
        for p in ("full", "retained"):
            assert rec[f"{p}_activation_bytes"] == rec[f"{p}_peak_bytes"] - rec[f"{p}_resident_bytes"]
    if rec["train_step_ratio"] is not None:
        assert _close(rec["train_step_ratio"], rec["train_gated_step_s"] / rec["train_dense_step_s"])
    assert 0 < rec["gate_overhead"] < 1
    m = math.ceil(rec["ratio"] * t - 1e-6)
    assert rec["kept_tokens"] == m
    # gate entering layer 1: layer 0 computes on all T tokens, every later layer on exactly M
    assert rec["kept_per_layer"] == [t] + [m] * 2


@pytest.mark.slow
def test_quick_bench_writes_json_csv_png_with_consistent_ratios(tmp_path, capsys):
    out = tmp_path / "b"
    assert cli.main(["bench", "--quick", *TINY, "--lengths", "32", "64", "--ratios", "0.3", "0.5", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    env = result["environment"]
    for key in ("device", "device_name", "torch", "threads", "cpu_cores", "dtype", "memory_method", "command",
                "load_average_start", "load_average_end"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["threads"] >= 1 and env["device"] == "cpu"
    records = result["records"]
    assert [(r["length"], r["ratio"]) for r in records] == [(32, 0.3), (32, 0.5), (64, 0.3), (64, 0.5)]
    for rec in records:
        assert set(rec) == set(record_fields())
        assert rec["batch"] == 2 and rec["reps"] == 3
        assert rec["full_peak_bytes"] > 0 and rec["train_dense_step_s"] > 0  # --quick measures memory and training
        check_record(rec)
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == record_fields() and len(rows) == len(records)
    for row, rec in zip(rows, records):
        assert float(row["speedup"]) == pytest.approx(rec["speedup"], rel=1e-12)
        if rec["activation_memory_reduction"] is None:
            assert row["activation_memory_reduction"] == ""
        else:
            assert float(row["activation_memory_reduction"]) == pytest.approx(rec["activation_memory_reduction"],
                                                                              rel=1e-12)
        assert row["kept_per_layer"] == " ".join(map(str, rec["kept_per_layer"]))
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = markdown_rows(capsys.readouterr().out)
    assert list(rows[0])[:7] == ["T", "B", "rho", "M", "full ms", "ret ms", "speed-up"] and len(rows) == len(records)
    for row, rec in zip(rows, records):  # the printed Markdown summary shows the records' figures
        assert (int(row["T"]), int(row["M"])) == (rec["length"], rec["kept_tokens"])
        assert row["speed-up"] == f"{rec['speedup']:.2f}" and row["train x"] == f"{rec['train_step_ratio']:.2f}"


def test_bench_without_memory_or_training_still_consistent(tmp_path):
    out = tmp_path / "b"
    assert cli.main(["bench", *TINY, "--lengths", "48", "--batch-sizes", "3", "--ratios", "0.25", "--reps", "2",
                     "--warmup", "0", "--no-memory", "--train-max-length", "0", "--out", str(out)]) == 0
    (rec,) = json.loads((out / "bench.json").read_text())["records"]
    assert rec["full_peak_bytes"] is None and rec["memory_reduction"] is None and rec["train_step_ratio"] is None
    check_record(rec)


@pytest.mark.parametrize("gate_layers,ratio", [((1,), 0.3), ((0,), 0.5), ((0, 2), 0.3), ((2,), 0.1)])
def test_retained_forward_computes_on_exactly_m_tokens_per_layer(gate_layers, ratio):
    spec = BenchSpec(backbone="random", lengths=(40,), batch_sizes=(3,), ratios=(ratio,), gate_layers=gate_layers,
                     layers=3, hidden=32, heads=2, intermediate=64, vocab=64)
    enc, _ = build_encoder(spec, ratio)
    ids, prot = make_inputs(spec, 64, 40, 3)
    m = math.ceil(ratio * 40 - 1e-6)
    first = min(gate_layers)
    assert kept_per_layer(enc, ids, prot) == [40] * first + [m] * (3 - first)
    with torch.no_grad():
        out = enc(ids, None, protected=prot, mode="hard")
    assert out.last_hidden_state.shape[:2] == (3, m)
    assert all(c.tolist() == [m] * 3 for c in out.retained_counts)
    assert bool(out.valid.all())  # equal lengths: no padding after selection


def test_long_inputs_extend_pretrained_positions():
    spec = BenchSpec(backbone="minilm", lengths=(600,), batch_sizes=(1,), ratios=(0.3,))
    enc, extended = build_encoder(spec, 0.3)
    assert extended and enc.backbone.config.max_position_embeddings >= 600
    ids, prot = make_inputs(spec, enc.backbone.config.vocab_size, 600, 1)
    assert kept_per_layer(enc, ids, prot)[-1] == 180


BAD = [
    (["--lengths", "0"], "lengths"),
    (["--lengths", "128", "-4"], "lengths"),
    (["--batch-sizes", "0"], "batch_sizes"),
    (["--ratios", "0"], "(0, 1]"),
    (["--ratios", "0.3", "1.5"], "(0, 1]"),
    (["--ratios", "-0.2"], "(0, 1]"),
    (["--backbone", "/no/such/backbone-xyz"], "unknown backbone '/no/such/backbone-xyz'"),  # a path: no hub retries
    (["--gate-layers", "7"], "0..2"),
    (["--flops", "1.5"], "flops must lie in (0, 1]"),
    (["--ratios", "--flops", "0.2"], "already cost 0.333 of the dense forward"),  # gate at 1 of 3 layers
    (["--ratios"], "give at least one budget"),
    (["--reps", "0"], "reps"),
    (["--device", "cpu", "--cuda-graphs"], "--cuda-graphs needs a CUDA device (--device cuda); this run's device is 'cpu'"),
    (["--device", "cpu", "--sync-debug", "error"], "--sync-debug needs a CUDA device"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_invalid_arguments_exit_2_with_clear_message(argv, message, tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the arguments were validated")

    monkeypatch.setattr(bench, "run_bench", boom)
    args = ["bench", "--backbone", "random", "--layers", "3", "--hidden", "32", "--heads", "2"]
    assert cli.main([*args, *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("retention bench: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_unparseable_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--lengths", "abc"])
    assert exc.value.code == 2 and "--lengths" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_logs_to_mlflow_sqlite(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "b"
    assert cli.main(["bench", *TINY, "--lengths", "32", "--batch-sizes", "2", "--ratios", "0.5", "--reps", "2",
                     "--no-memory", "--train-max-length", "0", "--out", str(out), "--mlflow", "--tracking-uri", uri,
                     "--experiment", "bench-test"]) == 0
    (rec,) = json.loads((out / "bench.json").read_text())["records"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["bench-test"])
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.speedup/T32_B2_rho0.5"] == pytest.approx(rec["speedup"])
    assert runs.iloc[0]["params.env.torch"] == torch.__version__
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(runs.iloc[0]["run_id"])}
    assert artifacts == {"bench.json", "bench.csv", "bench.png"}


def test_memory_reductions_undefined_when_full_forward_allocates_nothing(tmp_path):
    """At tiny CPU shapes the full forward can fit in memory already resident (activation 0 bytes):
    the activation reduction is None, not a division by zero, and the plot skips that point."""
    full = {"peak_bytes": 1000, "resident_bytes": 1000, "activation_bytes": 0}
    ret = {"peak_bytes": 1100, "resident_bytes": 1000, "activation_bytes": 100}
    red = memory_reductions(full, ret)
    assert red["activation_memory_reduction"] is None and red["memory_reduction"] == pytest.approx(-0.1)
    full = {"peak_bytes": 1400, "resident_bytes": 1000, "activation_bytes": 400}
    assert memory_reductions(full, ret)["activation_memory_reduction"] == pytest.approx(0.75)
    recs = [{"length": t, "batch": 1, "ratio": 0.3, "speedup": 1.0, "activation_memory_reduction": a}
            for t, a in ((32, None), (64, 0.5))]
    plot_records(recs, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progressive_and_flops_budgets_are_measured_side_by_side(tmp_path, capsys):
    """Gates at layers 0 and 2 of three, the linear schedule (ρ_ℓ = 0.65, 0.3 at ρ = 0.3) and a FLOPs
    budget of 0.4 in one run: each record's layers ran on its schedule's lengths, its analytic FLOPs
    fraction follows from them (≤ F for the FLOPs budget), and the table names both budgets."""
    out = tmp_path / "b"
    assert cli.main(["bench", *TINY, "--lengths", "40", "--batch-sizes", "2", "--gate-layers", "0", "2", "--schedule",
                     "linear", "--ratios", "0.3", "--flops", "0.4", "--reps", "2", "--warmup", "0", "--no-memory",
                     "--train-max-length", "0", "--out", str(out)]) == 0
    ratio, flops = json.loads((out / "bench.json").read_text())["records"]
    assert (ratio["ratio"], ratio["flops"], flops["ratio"], flops["flops"]) == (0.3, None, None, 0.4)
    assert ratio["kept_per_layer"] == [26, 26, 12]  # ⌈0.65·40⌉, then ⌈0.3·40⌉
    shape = EncoderShape(3, 32, 64, 32, gate_layers=(0, 2), gate_hidden=16)
    for rec in (ratio, flops):
        kept = torch.tensor([[rec["kept_per_layer"][0]], [rec["kept_per_layer"][2]]])
        assert rec["flops_fraction"] == pytest.approx(float(flops_fraction(kept, torch.tensor([40]), shape)[0]))
    assert flops["flops_fraction"] <= 0.4 and flops["kept_per_layer"][0] > flops["kept_per_layer"][2]
    rows = markdown_rows(capsys.readouterr().out)
    assert [(row["rho"], row["F"]) for row in rows] == [("0.3", "-"), ("-", "0.4")]
