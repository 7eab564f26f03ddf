"""Mean ± standard deviation over seeds of `retention evaluate`'s tables (docs/results.md).

    python scripts/summarize_results.py results/seed*/needle1024/evaluation.csv > needle_table.md

One row per (what the run trained, method, budget): the run's ``trained`` label without its seed,
the selection method and ρ; the task metric on the hard path, its % of dense, the achieved
retention (mean over gated layers) and the rough throughput ratio, each as mean ± std over the seeds
found (n = their number). The table is :mod:`commands.evaluation_summary`'s, which the ablations
notebook also reads straight from the MLflow store.
"""

from __future__ import annotations

import sys

import pandas as pd

from commands.evaluation_summary import summarize, to_markdown


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    rows = pd.concat([pd.read_csv(p) for p in argv], ignore_index=True)
    print(to_markdown(summarize(rows), rows["metric"].iloc[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
