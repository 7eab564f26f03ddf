#!/usr/bin/env bash
# The table of docs/results.md for one seed:  scripts/results.sh SEED [OUT]
# For each task (needle at T = 1024, ListOps): train our method, LTP, Longformer, BigBird and every
# ablation, then
# `retention evaluate` all of them (the heuristic baselines are swapped into our trained model)
# at rho = 0.1 / 0.3 / 0.5. Everything is tracked in ./results.db (MLflow, one experiment per task).
set -euo pipefail
SEED=${1:-0}
OUT=${2:-results/seed$SEED}
RETENTION=${RETENTION:-$(command -v retention || echo .venv/bin/retention)}  # the venv's when not activated
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/results.db}
for task in needle1024 listops; do
  exp="results-$task-seed$SEED"
  for variant in method=gate method=ltp method=longformer method=bigbird ablation=no_relaxation ablation=straight_through \
                 ablation=fixed_lambda ablation=threshold_inference ablation=no_context; do
    "$RETENTION" train experiment=$task $variant seed=$SEED data.seed=$SEED \
      logging.experiment="$exp" logging.run_name="${variant#*=}"
  done
  "$RETENTION" evaluate --experiment "$exp" --budgets 0.1 0.3 0.5 --out "$OUT/$task"
done
