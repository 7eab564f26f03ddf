"""Mean ± standard deviation over seeds of `retention evaluate`'s tables (docs/results.md).

    python scripts/summarize_results.py results/seed*/needle1024/evaluation.csv > needle_table.md

One row per (run kind, method, budget): the run label without its seed, the selection method and
ρ; the task metric on the hard path, its % of dense, the achieved retention (mean over gated
layers) and the rough throughput ratio, each as mean ± std over the seeds found (n = their number).
"""

from __future__ import annotations

import sys

import pandas as pd


def summarize(paths: list[str]) -> pd.DataFrame:
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    df["kind"] = df["run"].str.replace(r"\s*seed=\d+", "", regex=True)
    df["retention"] = df[[c for c in df.columns if c.startswith("retention_l")]].mean(axis=1)
    cols = ["value", "pct_of_dense", "retention", "throughput_ratio"]
    g = df.groupby(["kind", "method", "budget"], sort=False)
    out = g[cols].agg(["mean", "std"])
    out[("n", "")] = g.size()
    return out


def to_markdown(table: pd.DataFrame, metric: str) -> str:
    def cell(mean: float, std: float) -> str:
        if pd.isna(mean):
            return "–"
        return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"

    head = f"| run | method | ρ | {metric} | % of dense | achieved retention | throughput ratio | seeds |"
    lines = [head, "|" + "---|" * 8]
    for (kind, method, budget), r in table.iterrows():
        pct = "–" if pd.isna(r[("pct_of_dense", "mean")]) else f"{r[('pct_of_dense', 'mean')]:.1f} ± {r[('pct_of_dense', 'std')]:.1f}"
        lines.append(f"| {kind} | {method} | {budget:g} | {cell(r[('value', 'mean')], r[('value', 'std')])} | {pct} | "
                     f"{cell(r[('retention', 'mean')], r[('retention', 'std')])} | "
                     f"{cell(r[('throughput_ratio', 'mean')], r[('throughput_ratio', 'std')])} | {int(r[('n', '')])} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    metric = pd.read_csv(argv[0])["metric"].iloc[0]
    print(to_markdown(summarize(argv), metric))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
