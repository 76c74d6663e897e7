#!/usr/bin/env bash
# Commit consistent snapshots of live journals (the sqlite backup API) without touching the files the
# jobs write: a checkout that is cut off keeps only what was committed. Usage, from anywhere:
#   bash results/ablations/snapshot_journal.sh "message" results/ablations/X.sqlite [...]
set -euo pipefail
cd /work/main
message=$1; shift
for journal in "$@"; do
  snapshot=$(mktemp /tmp/snapshot.XXXXXX)
  .venv/bin/python -c "import sqlite3, sys; s = sqlite3.connect(sys.argv[1]); d = sqlite3.connect(sys.argv[2]); s.backup(d); d.close(); s.close()" "$journal" "$snapshot"
  git update-index --add --cacheinfo "100644,$(git hash-object -w "$snapshot"),$journal"
  rm -f "$snapshot"
done
git commit -q -m "$message"
git log --oneline -1
