# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What is kept: the tokens each gated layer retains
#
# A trained run keeps, at each gated layer ℓ, exactly M_ℓ = ⌈ρ_ℓ·T_valid⌉ tokens on the hard path —
# the protected ones ([CLS], [SEP]) and the highest-scoring others, scored by the gate's
# log α_t = vᵀ tanh(W h_t + U c_t) + b (Rafiuddin & Khan, EMNLP 2025 Findings, arXiv 2510.08798; the
# Hard-Concrete gate of Louizos et al. 2018) — and physically removes the rest. This notebook loads
# runs by their MLflow run id (the checkpoint the run's tag `checkpoint_path` names, loaded with
# `weights_only=True` as `retention evaluate` does) and shows on real test examples:
#
# 1. the text with the kept tokens highlighted, one line per gated layer;
# 2. the distribution of the gate scores log α per gated layer, kept against dropped;
# 3. where the kept tokens sit in the sequence;
# 4. which tokens are kept most and least often (text models).
#
# The highlighted tokens are the hard path's own: the encoder's scores and kept counts pass through
# `retention.selection.select_top_m`, the function the hard path selects with, and a check below
# asserts that the result is exactly the set of positions the encoder's output holds.

# %% tags=["parameters"]
tracking_uri = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
run_ids = None  # MLflow run ids of trained runs with a checkpoint; None: the latest such run of `experiment`
experiment = "adaptive-retention"  # used when run_ids is None
n_examples = 3  # test examples shown as highlighted text, per run
n_batches = 2  # test batches behind the histograms and tables, per run
save_figure = None  # where to save the first run's score and position figure as PNG (None: not saved)

# %% tags=["setup"]
import html
import warnings
from collections import Counter
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when MLflow imports it in a kernel

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, Markdown, display
from mlflow.tracking import MlflowClient

from commands.checkpoints import load_checkpoint
from commands.runner import CONFIG_NEXT_TO_CHECKPOINT, default_tracking_uri
from conf.compose import load_run_config
from datamodules import build_datamodule
from datamodules.needle import NeedleDataModule
from lightning_modules import build_system
from lightning_modules.build import task_of
from retention.budget import keep_counts
from retention.selection import gather_tokens, select_top_m

torch.set_grad_enabled(False)
uri = default_tracking_uri(tracking_uri)
client = MlflowClient(uri)
if run_ids is None:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"experiment {experiment!r} not found at {uri}: pass run_ids")
    found = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
             if "checkpoint_path" in r.data.tags]
    if not found:
        raise ValueError(f"experiment {experiment!r} has no finished run with a checkpoint: pass run_ids")
    run_ids = [found[0].info.run_id]
print(f"tracking URI {uri}; runs {run_ids}")

# %% [markdown]
# ## Loading the runs
#
# For each run: the checkpoint of its tag `checkpoint_path` (the best validation epoch), the
# `config.yaml` written beside it, the data module and system built from that config
# (`lightning_modules.build_system`, as `retention train` and `retention evaluate` build them) and the
# weights loaded with `commands.checkpoints.load_checkpoint` (`weights_only=True`: no code in the file
# runs). Then `n_batches` test batches go through the hard path.

# %% tags=["load"]
def load_run(run_id):
    """(MLflow run, config, data module set up for test, system in eval mode) of a trained run."""
    run = client.get_run(run_id)
    ckpt = run.data.tags.get("checkpoint_path")
    if not ckpt or not Path(ckpt).is_file():
        raise ValueError(f"run {run_id} has no checkpoint on this machine (tag checkpoint_path={ckpt!r})")
    cfg = load_run_config(Path(ckpt).parent / CONFIG_NEXT_TO_CHECKPOINT)
    dm = build_datamodule(cfg)
    dm.setup("test")
    system = build_system(cfg, dm)
    system.load_state_dict(load_checkpoint(ckpt)["state_dict"])
    return run, cfg, dm, system.eval()


def hard_forward(system, dm, batch):
    """The hard path on a batch, exactly as the test loop runs it: (encoder output, predicted class or None)."""
    with system.selector(system.encoder):  # the run's own selection (our gate: its trained scorer)
        if task_of(dm) == "classification" and hasattr(system, "classify"):
            logits, out = system.classify(batch, "hard")
            return out, logits.argmax(-1)
        return system.encoder(batch["input_ids"], batch["attention_mask"], mode="hard"), None


def kept_per_gate(system, ids, mask, out):
    """Per gated layer k: (kept (B, T) bool, scores (B, T) with NaN for tokens that did not reach gate k),
    over the *original* positions. Gate k's scores and kept counts are the encoder's own
    (`out.log_alpha[k]`, `out.retained_counts[k]`) and pass through `select_top_m`, the hard path's
    selection, applied to the tokens that survived the gates before it."""
    b, t = ids.shape
    valid = mask.bool()
    protected = system.encoder.protected_mask(ids) & valid
    positions = torch.arange(t).expand(b, t)
    layers = []
    for scores, counts in zip(out.log_alpha, out.retained_counts):
        full_scores = torch.full((b, t + 1), float("nan")).scatter(1, torch.where(valid, positions, t), scores.float())[:, :t]
        sel = select_top_m(scores, valid, protected, counts)
        positions = gather_tokens(positions, sel.index)
        protected = gather_tokens(protected, sel.index) & sel.filled
        valid = sel.filled
        kept = torch.zeros(b, t + 1, dtype=torch.bool).scatter(1, torch.where(valid, positions, t), True)[:, :t]
        layers.append((kept, full_scores))
    return layers


def check_hard_path(system, ids, mask, out, layers):
    """Assert that the highlighted tokens are the hard path's: the last gate's kept set equals the positions
    the encoder's output holds; each gate keeps M_ℓ = clamp(⌈ρ_ℓ·T_valid⌉, n_protected, tokens left)
    (the top-M rule; the threshold-inference ablation keeps a different number); and every kept token
    outscores every dropped one at its gate. Returns the number of (sequence, gate) pairs checked."""
    b, t = ids.shape
    valid = mask.bool()
    n_valid = valid.sum(1)
    protected = system.encoder.protected_mask(ids) & valid
    from_output = torch.zeros(b, t + 1, dtype=torch.bool).scatter(1, torch.where(out.valid, out.positions, t), True)[:, :t]
    assert torch.equal(layers[-1][0], from_output), "the highlighted tokens differ from the positions the hard path kept"
    alive = valid
    for k, (kept, scores) in enumerate(layers):
        if system.encoder.inference == "top_m":
            m = keep_counts(system.encoder.budget.layer_ratio(k, n_valid), n_valid, protected.sum(1))
            assert torch.equal(kept.sum(1), torch.minimum(m, alive.sum(1))), f"gate {k}: not M = ceil(rho * T_valid) tokens"
        assert not (kept & ~alive).any(), f"gate {k} kept a token an earlier gate had removed"
        free = alive & ~protected  # the tokens gate k chose among
        lowest_kept = torch.where(kept & free, scores, torch.inf).amin(1)
        highest_dropped = torch.where(free & ~kept, scores, -torch.inf).amax(1)
        assert bool((lowest_kept >= highest_dropped).all()), f"gate {k}: a dropped token outscores a kept one"
        alive = kept
    return b * len(layers)


runs = {}
for run_id in run_ids:
    run, cfg, dm, system = load_run(run_id)
    records = []
    for i, batch in enumerate(dm.test_dataloader()):
        if i == n_batches:
            break
        out, pred = hard_forward(system, dm, batch)
        layers = kept_per_gate(system, batch["input_ids"], batch["attention_mask"], out)
        checked = check_hard_path(system, batch["input_ids"], batch["attention_mask"], out, layers)
        records.append({"batch": batch, "pred": pred, "layers": layers, "checked": checked})
    runs[run_id] = {"run": run, "cfg": cfg, "dm": dm, "system": system, "records": records,
                    "name": f"{run.info.run_name} [{run_id[:8]}]"}
    n = sum(r["checked"] for r in records)
    print(f"{runs[run_id]['name']}: data {cfg.data.name}, method {cfg.method}, gated layers {system.encoder.gate_layers}, "
          f"budget rho {cfg.budget.ratio}; checked {n} (sequence, gated layer) pairs: the highlighted tokens are "
          f"exactly the hard path's kept tokens (top-M by the gate's score)")

# %% [markdown]
# ## The kept tokens, highlighted
#
# Each example shows its label and the class the hard path predicts, then one line per gated layer:
# a **highlighted** token is kept at that layer (darker: a higher gate score log α within that line), a grey struck-out
# token was removed there or at an earlier gate, a **bold** token is protected ([CLS], [SEP]: always
# kept, counted in M). On the needle task the needle token, the one token that decides the label, is
# framed in red: a gate that has learned the task keeps it at every layer. For text models the tokens
# are the tokenizer's WordPiece pieces (`##` marks a piece that continues a word).

# %% tags=["highlight"]
def token_texts(dm, ids):
    """Printable tokens of one sequence: the tokenizer's pieces, or the needle task's names
    (N<c>: a needle of class c; d<id>: a distractor)."""
    if isinstance(dm, NeedleDataModule):
        cls = dm.spec.needle_class(ids)
        special = {0: "[PAD]", 1: "[CLS]", 2: "[SEP]"}
        return [special.get(int(i), f"N{int(c)}" if c >= 0 else f"d{int(i)}") for i, c in zip(ids, cls)]
    if hasattr(dm, "tokenizer"):
        return dm.tokenizer.convert_ids_to_tokens(ids.tolist())
    return [str(int(i)) for i in ids]


def is_decisive(dm, ids):
    """(T,) bool: the tokens that decide the label where the task defines them (needles), else none."""
    if isinstance(dm, NeedleDataModule):
        return dm.spec.needle_class(ids) >= 0
    return torch.zeros_like(ids, dtype=torch.bool)


def label_name(dm, y):
    names = getattr(dm, "label_names", None)
    return names[int(y)] if names else str(int(y))


def highlight(r, j):
    """HTML of example j of the first batch of run record r: one line per gated layer."""
    dm, system = r["dm"], r["system"]
    rec = r["records"][0]
    ids, mask = rec["batch"]["input_ids"][j], rec["batch"]["attention_mask"][j].bool()
    toks = token_texts(dm, ids)
    prot = system.encoder.protected_mask(ids[None])[0]
    decisive = is_decisive(dm, ids)
    head = f"<b>{html.escape(r['name'])}</b>, test example {j}: label <b>{html.escape(label_name(dm, rec['batch']['labels'][j]))}</b>"
    if rec["pred"] is not None:
        head += f", predicted (hard path) <b>{html.escape(label_name(dm, rec['pred'][j]))}</b>"
    lines = [f"<div style='margin:6px 0 2px 0'>{head}</div>"]
    for layer, (kept, scores) in zip(system.encoder.gate_layers, rec["layers"]):
        s = scores[j][mask]
        lo, hi = float(np.nanmin(s.numpy())), float(np.nanmax(s.numpy()))
        spans = []
        for t in range(int(mask.sum())):
            text = html.escape(toks[t])
            style = "padding:0 2px;margin:1px;border-radius:3px;"
            if kept[j, t]:
                shade = 0.25 + 0.6 * ((float(scores[j, t]) - lo) / (hi - lo) if hi > lo else 1.0)
                style += f"background:rgba(46,139,87,{shade:.2f});"
            else:
                style += "color:#999;text-decoration:line-through;"
            if prot[t]:
                style += "font-weight:bold;"
            if decisive[t]:
                style += "outline:2px solid #d62728;"
            spans.append(f"<span style='{style}'>{text}</span>")
        n_kept = int(kept[j].sum())
        lines.append(f"<div style='font-family:monospace;font-size:12px;line-height:1.9'>"
                     f"<span style='color:#555'>layer {layer}: kept {n_kept} of {int(mask.sum())}</span> " + " ".join(spans) + "</div>")
    return "".join(lines)


for r in runs.values():
    n = min(n_examples, len(r["records"][0]["batch"]["input_ids"]))
    display(HTML("<hr>".join(highlight(r, j) for j in range(n))))

# %% [markdown]
# ## Gate scores and kept positions
#
# **Top row: score distributions.** For each gated layer, the gate scores log α of the tokens that
# reached it (protected tokens left out: they are kept whatever their score), split into the kept
# (green) and the removed (grey). Because the hard path keeps the top M_ℓ by score, the two
# histograms meet at one per-sequence cut-off; they overlap a little only because the cut-off varies
# between sequences (the y axis is logarithmic: the removed tokens outnumber the kept). A wide gap between the two modes means the gate is confident; one mode straddling
# the cut-off means the selection is close to arbitrary there. On the needle task the needles' scores
# are marked in red.
#
# **Bottom row: where the kept tokens are.** How many tokens are kept at each position of the input
# (green bars) against how many sequences have a real token there (grey outline), over the same test
# batches. A flat ratio means the gate keeps by content, not position; a pile-up at the start means it
# behaves like first-M. Needle positions (red) are spread uniformly by construction.

# %% tags=["figures"]
def score_and_position_figure(r):
    dm, system = r["dm"], r["system"]
    gates = system.encoder.gate_layers
    fig, axes = plt.subplots(2, len(gates), figsize=(5.2 * len(gates), 6.4), squeeze=False)
    t_max = max(rec["batch"]["input_ids"].shape[1] for rec in r["records"])
    for k, layer in enumerate(gates):
        kept_s, dropped_s, decisive_s = [], [], []
        kept_pos, valid_pos, decisive_pos = [], [], []
        for rec in r["records"]:
            ids, mask = rec["batch"]["input_ids"], rec["batch"]["attention_mask"].bool()
            kept, scores = rec["layers"][k]
            free = ~torch.isnan(scores) & ~system.encoder.protected_mask(ids)
            decisive = is_decisive(dm, ids)
            kept_s.append(scores[kept & free])
            dropped_s.append(scores[free & ~kept])
            decisive_s.append(scores[free & decisive])
            pos = torch.arange(ids.shape[1]).expand_as(ids)
            kept_pos.append(pos[kept])
            valid_pos.append(pos[mask])
            decisive_pos.append(pos[decisive])
        kept_s, dropped_s, decisive_s = (torch.cat(x).numpy() for x in (kept_s, dropped_s, decisive_s))
        ax = axes[0, k]
        both = np.concatenate([kept_s, dropped_s])
        bins = np.linspace(both.min(), both.max(), 31) if both.size and both.max() > both.min() else 10
        ax.hist([kept_s, dropped_s], bins=bins, stacked=True, color=["#2e8b57", "#aaaaaa"],
                label=[f"kept ({kept_s.size})", f"removed ({dropped_s.size})"])
        if decisive_s.size:
            ax.plot(decisive_s, np.full_like(decisive_s, 0.7), "|", color="#d62728", markersize=14, mew=2,
                    label=f"needles ({decisive_s.size})")
        ax.set_yscale("log")  # the removed tokens outnumber the kept ones (1 − ρ against ρ); the needles are a few
        ax.set(xlabel="gate score log α (the top M are kept)", ylabel="tokens (log scale)", title=f"layer {layer}: gate scores")
        ax.legend(fontsize=8)
        ax = axes[1, k]
        edges = np.arange(t_max + 1) - 0.5 if t_max <= 128 else np.linspace(-0.5, t_max - 0.5, 65)
        ax.hist(torch.cat(kept_pos).numpy(), bins=edges, color="#2e8b57", label="kept")
        ax.hist(torch.cat(valid_pos).numpy(), bins=edges, histtype="step", color="#666666", label="real tokens")
        dpos = torch.cat(decisive_pos).numpy()
        if dpos.size:
            ax.hist(dpos, bins=edges, histtype="step", color="#d62728", lw=1.5, label="needles")
        ax.set(xlabel="position in the input sequence", ylabel="tokens (over the test batches)", title=f"layer {layer}: kept positions")
        ax.legend(fontsize=8)
    fig.suptitle(f"{r['name']}: {r['cfg'].data.name}, ρ = {r['cfg'].budget.ratio}, {sum(len(rec['batch']['input_ids']) for rec in r['records'])} test sequences")
    fig.tight_layout()
    return fig


for i, r in enumerate(runs.values()):
    fig = score_and_position_figure(r)
    if save_figure and i == 0:
        Path(save_figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_figure, dpi=120, bbox_inches="tight")
    plt.show()

# %% [markdown]
# ## Per gated layer: how much is kept, and is the decisive token among it
#
# One row per run and gated layer over the same test batches: the budget's ρ_ℓ, the mean real length
# T_valid, the mean number kept M and the achieved kept fraction M / T_valid (≈ ρ_ℓ, a little above it
# from the ceiling and the protected tokens), the hard path's accuracy on these sequences, and on the
# needle task the fraction of needles still kept at that layer (random selection would keep about
# ρ_ℓ of them).

# %% tags=["per_layer"]
rows = []
for r in runs.values():
    for k, layer in enumerate(r["system"].encoder.gate_layers):
        n_valid, n_kept, needles, needles_kept, correct, total = [], [], 0, 0, 0, 0
        for rec in r["records"]:
            ids, mask = rec["batch"]["input_ids"], rec["batch"]["attention_mask"].bool()
            kept = rec["layers"][k][0]
            n_valid.append(mask.sum(1))
            n_kept.append(kept.sum(1))
            decisive = is_decisive(r["dm"], ids)
            needles += int(decisive.sum())
            needles_kept += int((decisive & kept).sum())
            if rec["pred"] is not None:
                correct += int((rec["pred"] == rec["batch"]["labels"]).sum())
                total += len(ids)
        n_valid, n_kept = torch.cat(n_valid).float(), torch.cat(n_kept).float()
        rows.append({
            "run": r["name"], "data": r["cfg"].data.name, "gated layer": layer,
            "rho_l": float(r["system"].encoder.budget.layer_ratio(k, n_valid.long()).mean()),
            "sequences": len(n_valid), "mean T_valid": float(n_valid.mean()), "mean kept M": float(n_kept.mean()),
            "kept fraction": float((n_kept / n_valid).mean()),
            "hard accuracy": correct / total if total else float("nan"),
            "needles kept": needles_kept / needles if needles else float("nan"),
        })
per_layer = pd.DataFrame(rows)
print(per_layer.to_markdown(index=False, floatfmt=".4g"))

# %% [markdown]
# ## Text models: which tokens are kept most and least often
#
# For runs with a tokenizer (real text), every token type seen at least 3 times in the test batches
# (protected tokens left out), ranked by how often the last gated layer kept it. A model that has
# learned what decides the label keeps those words (on a sentiment task: the sentiment words) and
# drops fillers.

# %% tags=["tokens"]
for r in runs.values():
    if not hasattr(r["dm"], "tokenizer"):
        continue
    seen, kept_n = Counter(), Counter()
    for rec in r["records"]:
        ids, mask = rec["batch"]["input_ids"], rec["batch"]["attention_mask"].bool()
        kept = rec["layers"][-1][0]
        free = mask & ~r["system"].encoder.protected_mask(ids)
        for row_ids, row_free, row_kept in zip(ids, free, kept):
            toks = r["dm"].tokenizer.convert_ids_to_tokens(row_ids[row_free].tolist())
            seen.update(toks)
            kept_n.update(tok for tok, k in zip(toks, row_kept[row_free].tolist()) if k)
    table = pd.DataFrame([{"token": tok, "seen": n, "kept": kept_n[tok], "kept fraction": kept_n[tok] / n}
                          for tok, n in seen.items() if n >= 3]).sort_values(["kept fraction", "seen"], ascending=False)
    display(Markdown(f"**{r['name']}**, last gated layer {r['system'].encoder.gate_layers[-1]}: the 10 most and the 10 least kept tokens"))
    print(pd.concat([table.head(10), table.tail(10)]).to_markdown(index=False, floatfmt=".3g"))
