#!/usr/bin/env bash
# Issue #22 sections 3-4: the imbalance study over 5 split seeds with the tree ensembles, from a worktree at
# a9fe044, then the Reddit graph. Resumes through its journal and Optuna storage.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 8 > /proc/self/autogroup
[ -d /work/run_a9fe044 ] || git -C /work/main worktree add -f /work/run_a9fe044 a9fe044  # a new checkout has no worktree
# Its outputs are committed as imbalance_seeds_a9fe044.tar.xz (run directories without metrics.jsonl): restore them.
[ -d /work/main/results/imbalance_seeds ] || tar -xJf /work/main/results/ablations/imbalance_seeds_a9fe044.tar.xz -C /work/main/results
cd /work/run_a9fe044
export GAFLAX_DATA=/work/shared/data
/work/main/.venv/bin/python -m experiments.imbalance_study --data-root /work/shared/data \
  --datasets keel_yeast4 keel_winequality_red_4 keel_page_blocks0 --models mlp xgboost lightgbm bagging \
  --seeds 0 1 2 3 4 --out /work/main/results/imbalance_seeds > /work/main/results/ablations/imbalance_seeds.log 2>&1
/work/main/.venv/bin/python -m experiments.imbalance_study --data-root /work/shared/data \
  --datasets reddit_anomaly --seeds 0 1 2 3 4 --out /work/main/results/imbalance_seeds \
  >> /work/main/results/ablations/imbalance_seeds.log 2>&1
