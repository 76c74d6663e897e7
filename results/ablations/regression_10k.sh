#!/usr/bin/env bash
# Issue #19: the authors' 10,000 steps (100 epochs of 100 steps), 5 vmapped seeds per cell, the extended GA
# first, then ga and log_ga; from a worktree at a9fe044. Resumes through the journal.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 0 > /proc/self/autogroup
[ -d /work/run_a9fe044 ] || git -C /work/main worktree add -f /work/run_a9fe044 a9fe044  # a new checkout has no worktree
cd /work/run_a9fe044
export GAFLAX_DATA=/work/shared/data
exec /work/main/.venv/bin/python -m experiments.train -m experiment=aggregator_regression \
  trainer.max_epochs=100 trainer.patience=100 pool=extended_ga,ga,log_ga \
  journal.path=/work/main/results/ablations/regression_10k.sqlite > /work/main/results/ablations/regression_10k.log 2>&1
