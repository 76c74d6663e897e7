#!/usr/bin/env bash
# Issue #19: regression_10k.sh's sweep from the other end (the targets in reverse order), so that two
# processes share it; the journal skips the cells that are done or running. From a worktree at a9fe044.
echo 0 > /proc/self/autogroup
[ -d /work/run_a9fe044 ] || git -C /work/main worktree add -f /work/run_a9fe044 a9fe044  # a new checkout has no worktree
cd /work/run_a9fe044
export GAFLAX_DATA=/work/shared/data
exec /work/main/.venv/bin/python -m experiments.train -m experiment=aggregator_regression \
  trainer.max_epochs=100 trainer.patience=100 pool=extended_ga,ga,log_ga \
  dataset.options.target=logsumexp,harmean_mag,geomean_mag,prod_mag,rms,norm2,std,sum,mean,min_mag,max_mag,min,max \
  journal.path=/work/main/results/ablations/regression_10k.sqlite > /work/main/results/ablations/regression_10k_b.log 2>&1
