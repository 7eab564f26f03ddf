"""The hard (retained) forward with a host plan reads nothing back from the device.

On CUDA a read-back (``.item()``, ``bool(t)``, ``int(t)``, ``.cpu()``, ``.tolist()``, ``nonzero``,
boolean-mask indexing, one-argument ``torch.where``, ``unique``, and ``isin``, which can call it) waits for
every queued kernel. This CPU test makes each of those raise while the retained forward runs, and
checks that the forward with a :class:`retention.selection.HostPlan` gives exactly today's output
(which reads the widths back); then the same for the soft and dense paths, and for whole training,
validation and test steps of the Lightning systems, which get their plans from
:mod:`lightning_modules.host_plans`. A read-back inside a C++ op that the guard does not list
(as ``isin``'s was) stays invisible to it.

The calls are intercepted with a ``TorchFunctionMode`` (torch's public hook that sees every tensor
method and torch function, ``__bool__`` and ``__index__`` included) rather than by setting
attributes on ``torch.Tensor``: setting and then deleting ``Tensor.__getitem__`` leaves CPython's
sequence slot behind, and every later ``torch.tensor([0-d tensors])`` in the process fails.
"""

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.connectors import data_connector
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import WarningCache
from torch.overrides import TorchFunctionMode
from transformers import BatchEncoding

from conf.compose import compose
from datamodules import build_datamodule
from datamodules.loaders import DATASET_INDEX, HOST_VIEW, HostViewCollate, host_view
from lightning_modules import build_system
from retention.backbones import build_seq2seq
from retention.budget import Budget, keep_counts
from retention.encoder import RetentionEncoder
from tests.helpers import TINY
from tests.retention_fixtures import ARCHS, batch, tiny, wrap


class HostSync(AssertionError):
    """A call that would make the host wait for the device."""


_READBACKS = {
    torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.nonzero, torch.nonzero,
    torch.Tensor.masked_select, torch.masked_select, torch.Tensor.argwhere, torch.argwhere,
    torch.Tensor.unique, torch.unique, torch.Tensor.unique_consecutive, torch.unique_consecutive,
    torch.isin,  # with many test elements it sorts and calls unique (on CUDA a read-back of the output size)
}


def _is_bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class NoHostSync(TorchFunctionMode):
    """Raises :class:`HostSync` on every read-back above, on boolean-mask indexing and assignment,
    on one-argument ``torch.where`` and on ``repeat_interleave`` without ``output_size``; not while
    ``on_host`` is set (work on host tensors, which reads nothing back from a device)."""

    on_host = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.on_host:
            return func(*args, **kwargs)
        if func in _READBACKS:
            raise HostSync(f"host sync: {func.__name__}")
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _is_bool_index(args[1]):
            raise HostSync(f"host sync: boolean-mask {func.__name__}")
        if func is torch.where and len(args) + len(kwargs) == 1:
            raise HostSync("host sync: torch.where(condition)")
        if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and "output_size" not in kwargs \
                and isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor):
            raise HostSync("host sync: repeat_interleave without output_size")
        return func(*args, **kwargs)


@pytest.fixture
def no_sync():
    """A fresh guard (the reference forward and the host plan are built outside it)."""
    return NoHostSync()


def _plan(enc, ids, mask):
    prot = enc.protected_mask(ids) & mask.bool()
    return enc.host_plan(mask.sum(1).tolist(), prot.sum(1).tolist(), padded_length=ids.shape[1])


def _today_and_planned(enc, ids, mask, no_sync, plan, mode="hard", **kw):
    """(planned, today's) forward on ``mode`` on the same batch: today's path first, then the planned
    one with every read-back made to raise (the same seed for each, for the sampled gates of training)."""
    with torch.no_grad():
        torch.manual_seed(3)
        ref = enc(ids, mask, mode=mode, **kw)
        torch.manual_seed(3)
        with no_sync:
            return enc(ids, mask, mode=mode, plan=plan, **kw), ref


def _assert_same(out, ref):
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(out.positions, ref.positions) and torch.equal(out.valid, ref.valid)
    assert all(torch.equal(a, b) for a, b in zip(out.retained_counts, ref.retained_counts, strict=True))
    assert torch.equal(out.kept_fractions, ref.kept_fractions)


def test_the_guard_catches_todays_readbacks(no_sync):
    """Without a plan the hard path reads M_max back (``int(counts.max())``): the guard must see it."""
    enc = wrap(tiny("bert"), [1], 0.5)
    ids, mask = batch()
    with no_sync, torch.no_grad(), pytest.raises(HostSync):
        enc(ids, mask, mode="hard")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layers,schedule", [([1, 2], "linear"), ([0], "constant")])
@pytest.mark.parametrize("pad", [True, False])
def test_planned_hard_forward_reads_nothing_back_and_equals_todays(no_sync, arch, attn, layers, schedule, pad):
    enc = wrap(tiny(arch, attn=attn), layers, 0.4, schedule)
    ids, mask = batch(pad=pad)
    plan = _plan(enc, ids, mask)
    out, ref = _today_and_planned(enc, ids, mask, no_sync, plan, restore=True)
    _assert_same(out, ref)
    assert torch.equal(out.restored_hidden_state, ref.restored_hidden_state)
    # The widths are the exact budget's: M_k = clamp(⌈ρ_k·T_valid⌉, n_protected, T_valid), cumulative.
    lengths, n_prot = mask.sum(1), (enc.protected_mask(ids) & mask.bool()).sum(1)
    alive = lengths
    for k, width in enumerate(plan.widths):
        alive = torch.minimum(keep_counts(enc.budget.layer_ratio(k, lengths), lengths, n_prot), alive)
        assert torch.equal(out.retained_counts[k], alive) and width == int(alive.max())
    assert plan.full_input == (not pad) and out.last_hidden_state.shape[1] == plan.widths[-1]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode,training", [("soft", False), ("soft", True), ("dense", False)])
@pytest.mark.parametrize("pad", [True, False])
def test_planned_soft_and_dense_paths_read_nothing_back_and_equal_todays(no_sync, arch, attn, mode, training, pad):
    """Soft evaluation (the top-M masked in place: its width comes from the plan), training's sampled
    soft path and the dense path: the stock model gets the plan's key mask, not the 2-d mask it would
    read back (``padding_mask.all()``)."""
    enc = wrap(tiny(arch, attn=attn), [0, 2], 0.4, "linear").train(training)
    ids, mask = batch(pad=pad)
    out, ref = _today_and_planned(enc, ids, mask, no_sync, _plan(enc, ids, mask), mode=mode, restore=mode == "soft")
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state) and torch.equal(out.kept_fractions, ref.kept_fractions)
    if mode == "soft":
        assert torch.equal(out.gate_values, ref.gate_values) and torch.equal(out.restored_hidden_state, ref.restored_hidden_state)
        assert all(torch.equal(a, b) for a, b in zip(out.expected_retention, ref.expected_retention, strict=True))


@pytest.mark.parametrize("budget", [Budget(ratio=None, tokens=7), Budget(ratio=0.25, schedule="linear", num_layers=2),
                                    Budget(ratio=0.3, schedule="linear", num_layers=2, flops=0.45)])
def test_planned_forward_with_explicit_protected_mask_and_token_budget(no_sync, budget):
    """QA-style: a caller-given protected mask (a long protected prefix) and an absolute token budget
    (or a FLOPs budget, whose counts the plan carries from the host)."""
    enc = wrap(tiny("roberta"), list(range(budget.num_layers)), 0.5, budget.schedule)
    enc.budget = budget
    ids, mask = batch()
    prot = torch.zeros_like(mask, dtype=torch.bool)
    prot[:, :9] = True  # more than ⌈ρ·T_valid⌉ for some rows: n_protected decides M
    plan = enc.host_plan(mask.sum(1).tolist(), (prot & mask.bool()).sum(1).tolist(), padded_length=ids.shape[1])
    out, ref = _today_and_planned(enc, ids, mask, no_sync, plan, protected=prot)
    _assert_same(out, ref)


@pytest.mark.parametrize("arch", ["bart", "t5"])
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("mode", ["hard", "soft", "dense"])
def test_planned_forward_in_a_seq2seq_encoder(no_sync, arch, layer, mode):
    """BART / T5 encoder stacks take the wrapper's 4-d mask too (T5: the relative bias of the kept
    tokens' original positions is added to it)."""
    torch.manual_seed(0)
    stack = build_seq2seq("random", arch=arch, vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64,
                          max_positions=64, special_ids={"pad": 0, "bos": 5, "eos": 6, "decoder_start": 5}).eval().get_encoder()
    enc = RetentionEncoder(stack, [layer], Budget(ratio=0.3), protected_token_ids=[5, 6]).eval()
    torch.nn.init.normal_(enc.gates[0].v.weight, std=1.0)
    ids, mask = batch()
    plan = _plan(enc, ids, mask)
    out, ref = _today_and_planned(enc, ids, mask, no_sync, plan, mode=mode, restore=mode != "dense")
    _assert_same(out, ref)
    if mode != "dense":
        assert torch.equal(out.restored_hidden_state, ref.restored_hidden_state)


def test_threshold_ablation_plans_the_full_width(no_sync):
    """The threshold rule's counts depend on the scores: the plan keeps width T, an upper bound, and
    the kept tokens (the filled slots) are today's."""
    enc = wrap(tiny("bert"), [1], 0.5)
    enc.inference = "threshold"
    ids, mask = batch()
    plan = _plan(enc, ids, mask)
    assert plan.widths == (ids.shape[1],) and plan.full == (False,)
    out, ref = _today_and_planned(enc, ids, mask, no_sync, plan)
    assert torch.equal(out.retained_counts[0], ref.retained_counts[0])
    m = ref.last_hidden_state.shape[1]
    assert not out.valid[:, m:].any() and torch.equal(out.valid[:, :m], ref.valid)
    assert torch.equal(out.positions[:, :m][ref.valid], ref.positions[ref.valid])
    torch.testing.assert_close(out.last_hidden_state[:, :m][ref.valid], ref.last_hidden_state[ref.valid])


def test_a_plan_for_another_batch_or_budget_is_refused():
    enc = wrap(tiny("bert"), [1], 0.5)
    ids, mask = batch()
    plan = _plan(enc, ids, mask)
    wrong = enc.host_plan((mask.sum(1) - 1).tolist(), [2] * len(ids), padded_length=ids.shape[1])
    with torch.no_grad(), pytest.raises(ValueError, match="disagree"):
        enc(ids, mask, mode="hard", plan=wrong)
    enc.budget = Budget(ratio=0.3)
    with torch.no_grad(), pytest.raises(ValueError, match="another batch shape, budget"):
        enc(ids, mask, mode="hard", plan=plan)
    with pytest.raises(ValueError, match="protected_counts"):
        enc.host_plan(mask.sum(1).tolist())


@pytest.mark.parametrize("readback", [
    lambda x: bool(x.sum()), lambda x: int(x.max()), lambda x: float(x[0]), lambda x: x.sum().item(), lambda x: x.tolist(),
    lambda x: x.cpu(), lambda x: x.nonzero(), lambda x: x[x > 0], lambda x: x.__setitem__(x > 0, 1.0),
    lambda x: torch.where(x > 0), lambda x: [1, 2][x[0].long()], lambda x: x.repeat_interleave(x.long()),
    lambda x: torch.isin(x, x[:1]),
], ids=["bool", "int", "float", "item", "tolist", "cpu", "nonzero", "mask-index", "mask-assign", "where1", "index",
        "repeat_interleave", "isin"])
def test_the_guard_raises_on_each_readback_and_lets_device_work_through(readback):
    x = torch.ones(3)
    with NoHostSync(), pytest.raises(HostSync):
        readback(x)
    with NoHostSync():  # shapes, slices, integer-tensor indexing and three-argument where stay on the device
        y = torch.where(x[1:] > 0, x[torch.tensor([0, 1])], x[:2]).repeat_interleave(2)
    assert y.shape == (4,)


# ---------------------------------------------------------------- the systems' steps
# Training, validation and test batches carry a host view of their CPU tensors (datamodules/loaders.py),
# from which the step builds the host plan (lightning_modules/host_plans.py): every forward of a step
# (soft, hard, dense) then reads nothing back.

class GuardedSteps(L.Callback):
    """The read-back guard around every validation and test step (from the batch-start hook to the
    batch-end hook) and every training step (to the hook before the backward pass); ``steps`` counts
    the guarded steps. An exception inside a step leaves the guard before Lightning re-raises it.

    The step builds its host plan from the batch's host view, on the CPU tensors the collate made:
    host work, which on an accelerator reads nothing back, but which on this CPU test looks like a
    read-back to the guard. So while the run lasts, the system's ``host_plan_of`` runs with the guard
    lifted, and is handed the batch with every other tensor on the meta device: a plan counted from
    the device-side batch instead of the view fails (a meta tensor has no values to read)."""

    def __init__(self) -> None:
        self.guard, self.steps = None, 0

    def setup(self, trainer, pl_module, stage) -> None:
        build = type(pl_module).host_plan_of

        def host_plan_of(batch):
            guard = self.guard or NoHostSync()  # (outside a step: a guard that is not entered)
            guard.on_host = True
            try:
                elsewhere = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                return build(pl_module, elsewhere)
            finally:
                guard.on_host = False

        pl_module.host_plan_of = host_plan_of

    def teardown(self, trainer, pl_module, stage) -> None:
        del pl_module.host_plan_of  # the class's own again

    def _enter(self, *args, **kwargs) -> None:
        self.guard = NoHostSync()
        self.guard.__enter__()

    def _leave(self, *args, **kwargs) -> None:
        if self.guard is not None:
            self.guard.__exit__(None, None, None)
            self.guard = None
            self.steps += 1

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = _enter
    on_before_backward = on_validation_batch_end = on_test_batch_end = on_exception = _leave


TASKS = {  # padded batches (lengths vary), one gate or two
    "classification": [*TINY, "data.min_seq_len=20", "gate.layers=[0,1]", "budget.schedule=linear", "budget.ratio=0.4"],
    "qa": [*(o for o in TINY if not o.startswith(("data.seq_len", "data.vocab_size"))), "data=synthetic_qa",
           "data.seq_len=96", "data.num_facts=3", "budget.ratio=0.3"],
}


def _system(task: str, host_plans: bool):
    cfg = compose(TASKS[task])
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    for g in system.encoder.gates:  # informative random scores
        torch.nn.init.normal_(g.v.weight, std=1.0)
    system.host_plans = host_plans
    return dm, system


def _trainer(*callbacks, **kw):
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, callbacks=list(callbacks), **kw)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_validation_and_test_steps_read_nothing_back_and_log_todays_metrics(task):
    """Every val/test step (soft, hard and dense paths, QA's drop-and-restore included) under the
    guard, with host plans; the metrics equal those of today's path (no plans, widths read back)."""
    dm, system = _system(task, host_plans=True)
    guard = GuardedSteps()
    planned = _trainer(guard).validate(system, datamodule=dm, verbose=False)[0]
    planned |= _trainer(guard).test(system, datamodule=dm, verbose=False)[0]
    assert guard.steps == 2 * len(dm.val_dataloader()) and guard.guard is None
    system.host_plans = False
    today = _trainer().validate(system, datamodule=dm, verbose=False)[0]
    today |= _trainer().test(system, datamodule=dm, verbose=False)[0]
    assert planned == today and {"val/kept_fraction_l1", f"test/{system.METRIC}_hard"} <= set(today)
    with pytest.raises(HostSync):  # today's path does read back: the guard is live
        _trainer(GuardedSteps()).validate(system, datamodule=dm, verbose=False)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_training_steps_read_nothing_back_and_train_todays_weights(task):
    """Two gated training steps (the soft path with sampled gates, the Lagrangian) under the guard give
    exactly the weights of two steps on today's path."""
    weights = []
    for host_plans in (True, False):
        dm, system = _system(task, host_plans)
        guard = GuardedSteps()
        _trainer(*[guard] * host_plans, max_steps=2, limit_val_batches=0).fit(system, datamodule=dm)
        assert guard.steps == 2 * host_plans
        weights.append(system.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_host_view_stays_on_the_host_when_lightning_moves_the_batch_and_gives_the_plan():
    """The collate keeps the batch's CPU tensors in its host view; Lightning's own transfer moves every
    tensor of the batch but leaves the view on the host, and the system builds from it the plan of the
    host-side batch even with the model elsewhere (here the meta device: the protected ids come from
    the encoder's host copy)."""
    dm, system = _system("classification", host_plans=True)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    expected = system.encoder.host_plan(mask.sum(1), (system.encoder.protected_mask(ids) & mask.bool()).sum(1), ids.shape[1])
    system.to("meta")
    fields = {k: v for k, v in batch.items() if k != HOST_VIEW}
    hugging_face = HostViewCollate.with_view(BatchEncoding(dict(fields)))  # the Hugging Face collators' batch
    for collated in (batch, hugging_face):
        moved = move_data_to_device(collated, torch.device("meta"))
        assert moved["input_ids"].device.type == "meta" and moved[DATASET_INDEX].device.type == "meta"
        view = host_view(moved)
        assert view.keys() == fields.keys() and all(view[k] is v for k, v in fields.items())  # the CPU tensors
        plan = system.host_plan_of(moved)
        assert plan.lengths.device.type == "cpu" and torch.equal(plan.lengths, expected.lengths)
        assert torch.equal(plan.n_protected, expected.n_protected) and plan.n_protected.min() == 2  # [CLS], [SEP]
        assert (plan.widths, plan.full, plan.full_input) == (expected.widths, expected.full, expected.full_input)
        assert plan.budget == system.encoder.budget
    assert system.host_plan_of(fields) is None  # a batch built by hand: the forward reads back
    system.host_plans = False
    assert system.host_plan_of(moved) is None


TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def test_a_run_with_a_datamodule_gets_no_warning_about_the_batch_transfer_hooks(recwarn, monkeypatch):
    """Lightning warns when a LightningModule overrides a batch-transfer hook (``on_before_batch_transfer``
    and the two others) while a DataModule is passed; the systems override none (the plan is built in
    the step), so a validation run with a DataModule warns nothing about them. Lightning's
    ``warning_cache`` says each message once per process: a fresh one makes the warning visible to
    this test whatever ran before."""
    monkeypatch.setattr(data_connector, "warning_cache", WarningCache())
    dm, system = _system("classification", host_plans=True)
    assert not [hook for hook in TRANSFER_HOOKS if is_overridden(hook, system)]
    _trainer(limit_val_batches=1).validate(system, datamodule=dm, verbose=False)
    said = [str(w.message) for w in recwarn] + list(data_connector.warning_cache)
    assert not [message for message in said if any(hook in message for hook in TRANSFER_HOOKS)]


def test_lightning_infers_one_batch_size_from_a_batch_with_its_host_view(recwarn):
    """Lightning's batch-size inference (what ``self.log`` uses) walks the batch: the host view must not
    read as a second, unknown size (it warned "ambiguous collection" on every training run)."""
    from lightning.pytorch.utilities.data import extract_batch_size, warning_cache

    from datamodules.loaders import HostViewCollate

    items = [{"input_ids": torch.tensor([101, 7, 8, 102]), "attention_mask": torch.ones(4, dtype=torch.long)}] * 3
    batch = HostViewCollate()(items)
    warning_cache.clear()
    assert extract_batch_size(batch) == 3
    assert not [w for w in recwarn if "ambiguous collection" in str(w.message)]
