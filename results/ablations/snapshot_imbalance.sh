#!/usr/bin/env bash
# Commit a consistent snapshot of the running imbalance study (results/imbalance_seeds) as
# results/ablations/imbalance_seeds_a9fe044.tar.xz without stopping it: the run directories are copied
# without their per-epoch metrics.jsonl, and the two SQLite files through the backup API.
#   bash results/ablations/snapshot_imbalance.sh "message"
set -euo pipefail
cd /work/main
tmp=$(mktemp -d /tmp/imbsnap.XXXXXX)
# tar exits 1 when a file changes while read (a run being written): that run is redone on resume anyway.
{ tar -C results --exclude=metrics.jsonl --exclude='*.sqlite' --exclude='*.sqlite-*' --warning=no-file-changed \
    -cf - imbalance_seeds || [ $? -eq 1 ]; } | tar -C "$tmp" -xf -
for db in journal.sqlite optuna.sqlite; do
  .venv/bin/python -c "import sqlite3, sys; s = sqlite3.connect(sys.argv[1]); d = sqlite3.connect(sys.argv[2]); s.backup(d); d.close(); s.close()" \
    results/imbalance_seeds/$db "$tmp/imbalance_seeds/$db"
done
tar -C "$tmp" -cJf results/ablations/imbalance_seeds_a9fe044.tar.xz imbalance_seeds
rm -rf "$tmp"
git add -f results/ablations/imbalance_seeds_a9fe044.tar.xz results/ablations/snapshot_imbalance.sh
git commit -q -m "$1"
git log --oneline -1
