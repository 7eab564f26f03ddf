"""What the hard path keeps on the cued needle task (docs/results.md, "Does the context vector matter?").

    python scripts/cue_kept.py --budgets 0.1 0.2 0.3 results/seed*/needle_cue/checkpoints/*/best.ckpt

For each checkpoint of a `retention train experiment=needle_cue …` run (its config.yaml beside it)
and each budget ρ: the test split is regenerated from the run's data seed (the same sequences
`retention evaluate` scores), the encoder runs its hard path (exactly M = ⌈ρ·T⌉ tokens kept, [CLS]
and [SEP] included), and the kept positions are compared with where the cue and the needles are.
Printed (markdown, one row per run and ρ): the fraction of test sequences whose cue was kept, whose
cued needle was kept, both, and the mean number of the F needles kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from commands.checkpoints import load_checkpoint
from commands.runner import CONFIG_NEXT_TO_CHECKPOINT
from conf.compose import load_run_config
from datamodules import build_datamodule
from datamodules.needle import generate_needle
from datamodules.synthetic import split_seed
from lightning_modules import build_system
from retention.budget import Budget


def kept_stats(checkpoint: Path, budgets: list[float]) -> list[dict]:
    cfg = load_run_config(checkpoint.parent / CONFIG_NEXT_TO_CHECKPOINT)
    dm = build_datamodule(cfg)
    system = build_system(cfg, dm)
    system.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    system.eval()
    data = generate_needle(dm.spec, dm.config.test_size, split_seed(dm.config.seed, "test"))
    trained = system.encoder.budget
    rows = []
    for rho in budgets:
        system.encoder.budget = Budget(ratio=rho, schedule=trained.schedule, num_layers=trained.num_layers)
        with torch.no_grad():
            out = system.encoder(data["input_ids"], data["attention_mask"], mode="hard")
        kept = torch.zeros_like(data["attention_mask"], dtype=torch.bool)
        kept.scatter_(1, out.positions.masked_fill(~out.valid, 0), out.valid)
        cue = kept.gather(1, data["cue_position"].unsqueeze(1)).squeeze(1)
        needle = kept.gather(1, data["needle_positions"]).squeeze(1)
        rows.append({"run": f"{cfg.logging.run_name} seed={cfg.seed}", "ρ": rho, "M": int(out.valid.sum(1).max()),
                     "cue kept": cue.float().mean().item(), "cued needle kept": needle.float().mean().item(),
                     "both kept": (cue & needle).float().mean().item(),
                     "needles kept (of F)": kept.gather(1, data["family_positions"]).sum(1).float().mean().item()})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    args = ap.parse_args(argv)
    rows = [r for ck in args.checkpoints for r in kept_stats(ck, args.budgets)]
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
