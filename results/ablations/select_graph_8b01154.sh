#!/usr/bin/env bash
# Issue #22 section 2, continued (replaces select_graph.sh, whose MUTAG runs and ENZYMES sum folds 0-8 ran at
# a9fe044): ENZYMES sum's remaining folds at a9fe044, where its others ran; then ENZYMES' other readouts and
# PROTEINS at 8b01154, whose graph evaluation builds its batches once (the same predictions, about 1.4x less
# time per epoch; it also has the zoo's faster GenAgg and PNA, equal to float32 rounding). Same journal; resumes.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 12 > /proc/self/autogroup
for commit in a9fe044 8b01154; do  # a new checkout has no worktrees
  [ -d /work/run_$commit ] || git -C /work/main worktree add -f /work/run_$commit $commit
done
export GAFLAX_DATA=/work/shared/data
PY=/work/main/.venv/bin/python
J=journal.path=/work/main/results/ablations/select_graph.sqlite
LOG=/work/main/results/ablations/select_graph.log
ENZYMES="experiment=select_zoo_graph dataset=enzymes model=gin model.batch_norm=true"
(cd /work/run_a9fe044 && $PY -m experiments.train -m $ENZYMES readout=sum $J >> $LOG 2>&1)
cd /work/run_8b01154
$PY -m experiments.train -m $ENZYMES readout=mean,max,ga,extended_ga,pna,genagg $J >> $LOG 2>&1
$PY -m experiments.train -m experiment=select_zoo_graph dataset=proteins readout=sum,mean,max,ga,extended_ga,pna,genagg $J >> $LOG 2>&1
