"""Lab journal: every run, its hypothesis, config, data, code version, device and results, in SQLite.

A run is identified by its *experiment key*: the SHA-256 of the semantic config (the config minus
keys that do not change the result, ``NON_SEMANTIC``), the data fingerprint (file hashes or the
generator's parameters) and the code version (git SHA, a hash of the uncommitted diff, and the
package version). Before training, ``Journal.begin`` looks the key up:

- an earlier run with that key is ``done``: with ``on_duplicate="skip"`` (the default) the run is
  not repeated; a line containing ``already recorded`` and the earlier results is printed and
  the earlier results are returned. ``"warn"`` prints the line and runs again anyway;
  ``"rerun"`` runs again quietly. So a multirun re-launched after an interruption finishes only
  the missing cells.
- an earlier run is ``running`` but its process is gone (same host, dead pid; or no heartbeat
  for ``stale_after`` seconds from another host): it crashed. It is marked ``failed`` and the
  experiment runs again.
- an earlier run is ``running`` and alive: another worker has it; skip (or run, with ``rerun``).

The check and the insert happen in one ``BEGIN IMMEDIATE`` transaction, so workers that share
one database (joblib, several machines on a network file system) never claim the same cell twice.

CLI: ``python -m gaflax.journal [--db PATH] list [--json] [--filter KEY=VALUE ...]``, ``show ID``,
``compare ID ID``, ``export [--format csv|json]`` and ``invalidate --filter KEY=VALUE --reason TEXT``
(marks runs that a bug spoiled as failed, so that tables skip them and they run again). The
default database is ``$GAFLAX_JOURNAL``, else ``journal.sqlite`` in the current directory.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

SCHEMA_VERSION = 1
ON_DUPLICATE = ("skip", "warn", "rerun")
STATUSES = ("running", "done", "failed")
#: Config keys that do not change what a run computes; left out of the experiment key.
# dataset.verify and dataset.nonfinite_features change no data by themselves: the data fingerprint
# holds the files' actual hashes, and records nonfinite_features when it replaced values.
NON_SEMANTIC = ("trainer.progress", "dataset.root", "dataset.verify", "dataset.nonfinite_features", "hypothesis")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,                 -- experiment key: sha256 of config, data and code
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    hypothesis TEXT,
    config TEXT NOT NULL,              -- JSON: the full resolved config
    data_fingerprint TEXT NOT NULL,    -- JSON
    code_version TEXT NOT NULL,        -- JSON: git_sha, dirty, diff_sha256, package
    device TEXT,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    run_dir TEXT,
    started_at REAL NOT NULL,          -- unix seconds
    heartbeat_at REAL NOT NULL,
    finished_at REAL,
    results TEXT,                      -- JSON, once done
    error TEXT                         -- once failed
);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs (key, status);
"""


def default_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GAFLAX_JOURNAL", "journal.sqlite"))


#: Paths whose uncommitted changes do not change a run's code version: results (the journals
#: committed under results/ grow while their runs go on, which made every later run a new key) and
#: prose. Git pathspecs, relative to the repository root.
NOT_CODE = (":(exclude)results", ":(exclude)docs", ":(exclude)*.md")


def code_version(repo: pathlib.Path | None = None) -> dict:
    """git SHA, whether the tree has uncommitted changes to code (and a hash of them; ``NOT_CODE``
    is left out), package version. ``repo``: the checkout (default: the one holding gaflax)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("gaflax")
    except PackageNotFoundError:
        package = None
    repo = pathlib.Path(__file__).resolve().parents[1] if repo is None else repo

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout

    try:
        sha = git("rev-parse", "HEAD").decode().strip()
        diff = git("diff", "HEAD", "--", ".", *NOT_CODE)
    except (OSError, subprocess.CalledProcessError):
        return {"git_sha": None, "dirty": None, "diff_sha256": None, "package": package}
    return {"git_sha": sha, "dirty": bool(diff), "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
            "package": package}


def _flatten(nested: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in nested.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def semantic_config(config: dict) -> dict:
    """The flattened config without the ``NON_SEMANTIC`` keys."""
    return {k: v for k, v in _flatten(config).items() if k not in NON_SEMANTIC}


def experiment_key(config: dict, data_fingerprint: dict, code: dict) -> str:
    payload = {"config": semantic_config(config), "data": data_fingerprint,
               "code": {k: code.get(k) for k in ("git_sha", "diff_sha256", "package")}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Decision:
    """What ``Journal.begin`` decided: run (with the new row's ``run_id``) or not (``earlier`` is
    the earlier run's row, whose ``results`` stand in for this run's)."""

    run: bool
    run_id: int | None = None
    earlier: dict | None = None
    message: str = ""


class JournalError(RuntimeError):
    """The journal file cannot be used (corrupt, or another schema); the message names it."""


class Journal:
    def __init__(self, path=None, *, stale_after: float = 600.0, heartbeat_every: float = 30.0):
        self.path = pathlib.Path(path) if path is not None else default_path()
        self.stale_after, self.heartbeat_every = stale_after, heartbeat_every
        self._last_beat: dict[int, float] = {}  # per run: a grid's members each get their own
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise JournalError(f"journal {self.path}: schema version {row[0]}, this gaflax reads "
                                   f"{SCHEMA_VERSION}; use another journal.path or migrate the file")

    @contextlib.contextmanager
    def _connect(self):
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)  # explicit transactions
        except sqlite3.DatabaseError as err:
            raise self._unreadable(err) from err
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):  # locked, busy, ...: not the file's fault
                raise
            raise self._unreadable(err) from err
        finally:
            db.close()

    def _unreadable(self, err) -> JournalError:
        """A corrupt file: say which, and how to go on without losing it (it is never overwritten)."""
        return JournalError(
            f"journal {self.path} cannot be read: {err}. The file is left as it is. To go on, start a "
            "new journal (journal.path=<new file>, or $GAFLAX_JOURNAL), and recover what can be read "
            f"with: sqlite3 {self.path} .recover | sqlite3 recovered.sqlite"
        )

    # -- recording ------------------------------------------------------------------------------
    def begin(self, config: dict, data_fingerprint: dict, *, on_duplicate: str = "skip", hypothesis=None,
              device=None, run_dir=None, code: dict | None = None) -> Decision:
        """Look the experiment up and, unless it is skipped, record it as ``running``."""
        if on_duplicate not in ON_DUPLICATE:
            raise ValueError(f"journal: on_duplicate={on_duplicate!r} must be one of {ON_DUPLICATE}")
        code = code_version() if code is None else code
        key = experiment_key(config, data_fingerprint, code)
        host, now = socket.gethostname(), time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the lookup and the insert are one atomic step
            try:
                message = ""
                for row in db.execute("SELECT * FROM runs WHERE key = ? AND status = 'running'", (key,)).fetchall():
                    if self._crashed(row, host, now):
                        db.execute("UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                                   (now, "crashed: found running with no live process", row["id"]))
                        message = f"journal: run {row['id']} of this experiment crashed; running it again"
                    elif on_duplicate != "rerun":
                        db.execute("COMMIT")
                        return Decision(False, earlier=_parse(row),
                                        message=f"journal: this experiment is running now as run {row['id']} "
                                                f"(pid {row['pid']} on {row['host']}); skipping")
                done = db.execute("SELECT * FROM runs WHERE key = ? AND status = 'done' ORDER BY id DESC LIMIT 1",
                                  (key,)).fetchone()
                if done is not None and on_duplicate != "rerun":
                    message = (f"journal: already recorded as run {done['id']} ({done['run_dir']}): "
                               f"{_brief(json.loads(done['results']))}")
                    if on_duplicate == "skip":
                        db.execute("COMMIT")
                        return Decision(False, earlier=_parse(done), message=message + "; skipping")
                    message += "; running it again (journal.on_duplicate=warn)"
                cursor = db.execute(
                    "INSERT INTO runs (key, status, hypothesis, config, data_fingerprint, code_version, device, host,"
                    " pid, run_dir, started_at, heartbeat_at) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, hypothesis, json.dumps(config, default=str), json.dumps(data_fingerprint, default=str),
                     json.dumps(code), device, host, os.getpid(), None if run_dir is None else str(run_dir), now, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return Decision(True, run_id=cursor.lastrowid, message=message)

    def reap(self) -> list[int]:
        """Record as failed every run left ``running`` by a process that no longer exists (on this
        host) or that stopped its heartbeat (elsewhere); returns their ids."""
        host, now = socket.gethostname(), time.time()
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE status = 'running'").fetchall()
            dead = [row["id"] for row in rows if self._crashed(row, host, now)]
            if dead:
                db.execute(f"UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id IN "
                           f"({', '.join('?' * len(dead))}) AND status = 'running'",
                           (now, "crashed: found running with no live process", *dead))
        return dead

    def _crashed(self, row, host, now) -> bool:
        if row["host"] == host:
            return not pid_alive(row["pid"])
        return now - row["heartbeat_at"] > self.stale_after

    def heartbeat(self, *run_ids: int):
        """Say these runs are alive, in one statement (rate-limited per run to one write per
        ``heartbeat_every`` seconds)."""
        now = time.time()
        due = [r for r in run_ids if now - self._last_beat.get(r, 0.0) >= self.heartbeat_every]
        if not due:
            return
        self._last_beat.update(dict.fromkeys(due, now))
        with self._connect() as db:
            db.execute(f"UPDATE runs SET heartbeat_at = ? WHERE id IN ({', '.join('?' * len(due))})", (now, *due))

    @contextlib.contextmanager
    def claim(self, experiments: list[dict], *, on_duplicate: str = "skip", device=None) -> Iterator["Claim"]:
        """Claim a group of runs (one, or a grid's members) for the duration of a ``with`` block.

        ``experiments``: per run, ``begin``'s arguments (``config``, ``data_fingerprint``,
        ``hypothesis``, ``run_dir``). The yielded ``Claim`` says which runs to train and holds
        the earlier results of those the journal skips; inside the block, ``heartbeat()`` marks
        every claimed run alive and ``finish(i, results)`` records one as done. When the block
        raises, every claimed run not yet finished is recorded as failed with the traceback; when
        it ends with some unfinished, those are failed as "ended without results".
        """
        decisions = [self.begin(on_duplicate=on_duplicate, device=device, **e) for e in experiments]
        claim = Claim(self, decisions)
        try:
            yield claim
        except BaseException:
            error = traceback.format_exc()
            for run_id in claim.unfinished():
                self.fail(run_id, error)
            raise
        for run_id in claim.unfinished():
            self.fail(run_id, "ended without results")

    def finish(self, run_id: int, results: dict):
        with self._connect() as db:
            db.execute("UPDATE runs SET status = 'done', results = ?, finished_at = ?, heartbeat_at = ? WHERE id = ?",
                       (json.dumps(results, default=float), time.time(), time.time(), run_id))

    def fail(self, run_id: int, error: str):
        with self._connect() as db:
            db.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                       (error[-4000:], time.time(), run_id))

    def invalidate(self, filters: dict, reason: str) -> list[int]:
        """Mark the ``done`` runs that match ``filters`` as ``failed`` with the error
        ``invalidated: <reason>``, for results a bug found later has spoiled: tables skip them, and
        the duplicate check runs those experiments again. Returns the ids."""
        if not filters or not reason.strip():
            raise ValueError("journal: invalidate needs at least one filter and a reason")
        ids = [run["id"] for run in self.runs({**filters, "status": "done"})]
        with self._connect() as db:
            db.executemany("UPDATE runs SET status = 'failed', error = ? WHERE id = ?",
                           [(f"invalidated: {reason}", run_id) for run_id in ids])
        return ids

    # -- reading --------------------------------------------------------------------------------
    def runs(self, filters: dict | None = None) -> list[dict]:
        """All runs, oldest first, as dicts with parsed JSON; ``filters`` match ``status``,
        ``hypothesis``, ``code_version.git_sha`` or any flattened config key (``dataset.name``),
        compared as strings."""
        with self._connect() as db:
            rows = [_parse(r) for r in db.execute("SELECT * FROM runs ORDER BY id").fetchall()]
        for name, wanted in (filters or {}).items():
            rows = [r for r in rows if str(_field(r, name)) == str(wanted)]
        return rows

    def get(self, run_id: int) -> dict:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"journal {self.path}: no run with id {run_id}")
        return _parse(row)


class Claim:
    """The runs a ``Journal.claim`` block trains (see there): ``decisions[i]`` is ``begin``'s
    decision for run ``i`` (its ``earlier`` row when skipped). Without a journal
    (``Claim(None, n)``) every run trains and nothing is recorded."""

    def __init__(self, journal: Journal | None, decisions: list[Decision] | int):
        self.journal = journal
        self.decisions = [Decision(True)] * decisions if isinstance(decisions, int) else decisions
        self._finished: set[int] = set()

    @property
    def todo(self) -> list[int]:
        """Indices of the runs to train."""
        return [i for i, d in enumerate(self.decisions) if d.run]

    def unfinished(self) -> list[int]:
        return [d.run_id for d in self.decisions if d.run_id is not None and d.run_id not in self._finished]

    def heartbeat(self):
        ids = self.unfinished()
        if self.journal is not None and ids:
            self.journal.heartbeat(*ids)

    def finish(self, i: int, results: dict) -> dict:
        """Record run ``i`` as done; returns its results with ``journal/run_id`` added."""
        run_id = self.decisions[i].run_id
        if self.journal is None or run_id is None:
            return results
        results = {**results, "journal/run_id": run_id}
        self.journal.finish(run_id, results)
        self._finished.add(run_id)
        return results


def _parse(row) -> dict:
    out = dict(row)
    for name in ("config", "data_fingerprint", "code_version", "results"):
        if out.get(name) is not None:
            out[name] = json.loads(out[name])
    return out


def _field(run: dict, name: str):
    if name in run and not isinstance(run[name], dict):
        return run[name]
    if name.startswith("results."):
        return (run.get("results") or {}).get(name[len("results."):])
    if name.startswith("code_version."):
        return run["code_version"].get(name[len("code_version."):])
    return _flatten(run["config"]).get(name)


def _brief(results: dict) -> str:
    keys = [k for k in ("test/accuracy", "val/accuracy", "test/f1", "best_epoch") if k in results]
    return ", ".join(f"{k}={_fmt(results[k])}" for k in keys)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# -- CLI ----------------------------------------------------------------------------------------
def _summary_row(run: dict) -> dict:
    c = _flatten(run["config"])
    results = run.get("results") or {}
    return {"id": run["id"], "status": run["status"], "dataset": c.get("dataset.name"), "pool": c.get("pool.name"),
            "alpha": c.get("pool.alpha"), "learn": c.get("pool.learn"), "seed": c.get("seed"),
            "val/accuracy": results.get("val/accuracy"), "test/accuracy": results.get("test/accuracy"),
            "hypothesis": run.get("hypothesis")}


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    cells = [[_fmt(r[c]) if r[c] is not None else "" for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def compare(a: dict, b: dict) -> dict:
    """The config keys that differ and the deltas (b - a) of the numeric results both share."""
    ca, cb = _flatten(a["config"]), _flatten(b["config"])
    config_diff = {k: (ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)}
    ra, rb = a.get("results") or {}, b.get("results") or {}
    deltas = {k: (ra[k], rb[k], rb[k] - ra[k]) for k in sorted(set(ra) & set(rb))
              if isinstance(ra[k], (int, float)) and isinstance(rb[k], (int, float))}
    return {"config": config_diff, "results": deltas}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gaflax.journal", description=__doc__.split("\n")[0])
    parser.add_argument("--db", default=None, help="journal file (default: $GAFLAX_JOURNAL or journal.sqlite)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="one line per run")
    p_list.add_argument("--json", action="store_true", help="print full records as JSON")
    p_list.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="status=done, dataset.name=cora, pool.name=ga, ... (repeatable)")
    p_show = sub.add_parser("show", help="everything recorded about one run")
    p_show.add_argument("id", type=int)
    p_cmp = sub.add_parser("compare", help="config diff and metric deltas of two runs")
    p_cmp.add_argument("ids", type=int, nargs=2)
    p_exp = sub.add_parser("export", help="all runs as CSV (flattened) or JSON")
    p_exp.add_argument("--format", choices=("csv", "json"), default="csv")
    p_exp.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    p_exp.add_argument("--out", default="-", help="file to write (default: stdout)")
    p_inv = sub.add_parser("invalidate", help="mark matching done runs as failed, e.g. after a bug fix")
    p_inv.add_argument("--filter", action="append", required=True, metavar="KEY=VALUE",
                       help="which runs (repeatable; all must match), e.g. code_version.git_sha=SHA pool.name=ga")
    p_inv.add_argument("--reason", required=True, help="why: stored as the runs' error")
    args = parser.parse_args(argv)

    path = pathlib.Path(args.db) if args.db else default_path()
    if not path.exists():
        parser.exit(2, f"journal: no journal at {path} (set --db or $GAFLAX_JOURNAL)\n")
    journal = Journal(path)
    filters = {}
    for item in getattr(args, "filter", []):
        if "=" not in item:
            parser.error(f"--filter {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        filters[k] = v
    try:
        if args.command == "list":
            runs = journal.runs(filters)
            print(json.dumps(runs, indent=2, default=str) if args.json else _table([_summary_row(r) for r in runs]))
        elif args.command == "show":
            print(json.dumps(journal.get(args.id), indent=2, default=str))
        elif args.command == "compare":
            a, b = (journal.get(i) for i in args.ids)
            diff = compare(a, b)
            print(f"config: run {a['id']} -> run {b['id']}")
            for k, (va, vb) in diff["config"].items():
                print(f"  {k}: {va!r} -> {vb!r}")
            print("results (delta = second - first):")
            for k, (va, vb, d) in diff["results"].items():
                print(f"  {k}: {_fmt(va)} -> {_fmt(vb)} ({d:+.4f})")
        elif args.command == "export":
            _export(journal.runs(filters), args.format, args.out)
        elif args.command == "invalidate":
            ids = journal.invalidate(filters, args.reason)
            print(f"invalidated {len(ids)} run(s): {ids}")
    except (KeyError, ValueError) as err:
        parser.exit(1, f"{err.args[0]}\n")


def _export(runs, fmt, out):
    stream = sys.stdout if out == "-" else open(out, "w", newline="")
    try:
        if fmt == "json":
            json.dump(runs, stream, indent=2, default=str)
            stream.write("\n")
            return
        flat = [{**{k: v for k, v in r.items() if k not in ("config", "results", "data_fingerprint", "code_version")},
                 **{f"config.{k}": v for k, v in _flatten(r["config"]).items()},
                 **{f"results.{k}": v for k, v in _flatten(r.get("results") or {}).items()},
                 "git_sha": r["code_version"].get("git_sha")} for r in runs]
        columns = list(dict.fromkeys(k for row in flat for k in row))
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
    finally:
        if stream is not sys.stdout:
            stream.close()


if __name__ == "__main__":
    main()
