#!/usr/bin/env bash
# Issue #22 section 2, continued (replaces select_graph_8b01154.sh): ENZYMES' remaining readouts at
# 8b01154, where its mean, max and GA ran (sum ran at a9fe044); then all of PROTEINS at 896ce32, whose
# graph batches pad to percentiles of random batch sizes (1.21x PROTEINS' nodes instead of 1.51x; the same
# model up to rounding, README "Datasets"). Same journal; resumes.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 12 > /proc/self/autogroup
for commit in 8b01154 896ce32; do  # a new checkout has no worktrees
  [ -d /work/run_$commit ] || git -C /work/main worktree add -f /work/run_$commit $commit
done
export GAFLAX_DATA=/work/shared/data
PY=/work/main/.venv/bin/python
J=journal.path=/work/main/results/ablations/select_graph.sqlite
LOG=/work/main/results/ablations/select_graph.log
ENZYMES="experiment=select_zoo_graph dataset=enzymes model=gin model.batch_norm=true"
(cd /work/run_8b01154 && $PY -m experiments.train -m $ENZYMES readout=extended_ga,pna,genagg $J >> $LOG 2>&1)
cd /work/run_896ce32
$PY -m experiments.train -m experiment=select_zoo_graph dataset=proteins readout=sum,mean,max,ga,extended_ga,pna,genagg $J >> $LOG 2>&1
