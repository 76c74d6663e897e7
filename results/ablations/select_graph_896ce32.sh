#!/usr/bin/env bash
# Issue #22 section 2, continued (replaces select_graph_8b01154.sh). ENZYMES' last readouts (extended_ga,
# pna, genagg) ran at 8b01154 from this script, as its mean, max and GA had (sum ran at a9fe044); ENZYMES was
# complete at d4954bd. PROTEINS runs at 896ce32, whose graph batches pad to percentiles of random batch sizes
# (1.21x PROTEINS' nodes instead of 1.51x; the same model up to rounding, README "Datasets"), as two workers:
# this one takes sum, mean, max and ga, select_graph_896ce32_b.sh the other three (never the same readout in
# both: a candidate the other worker is running is skipped, not waited for). Same journal; resumes.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 12 > /proc/self/autogroup
[ -d /work/run_896ce32 ] || git -C /work/main worktree add -f /work/run_896ce32 896ce32  # a new checkout has no worktree
export GAFLAX_DATA=/work/shared/data
cd /work/run_896ce32
/work/main/.venv/bin/python -m experiments.train -m experiment=select_zoo_graph dataset=proteins \
  readout=sum,mean,max,ga journal.path=/work/main/results/ablations/select_graph.sqlite \
  >> /work/main/results/ablations/select_graph.log 2>&1
