#!/usr/bin/env bash
# Issue #22 section 2: a second worker for PROTEINS at 896ce32, beside select_graph_896ce32.sh, so that
# both cores work once the imbalance study is done: this one takes extended_ga, pna and genagg (the other
# script's PROTEINS sweep then finds them done and skips them; never start both on the same readout, as a
# candidate that the other worker is running is skipped, not waited for). Waits for the imbalance job to end
# (it finished at cedad2c, so a new session starts at once).
# Same journal; resumes.
echo 12 > /proc/self/autogroup
while pgrep -f imbalance_seeds.sh > /dev/null; do sleep 60; done
[ -d /work/run_896ce32 ] || git -C /work/main worktree add -f /work/run_896ce32 896ce32  # a new checkout has no worktree
export GAFLAX_DATA=/work/shared/data
cd /work/run_896ce32
/work/main/.venv/bin/python -m experiments.train -m experiment=select_zoo_graph dataset=proteins \
  readout=extended_ga,pna,genagg journal.path=/work/main/results/ablations/select_graph.sqlite \
  >> /work/main/results/ablations/select_graph_b.log 2>&1
