#!/usr/bin/env bash
# A second process for the same cells, the targets from the other end (the journal skips recorded ones).
# Issue #19 / the GenAgg fidelity finding: gaflax's GenAgg trained as the package runs (pool.inverse_loss=false),
# 500 steps, 5 vmapped seeds, all 13 targets; from a worktree at 727c84e. Resumes through the journal.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 0 > /proc/self/autogroup
[ -d /work/run_727c84e ] || git -C /work/main worktree add -f /work/run_727c84e 727c84e  # a new checkout has no worktree
cd /work/run_727c84e
export GAFLAX_DATA=/work/shared/data
exec /work/main/.venv/bin/python -m experiments.train -m experiment=aggregator_regression trainer.max_epochs=5 \
  trainer.patience=5 pool=genagg pool.inverse_loss=false dataset.options.target=logsumexp,harmean_mag,geomean_mag,prod_mag,rms,norm2,std,sum,mean,min_mag,max_mag \
  journal.path=/work/main/results/ablations/regression_500.sqlite > /work/main/results/ablations/regression_genagg_noinv2.log 2>&1
