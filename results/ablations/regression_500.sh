#!/usr/bin/env bash
# Issue #19: the 500-step table's gaflax rows again, from the same worktree (a9fe044) as the 10,000-step runs,
# into a committed journal (the c7c719d journal behind the README's first table was lost with its checkout).
# 5 vmapped seeds per cell, the extended GA first. Resumes through the journal.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 0 > /proc/self/autogroup
[ -d /work/run_a9fe044 ] || git -C /work/main worktree add -f /work/run_a9fe044 a9fe044  # a new checkout has no worktree
cd /work/run_a9fe044
export GAFLAX_DATA=/work/shared/data
exec /work/main/.venv/bin/python -m experiments.train -m experiment=aggregator_regression trainer.max_epochs=5 \
  trainer.patience=5 pool=extended_ga,ga,log_ga,powermean,softmax_learned,mean \
  journal.path=/work/main/results/ablations/regression_500.sqlite > /work/main/results/ablations/regression_500.log 2>&1
