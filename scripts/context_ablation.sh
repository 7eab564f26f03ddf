#!/usr/bin/env bash
# docs/results.md, "Does the context vector matter?", for one seed:  scripts/context_ablation.sh SEED [OUT]
#   1. stage 1: learn the cue variant of the needle task densely (experiment=needle_cue_pretrain);
#   2. stage 2, from that checkpoint: our gate (method=gate) and the scorer without its context vector
#      (ablation=no_context), each trained at rho = 0.1 (experiment=needle_cue);
#   3. `retention evaluate` on both at rho = 0.1 / 0.2 / 0.3, with random and first-M swapped into
#      each trained model.
# Tracked in ./results.db (MLflow experiment results-needle_cue-seed<SEED>, stage 1 in
# results-needle_cue-seed<SEED>-pretrain); checkpoints and evaluation.{csv,md} go under OUT.
set -euo pipefail
SEED=${1:-0}
OUT=${2:-results/seed$SEED/needle_cue}
RETENTION=${RETENTION:-$(command -v retention || echo .venv/bin/retention)}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/results.db}
exp="results-needle_cue-seed$SEED"
ckdir="$OUT/checkpoints"
"$RETENTION" train experiment=needle_cue_pretrain seed=$SEED data.seed=$SEED logging.experiment="$exp-pretrain" \
  logging.run_name=pretrain logging.checkpoint_dir="$ckdir/pretrain"
dense=$(ls -t "$ckdir"/pretrain/*/last.ckpt | head -1)  # best.ckpt is picked by hard-path accuracy: meaningless while dense
for variant in method=gate ablation=no_context; do
  "$RETENTION" train experiment=needle_cue $variant seed=$SEED data.seed=$SEED model.init_from="$dense" \
    logging.experiment="$exp" logging.run_name="${variant#*=}" logging.checkpoint_dir="$ckdir"
done
"$RETENTION" evaluate --experiment "$exp" --budgets 0.1 0.2 0.3 --methods gate random first \
  --throughput-batches 0 --out "$OUT"
