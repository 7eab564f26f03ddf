"""The synthetic long-context suite: deterministic for a seed, labels computable from the few
decisive tokens alone, no leakage between splits."""

import pytest
import torch

from datamodules.listops import LISTOPS_TOKENS, ListOpsDataModule, ListOpsSpec, generate_listops
from datamodules.loaders import HOST_VIEW
from datamodules.needle import NeedleDataModule, NeedleSpec, generate_needle
from datamodules.recall import KVRetrievalDataModule, KVSpec, MQARDataModule, MQARSpec, generate_kv_retrieval, generate_mqar
from datamodules.synthetic import CLS_ID, PAD_ID, SEP_ID

GENERATORS = [
    (generate_needle, NeedleSpec(seq_len=64, min_seq_len=40, vocab_size=40)),
    (generate_needle, NeedleSpec(seq_len=64, min_seq_len=40, vocab_size=64, tokens_per_class=2, cue_families=5)),
    (generate_kv_retrieval, KVSpec(seq_len=64, min_seq_len=40, vocab_size=80, num_keys=16, num_classes=4)),
    (generate_mqar, MQARSpec(seq_len=96, min_seq_len=60, vocab_size=80, num_keys=16, num_classes=4)),
    (generate_listops, ListOpsSpec(seq_len=64, min_seq_len=16, max_depth=4, max_args=4)),
]


@pytest.mark.parametrize("gen,spec", GENERATORS, ids=lambda x: getattr(x, "__name__", type(x).__name__))
def test_deterministic_for_a_seed_and_framed(gen, spec):
    a, b, c = gen(spec, 50, 7), gen(spec, 50, 7), gen(spec, 50, 8)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["input_ids"], c["input_ids"])
    ids, mask = a["input_ids"], a["attention_mask"]
    lengths = mask.sum(1)
    assert (ids[:, 0] == CLS_ID).all()
    assert (ids[torch.arange(len(ids)), lengths - 1] == SEP_ID).all()
    assert (ids[mask == 0] == PAD_ID).all() and (mask.cumsum(1).max(1).values == lengths).all()
    assert ((ids == SEP_ID).sum(1) == 1).all() and ((ids == CLS_ID).sum(1) == 1).all()


@pytest.mark.parametrize("dm_cls,kwargs", [
    (NeedleDataModule, dict(seq_len=64, vocab_size=40)),
    (KVRetrievalDataModule, dict(seq_len=64, vocab_size=80, num_keys=16, num_classes=4)),
    (MQARDataModule, dict(seq_len=96, vocab_size=80, num_keys=16, num_classes=4)),
    (ListOpsDataModule, dict(seq_len=64, min_seq_len=16, max_depth=4, max_args=4)),
], ids=lambda x: getattr(x, "__name__", ""))
def test_no_leakage_between_splits_and_batches(dm_cls, kwargs):
    dm = dm_cls(train_size=200, val_size=50, test_size=50, batch_size=8, **kwargs)
    dm.setup()
    rows = {split: {tuple(r.tolist()) for r in dm.datasets[split].tensors[0]} for split in ("train", "val", "test")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {*dm.keys, HOST_VIEW}
    assert batch["input_ids"].shape == (8, kwargs["seq_len"])
    assert int(batch["labels"].max()) < dm.num_labels and int(batch["input_ids"].max()) < dm.vocab_size


def _only(ids: torch.Tensor, positions: torch.Tensor) -> dict[int, int]:
    """The tokens at ``positions`` — all a decoder of the label is allowed to see."""
    return {int(p): int(ids[p]) for p in positions}


def test_needle_label_from_needles_alone():
    spec = NeedleSpec(seq_len=64, min_seq_len=40, vocab_size=40, num_needles=3)
    d = generate_needle(spec, 200, 0)
    for ids, pos, label in zip(d["input_ids"], d["needle_positions"], d["labels"]):
        seen = torch.tensor(list(_only(ids, pos).values()))
        assert int(spec.needle_class(seen).sum()) % spec.num_classes == int(label)
        # the distractors carry no class: every non-needle token decodes to -1
        others = torch.ones_like(ids, dtype=torch.bool)
        others[pos] = False
        assert (spec.needle_class(ids[others]) == -1).all()


def test_cued_needle_label_from_the_cue_and_its_familys_needle():
    spec = NeedleSpec(seq_len=48, min_seq_len=20, vocab_size=64, num_classes=3, tokens_per_class=2, cue_families=6)
    assert (spec.first_cue, spec.first_distractor) == (3 + 6 * 3 * 2, 3 + 6 * 3 * 2 + 6)
    d = generate_needle(spec, 300, 0)
    lengths = d["attention_mask"].sum(1)
    assert torch.equal(d["cue_position"], lengths - 2)
    for ids, cue_pos, fam_pos, pos, label in zip(d["input_ids"], d["cue_position"], d["family_positions"],
                                                 d["needle_positions"], d["labels"]):
        cue = int(ids[cue_pos]) - spec.first_cue
        assert 0 <= cue < spec.cue_families
        # one needle per family, nowhere else a needle or a cue
        families = spec.needle_family(ids)
        assert sorted(families[families >= 0].tolist()) == list(range(spec.cue_families))
        assert torch.equal(spec.needle_family(ids[fam_pos]), torch.arange(spec.cue_families))
        assert int(((ids >= spec.first_cue) & (ids < spec.first_distractor)).sum()) == 1
        # the decisive needle is the cued family's, and its class is the label
        assert int(spec.needle_family(ids[pos])) == cue and int(spec.needle_class(ids[pos])) == int(label)
    # every family is cued and every class is a label (no shortcut through a constant answer)
    assert set(d["labels"].tolist()) == {0, 1, 2}
    assert len({int(i[p]) for i, p in zip(d["input_ids"], d["cue_position"])}) == spec.cue_families


def test_cued_needle_config_errors():
    with pytest.raises(ValueError, match="num_needles"):
        NeedleSpec(seq_len=64, vocab_size=64, tokens_per_class=1, cue_families=4, num_needles=2)
    with pytest.raises(ValueError, match="vocab_size=40 is too small"):
        NeedleSpec(seq_len=64, vocab_size=40, tokens_per_class=1, cue_families=8)
    with pytest.raises(ValueError, match="do not fit"):
        NeedleSpec(seq_len=8, vocab_size=64, tokens_per_class=1, cue_families=6)


def test_needle_batches_carry_the_needle_positions_and_the_kept_rate_reads_them():
    """Batches hold where the needle is; ``needles_kept`` is True for a sequence only when every needle
    position is among the valid rows the encoder kept."""
    from types import SimpleNamespace

    from lightning_modules.classification import needles_kept

    spec = NeedleSpec(seq_len=32, num_needles=1, tokens_per_class=1)
    data = generate_needle(spec, 16, seed=0)
    rows = torch.arange(16)
    assert (spec.needle_class(data["input_ids"][rows, data["needle_positions"][:, 0]]) >= 0).all()
    out = SimpleNamespace(positions=torch.tensor([[0, 3, 5, 0], [0, 2, 4, 7]]),
                          valid=torch.tensor([[True, True, True, False], [True, True, True, True]]))
    assert needles_kept(out, torch.tensor([[5], [3]])).tolist() == [True, False]
    assert needles_kept(out, torch.tensor([[3, 5], [2, 5]])).tolist() == [True, False]  # every needle must survive


def test_kv_label_from_query_and_pairs_alone():
    spec = KVSpec(seq_len=64, min_seq_len=40, vocab_size=80, num_keys=16, num_classes=4, num_pairs=4)
    d = generate_kv_retrieval(spec, 200, 0)
    for i in range(200):
        ids = d["input_ids"][i]
        query = int(ids[d["query_position"][i]])
        pairs = {int(ids[k]): int(ids[k + 1]) - spec.first_value for k in d["pair_positions"][i]}
        assert len(pairs) == spec.num_pairs  # distinct keys
        assert pairs[query] == int(d["labels"][i])
        body = ids[1: int(d["attention_mask"][i].sum()) - 1]
        assert int((body == query).sum()) == 2  # the pair's key and the query, nowhere else


def test_mqar_labels_from_queries_and_pairs_alone():
    spec = MQARSpec(seq_len=96, min_seq_len=60, vocab_size=80, num_keys=16, num_classes=4, num_pairs=6, num_queries=3)
    d = generate_mqar(spec, 100, 0)
    first_value = 3 + spec.num_keys
    for i in range(100):
        ids, n = d["input_ids"][i], int(d["attention_mask"][i].sum())
        qpos = d["query_positions"][i]
        assert qpos.tolist() == list(range(n - 1 - spec.num_queries, n - 1))  # just before [SEP]
        pairs = {int(ids[k]): int(ids[k + 1]) - first_value for k in d["pair_positions"][i]}
        assert [pairs[int(ids[q])] for q in qpos] == d["labels"][i].tolist()


def _eval_listops(tokens: list[str]) -> int:
    """An independent evaluator: rewrite as a Python expression and eval it."""
    fn = {"[MIN": "min(", "[MAX": "max(", "[MED": "med(", "[SM": "sm("}
    src = " ".join(fn.get(t, ")," if t == "]" else t + ",") for t in tokens).rstrip(",")
    med = lambda *a: sorted(a)[(len(a) - 1) // 2] if len(a) % 2 else (sorted(a)[len(a) // 2 - 1] + sorted(a)[len(a) // 2]) // 2  # noqa: E731
    return eval(src, {"min": min, "max": max, "med": med, "sm": lambda *a: sum(a) % 10})


def test_listops_labels_and_lengths():
    spec = ListOpsSpec(seq_len=128, min_seq_len=32, max_depth=5, max_args=5)
    d = generate_listops(spec, 100, 3)
    vocab = {3 + i: t for i, t in enumerate(LISTOPS_TOKENS)}
    lengths = d["attention_mask"].sum(1)
    assert ((lengths >= 32) & (lengths <= 128)).all()
    for ids, n, label in zip(d["input_ids"], lengths, d["labels"]):
        tokens = [vocab[int(t)] for t in ids[1: int(n) - 1]]
        assert _eval_listops(tokens) == int(label)
        depth = max_depth = 0
        for t in tokens:
            depth += t.startswith("[") - (t == "]")
            max_depth = max(max_depth, depth)
        assert depth == 0 and max_depth <= spec.max_depth
    assert len(set(d["labels"].tolist())) > 3  # not a constant task


def test_bad_specs_fail_clearly():
    with pytest.raises(ValueError, match="vocab_size"):
        KVSpec(vocab_size=20, num_keys=16)
    with pytest.raises(ValueError, match="num_pairs"):
        KVSpec(num_pairs=40, num_keys=32)
    with pytest.raises(ValueError, match="num_queries"):
        MQARSpec(num_queries=9, num_pairs=8)
    with pytest.raises(ValueError, match="widen"):
        generate_listops(ListOpsSpec(seq_len=4096, min_seq_len=4000, max_depth=2, max_args=3, max_tries=50), 1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("data,extra", [
    ("kv_retrieval", ["data.seq_len=48", "data.vocab_size=64", "data.num_keys=8", "data.num_classes=4"]),
    ("mqar", ["data.seq_len=48", "data.vocab_size=64", "data.num_keys=8", "data.num_classes=4", "data.num_queries=3"]),
    ("listops", ["data.seq_len=48", "data.min_seq_len=12", "data.max_depth=4", "data.max_args=4"]),
])
def test_synthetic_tasks_train_through_the_cli(data, extra, tmp_path, monkeypatch, capsys):
    from commands import cli

    from .helpers import TINY

    monkeypatch.chdir(tmp_path)
    tiny = [o for o in TINY if not o.startswith(("data.seq_len", "data.vocab_size"))]
    args = ["train", f"data={data}", *tiny, *extra, f"logging.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "retained accuracy" in out and "achieved retention, layer 1" in out


def test_mqar_head_reads_the_query_tokens_on_every_path():
    from datamodules import build_datamodule
    from lightning_modules import build_system
    from lightning_modules.classification import RetentionMultiQueryClassifier
    from conf.compose import compose

    from .helpers import TINY

    tiny = [o for o in TINY if not o.startswith(("data.seq_len", "data.vocab_size"))]
    cfg = compose(["data=mqar", *tiny, "data.seq_len=64", "data.vocab_size=64", "data.num_keys=8",
                   "data.num_classes=4", "data.num_queries=3", "budget.ratio=0.1"])
    dm = build_datamodule(cfg)
    dm.setup()
    system = build_system(cfg, dm)
    assert isinstance(system, RetentionMultiQueryClassifier)
    batch = next(iter(dm.val_dataloader()))
    system.eval()
    with torch.no_grad():
        for mode in ("dense", "soft", "hard"):
            logits, out = system.classify(batch, mode)
            assert logits.shape == (len(batch["input_ids"]), 4, 3)
        # hard path at rho = 0.1 keeps 7 of 64 tokens, yet every query survives (protected)
        kept = out.positions.masked_fill(~out.valid, -1)
        for q in range(3):
            assert (kept == batch["query_positions"][:, q : q + 1]).any(1).all()
        # and the head reads exactly those rows: same logits as the head on the query's own state
        row = (out.positions == batch["query_positions"][:, :1]).float().argmax(1)
        direct = system.head(out.last_hidden_state[torch.arange(len(row)), row])
        assert torch.allclose(direct, logits[:, :, 0], atol=1e-6)


def test_synthetic_qa_answers_are_exact_spans_and_survive_the_gate():
    from datamodules import build_datamodule
    from lightning_modules import build_system
    from conf.compose import compose

    from .helpers import TINY

    tiny = [o for o in TINY if not o.startswith(("data.seq_len", "data.vocab_size"))]
    cfg = compose(["data=synthetic_qa", *tiny, "data.seq_len=96", "data.num_facts=3", "budget.ratio=0.2"])
    dm = build_datamodule(cfg)
    dm.setup()
    a = [e["context"] for e in dm.eval_examples("test").values()]
    dm2 = build_datamodule(cfg)
    dm2.setup()
    assert a == [e["context"] for e in dm2.eval_examples("test").values()]  # deterministic
    assert not set(a) & {e["context"] for e in dm.eval_examples("train").values()}  # no leakage
    for ex in dm.eval_examples("test").values():
        s = ex["answer_start"]
        assert ex["context"][s:s + len(ex["answer_text"])] == ex["answers"][0]
        key = ex["question"].split()[2]
        assert ex["context"].count(f"{key} is ") == 1  # the answer is decodable from the fact alone
    system = build_system(cfg, dm).eval()
    batch = next(iter(dm.test_dataloader()))
    assert (batch["start_positions"] > 0).all()  # every answer inside its window
    with torch.no_grad():
        start, end, out = system(batch["input_ids"], batch["attention_mask"], batch["protected"], mode="hard")
    assert start.shape == batch["input_ids"].shape  # drop-and-restore: a logit at every position
    assert out.achieved_retention[0] < 0.35  # but most tokens were physically dropped


@pytest.mark.slow
def test_synthetic_qa_trains_through_the_cli(tmp_path, monkeypatch, capsys):
    from commands import cli

    from .helpers import TINY

    monkeypatch.chdir(tmp_path)
    tiny = [o for o in TINY if not o.startswith(("data.seq_len", "data.vocab_size"))]
    assert cli.main(["train", "data=synthetic_qa", *tiny, "data.seq_len=96", "data.num_facts=3",
                     f"logging.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]) == 0
    assert "retained SQuAD F1" in capsys.readouterr().out
