"""QASPER, arXiv and PubMed DataModules through the same ``load_dataset`` path as the public datasets,
on small JSONL files the tests write in those datasets' own schemas; bad data names split and index;
end-to-end `retention train data=qasper|arxiv|pubmed` on the fixtures (tiny random-init models)."""


import mlflow
import pytest
import torch
from torchmetrics.functional.text import rouge_score, squad

from datamodules import DATAMODULES, DataError
from commands import cli
from lightning_modules.qa import best_spans
from lightning_modules.system import EVAL_PATHS

from .helpers import TINY, load_trained, top_m_fraction
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
    return mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("adaptive-retention").experiment_id])[0]


def summaries_by_hand(checkpoint) -> dict[str, float]:
    """A summarization run's test metrics recomputed from its checkpoint: ROUGE-1/2/L F of each path by
    torchmetrics' functional ``rouge_score`` over all test summaries at once (ids generated on that
    path and the labels both decoded by the run's tokenizer without special tokens), and the hard
    path's kept fraction, the mean over rows of clamp(⌈ρ·T_valid⌉, n_protected, T_valid)/T_valid."""
    cfg, dm, system = load_trained(checkpoint)
    tok = dm.tokenizer
    preds, refs, kept = {path: [] for path in EVAL_PATHS}, [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            refs += tok.batch_decode(labels.masked_fill(labels < 0, tok.pad_token_id), skip_special_tokens=True)
            for path in preds:
                preds[path] += tok.batch_decode(system.generate(ids, mask, mode=path), skip_special_tokens=True)
            kept += top_m_fraction(cfg.budget.ratio, mask, system.encoder.protected_mask(ids))
    out = {"test/kept_fraction_l1": sum(kept) / len(kept)}
    for path, texts in preds.items():
        scores = rouge_score(texts, refs, rouge_keys=("rouge1", "rouge2", "rougeL"))
        out.update({f"test/{key}_{path}": float(scores[f"{key}_fmeasure"]) for key in ("rouge1", "rouge2", "rougeL")})
    return out


def squad_by_hand(checkpoint) -> dict[str, float]:
    """A QA run's test metrics recomputed from its checkpoint: per question the best-scoring span over
    all its windows (on each path), decoded through the offsets, scored by torchmetrics' functional
    ``squad`` against every gold answer (reported on 0–1), and the hard path's kept fraction with the
    batch's protected question."""
    cfg, dm, system = load_trained(checkpoint)
    examples = dm.eval_examples("test")
    best, kept = {path: {} for path in EVAL_PATHS}, []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            for path, spans in best.items():
                start, end, _ = system(batch["input_ids"], batch["attention_mask"], batch["protected"], mode=path)
                score, i, j = best_spans(start, end, batch["context_mask"].bool(), system.max_answer_tokens)
                for w, ex in enumerate(batch["example_index"].tolist()):
                    if ex not in spans or float(score[w]) > spans[ex][0]:
                        spans[ex] = (float(score[w]), int(batch["offsets"][w, i[w], 0]), int(batch["offsets"][w, j[w], 1]))
            kept += top_m_fraction(cfg.budget.ratio, batch["attention_mask"], batch["protected"])
    out = {"test/kept_fraction_l1": sum(kept) / len(kept)}
    for path, spans in best.items():
        preds = [{"prediction_text": examples[ex]["context"][cs:ce], "id": examples[ex]["id"]} for ex, (_, cs, ce) in spans.items()]
        target = [{"answers": {"text": list(examples[ex]["answers"]), "answer_start": [0] * len(examples[ex]["answers"])},
                   "id": examples[ex]["id"]} for ex in spans]
        result = squad(preds, target)
        out[f"test/f1_{path}"], out[f"test/em_{path}"] = float(result["f1"]) / 100, float(result["exact_match"]) / 100
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_cli_trains_and_generates_summaries(tmp_path, arch, capsys):
    files = write_summarization(tmp_path)
    run = run_cli(tmp_path, "arxiv", [f"model.arch={arch}", "data.target_len=8", "data.num_beams=2",
                                      *files_overrides(files)])
    metrics, expected = run.data.metrics, summaries_by_hand(run.data.tags["checkpoint_path"])
    for path in ("soft", "hard", "dense"):
        for key in ("rouge1", "rouge2", "rougeL"):
            assert metrics[f"test/{key}_{path}"] == pytest.approx(expected[f"test/{key}_{path}"], abs=1e-6)
    assert metrics["test/kept_fraction_l1"] == pytest.approx(expected["test/kept_fraction_l1"], rel=1e-5)
    assert "train/task_loss_step" in metrics
    assert "retained ROUGE-1 F" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_trains_qasper(tmp_path, capsys):
    files = write_qasper(tmp_path)
    run = run_cli(tmp_path, "qasper", ["model.arch=bert", "data.stride=32", *files_overrides(files)])
    metrics, expected = run.data.metrics, squad_by_hand(run.data.tags["checkpoint_path"])
    for path in ("soft", "hard", "dense"):
        for key in (f"test/f1_{path}", f"test/em_{path}"):
            assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["test/kept_fraction_l1"] == pytest.approx(expected["test/kept_fraction_l1"], rel=1e-5)
    assert metrics["data/qasper_train_yes_no"] == 3.0
    assert "retained SQuAD F1" in capsys.readouterr().out
