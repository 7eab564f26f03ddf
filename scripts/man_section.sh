#!/usr/bin/env bash
# The real-text tables of docs/results.md ("Real text: which section of the manual?") for one seed:
#   scripts/man_section.sh SEED [OUT]
# Needs the pages: `python scripts/debian_text.py --out data/debian` (docs/data.md). Then:
#   1. stage 1: fine-tune the packaged MiniLM densely (experiment=man_section_pretrain);
#   2. stage 2, from that checkpoint (model.init_from): our gate at rho = 0.1 / 0.3 / 0.5, LTP, and the
#      ablations no_context, fixed_lambda, no_relaxation, straight_through at rho = 0.3;
#   3. `retention evaluate` on all of them and on the dense model at rho = 0.1 / 0.3 / 0.5 (the
#      heuristic selections random, first-M, L2 and attention received are swapped into each model).
# Tracked in ./results.db (MLflow experiment man-section-seed<SEED>; stage 1 in ...-pretrain).
# Set VARIANTS to run a subset of stage 2, e.g. VARIANTS="method=gate" scripts/man_section.sh 1, and EXTRA
# for overrides given to every training (a smoke run: EXTRA="trainer.max_steps=2 trainer.limit_val_batches=1").
set -euo pipefail
SEED=${1:-0}
OUT=${2:-results/seed$SEED/man_section}
RETENTION=${RETENTION:-$(command -v retention || echo .venv/bin/retention)}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/results.db}
exp="man-section-seed$SEED"
# (the preset starts the gates at P(kept) = rho, gate.start_at_budget)
VARIANTS=${VARIANTS:-"method=gate budget.ratio=0.1|method=gate budget.ratio=0.5|method=gate|method=ltp|ablation=no_context|ablation=fixed_lambda|ablation=no_relaxation|ablation=straight_through"}
# shellcheck disable=SC2086
"$RETENTION" train experiment=man_section_pretrain seed=$SEED logging.experiment="$exp" logging.run_name=dense \
  logging.checkpoint_dir="$OUT/checkpoints/dense" ${EXTRA:-}
dense=$(ls -t "$OUT"/checkpoints/dense/*/best.ckpt | head -1)
IFS='|' read -ra variants <<< "$VARIANTS"
for variant in "${variants[@]}"; do
  name=$(echo "$variant" | tr ' =' '_-')
  # shellcheck disable=SC2086
  "$RETENTION" train experiment=man_section $variant seed=$SEED model.init_from="$dense" logging.experiment="$exp" \
    logging.run_name="$name" logging.checkpoint_dir="$OUT/checkpoints/$name" ${EXTRA:-}
done
"$RETENTION" evaluate --experiment "$exp" --budgets 0.1 0.3 0.5 --throughput-batches 0 --out "$OUT"
