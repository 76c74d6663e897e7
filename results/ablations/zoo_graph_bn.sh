#!/usr/bin/env bash
# Issue #18: the graph table's ENZYMES row with Xu et al.'s batch norm (GIN), 7 readouts x 10 folds,
# from a worktree at a9fe044 (fixed journal keys). Resumes through the journal.
# setsid gives each job its own autogroup, where nice works only inside the group: set the group's own niceness.
echo 0 > /proc/self/autogroup
[ -d /work/run_a9fe044 ] || git -C /work/main worktree add -f /work/run_a9fe044 a9fe044  # a new checkout has no worktree
cd /work/run_a9fe044
export GAFLAX_DATA=/work/shared/data
exec /work/main/.venv/bin/python -m experiments.train -m experiment=ablation_zoo_graph dataset=enzymes \
  model=gin model.batch_norm=true readout=sum,mean,max,ga,pna,extended_ga,genagg \
  journal.path=/work/main/results/ablations/zoo_graph.sqlite > /work/main/results/ablations/zoo_graph_bn.log 2>&1
