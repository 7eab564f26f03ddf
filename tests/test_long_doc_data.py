"""QASPER, arXiv and PubMed DataModules through the same ``load_dataset`` path as the public datasets,
on small JSONL files the tests write in those datasets' own schemas; bad data names split and index;
end-to-end `retention train data=qasper|arxiv|pubmed` on the fixtures (tiny random-init models)."""

import json

import mlflow
import pytest
import torch

from datamodules import DATAMODULES, DataError
from commands import cli, runner

from .helpers import TINY
from .long_doc_fixtures import qasper_paper, summary_record, write_jsonl, write_qasper, write_summarization


def files_overrides(files: dict[str, str]) -> list[str]:
    return [f"data.data_files.{split}={path}" for split, path in files.items()]


def make_dm(name, files, tmp_path, **kw):
    kw.setdefault("seq_len", 128)
    return DATAMODULES[name](data_files=files, cache_dir=str(tmp_path / "cache"), batch_size=4, eval_batch_size=4, **kw)


# ---------------------------------------------------------------------------------------------- QASPER
@pytest.mark.parametrize("truncation", ["head", "sliding_window"])
def test_qasper_batches_and_answer_counts(tmp_path, truncation):
    files = write_qasper(tmp_path)
    dm = make_dm("qasper", files, tmp_path, truncation=truncation, stride=32)
    dm.setup("fit")
    assert dm.task == "qa"
    # 3 train papers x 6 questions: 3 extractive each; yes/no, free-form and unanswerable counted, not silently lost
    assert dm.answer_counts["train"] == {"papers": 3, "questions": 18, "extractive": 9, "yes_no": 3, "free_form": 3,
                                         "unanswerable": 3, "multi_span_annotations": 0, "spans_not_found": 0}
    assert len(dm.eval_examples("val")) == 6 and len(dm.eval_examples("test")) == 6
    batch = next(iter(dm.train_dataloader()))
    b, t = batch["input_ids"].shape
    assert t <= 128 and batch["attention_mask"].shape == (b, t)
    assert batch["protected"].dtype == torch.bool and batch["offsets"].shape == (b, t, 2)
    assert bool(batch["protected"][:, 0].all())  # [CLS]
    assert not bool((batch["protected"] & batch["context_mask"]).any())
    if truncation == "sliding_window":
        assert len(dm.datasets["train"]) > 9  # long papers give several windows per question
    else:
        assert len(dm.datasets["train"]) == 9
    ex = next(iter(dm.eval_examples("val").values()))
    assert ex["answers"] == ["the NewsCorp-10 dataset", "NewsCorp-10"]
    assert set(batch["example_index"].tolist()) <= set(dm.eval_examples("train"))


def test_qasper_carved_splits_keep_their_questions(tmp_path):
    """Only a train file: val and test are carved from the converted questions; every window still
    finds its own question (context and golds) through its example_index."""
    files = write_qasper(tmp_path, n_train=4)
    dm = make_dm("qasper", {"train": files["train"]}, tmp_path, val_fraction=0.25)
    dm.setup("fit")
    keys = {role: set(dm.eval_examples(role)) for role in ("train", "val", "test")}
    assert keys["val"] and keys["test"] and not (keys["val"] & keys["train"]) and not (keys["test"] & keys["train"])
    for role in ("val", "test"):
        for w in dm.datasets[role]:
            ex = dm.eval_examples(role)[w["example_index"]]
            s, e = w["start_positions"], w["end_positions"]
            if s:
                assert ex["context"][w["offsets"][s][0]:w["offsets"][e][1]] in ex["answers"]


def test_qasper_span_outside_context_names_split_and_index(tmp_path):
    files = write_qasper(tmp_path)
    papers = [qasper_paper(10), qasper_paper(11)]
    papers[1]["qas"]["answers"][0]["answer"][0]["extractive_spans"] = ["a span that is not in the paper"]
    papers[1]["qas"]["answers"][0]["answer"][1]["extractive_spans"] = []
    write_jsonl(tmp_path / "qasper-validation.jsonl", papers)
    dm = make_dm("qasper", files, tmp_path)
    with pytest.raises(DataError, match=r"split 'validation', example 1, column 'qas'.*q11-0.*outside the context"):
        dm.setup("fit")
    skipping = make_dm("qasper", files, tmp_path, on_invalid="skip")
    skipping.setup("fit")
    assert skipping.skipped["validation"] == 1 and len(skipping.eval_examples("val")) == 3


# ---------------------------------------------------------------------------------------------- arXiv / PubMed
@pytest.mark.parametrize("name", ["arxiv", "pubmed"])
def test_summarization_batches(tmp_path, name):
    files = write_summarization(tmp_path)
    dm = make_dm(name, files, tmp_path, target_len=12)
    dm.setup("fit")
    assert dm.task == "summarization" and dm.generation == {"max_new_tokens": 12, "num_beams": 1}
    assert dm.DEFAULT_PATH == f"ccdv/{name}-summarization"
    batch = next(iter(dm.train_dataloader()))
    b, t = batch["input_ids"].shape
    assert b == 4 and t == 128  # the articles are longer than seq_len: cut to it
    labels = batch["labels"]
    assert labels.shape[0] == 4 and labels.shape[1] <= 12
    assert bool((labels == -100).any() | (labels.shape[1] == 12))
    text = dm.tokenizer.decode(labels[0][labels[0] >= 0], skip_special_tokens=True)
    assert text.startswith("we study")


def test_empty_summary_target_names_split_and_index(tmp_path):
    files = write_summarization(tmp_path)
    rows = [summary_record(100 + k) for k in range(4)]
    rows[2]["abstract"] = "  "
    write_jsonl(tmp_path / "validation.jsonl", rows)
    dm = make_dm("arxiv", files, tmp_path)
    with pytest.raises(DataError, match=r"split 'validation', example 2, column 'abstract': expected a non-empty target summary"):
        dm.setup("fit")


def test_unsupported_backbone_for_qa_fails_before_work(tmp_path, capsys):
    from transformers import LongformerConfig

    LongformerConfig(num_hidden_layers=2).save_pretrained(tmp_path / "longformer")
    files = write_qasper(tmp_path)
    code = cli.main(["train", "data=qasper", f"model.backbone={tmp_path / 'longformer'}", *files_overrides(files)])
    err = capsys.readouterr().err
    assert code == 2 and "'longformer'" in err and "bert" in err and "bart" not in err.split("supported:")[1]
    code = cli.main(["train", "data=arxiv", "model.backbone=random", "model.arch=bert"])
    assert code == 2 and "supported: bart, t5" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end
SMALL = [o for o in TINY if not o.startswith(("data.", "model.hidden", "model.num_heads", "model.intermediate"))]


def run_cli(tmp_path, data, extra):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", f"data={data}", "model.backbone=random", "model.hidden_size=32", "model.num_heads=4",
            "model.intermediate_size=64", *SMALL, "gate.layers=[1]", "data.seq_len=96", "data.batch_size=4",
            "data.eval_batch_size=4", f"data.cache_dir={tmp_path / 'cache'}", f"logging.tracking_uri={uri}",
            f"logging.checkpoint_dir={tmp_path / 'ckpt'}", "optim.lr=1e-3", *extra]
    assert cli.main(args) == 0
    run = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("adaptive-retention").experiment_id])[0]
    return run.data.metrics


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_cli_trains_and_generates_summaries(tmp_path, arch, capsys):
    files = write_summarization(tmp_path)
    metrics = run_cli(tmp_path, "arxiv", [f"model.arch={arch}", "data.target_len=8", "data.num_beams=2",
                                          *files_overrides(files)])
    for path in ("soft", "hard", "dense"):
        for key in ("rouge1", "rouge2", "rougeL"):
            assert 0.0 <= metrics[f"test/{key}_{path}"] <= 1.0
    assert metrics["test/kept_fraction_l1"] == pytest.approx(0.3, abs=0.02)
    assert "train/task_loss_step" in metrics
    assert "retained ROUGE-1 F" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_trains_qasper(tmp_path, capsys):
    files = write_qasper(tmp_path)
    metrics = run_cli(tmp_path, "qasper", ["model.arch=bert", "data.stride=32", *files_overrides(files)])
    for path in ("soft", "hard", "dense"):
        assert 0.0 <= metrics[f"test/f1_{path}"] <= 1.0 and 0.0 <= metrics[f"test/em_{path}"] <= 1.0
    assert metrics["data/qasper_train_yes_no"] == 3.0
    assert "retained SQuAD F1" in capsys.readouterr().out
