#!/usr/bin/env bash
# Superseded by select_graph_8b01154.sh (2026-12-02), which finishes what this one started; kept as the record of how MUTAG ran.
# Issue #22 section 2: GIN readouts with model selection per outer fold (experiment=select_zoo_graph), MUTAG,
# then ENZYMES (with Xu et al.'s batch norm), then PROTEINS; from a worktree at a9fe044. Resumes through the journal.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 12 > /proc/self/autogroup
[ -d /work/run_a9fe044 ] || git -C /work/main worktree add -f /work/run_a9fe044 a9fe044  # a new checkout has no worktree
cd /work/run_a9fe044
export GAFLAX_DATA=/work/shared/data
PY=/work/main/.venv/bin/python
J=journal.path=/work/main/results/ablations/select_graph.sqlite
R=readout=sum,mean,max,ga,extended_ga,pna,genagg
LOG=/work/main/results/ablations/select_graph.log
$PY -m experiments.train -m experiment=select_zoo_graph dataset=mutag $R $J >> $LOG 2>&1
$PY -m experiments.train -m experiment=select_zoo_graph dataset=enzymes model=gin model.batch_norm=true $R $J >> $LOG 2>&1
$PY -m experiments.train -m experiment=select_zoo_graph dataset=proteins $R $J >> $LOG 2>&1
