"""The lab journal: schema, duplicate detection, skip / warn / rerun, crash recovery, the CLI."""

import contextlib
import io
import json
import re
import sqlite3
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from gaflax import journal as gj
from gaflax.config import Config
from gaflax.train import train_and_evaluate

CODE = {"git_sha": "abc", "dirty": False, "diff_sha256": None, "package": "0.1.0"}
DATA = {"files": {"cora/ind.cora.x": "00ff"}}


@pytest.fixture
def jr(tmp_path):
    return gj.Journal(tmp_path / "j.sqlite")


def _config(**changes):
    config = Config().to_dict()
    for dotted, value in changes.items():
        section, _, name = dotted.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


def _done(jr, config, results=None, data=DATA, code=CODE):
    decision = jr.begin(config, data, code=code)
    assert decision.run
    jr.finish(decision.run_id, results or {"test/accuracy": 0.8, "val/accuracy": 0.79})
    return decision.run_id


def test_schema(jr):
    db = sqlite3.connect(jr.path)
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    assert {"id", "key", "status", "hypothesis", "config", "data_fingerprint", "code_version", "device",
            "host", "pid", "run_dir", "started_at", "heartbeat_at", "finished_at", "results", "error"} <= columns
    assert db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()[0] == str(gj.SCHEMA_VERSION)
    with pytest.raises(sqlite3.IntegrityError):  # status is constrained
        db.execute("INSERT INTO runs (key, status, config, data_fingerprint, code_version, host, pid, started_at,"
                   " heartbeat_at) VALUES ('k', 'paused', '{}', '{}', '{}', 'h', 1, 0, 0)")
    db.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    db.commit()
    with pytest.raises(RuntimeError, match="schema version 99"):
        gj.Journal(jr.path)


def test_duplicate_is_skipped_with_the_earlier_results(jr):
    run_id = _done(jr, _config())
    decision = jr.begin(_config(), DATA, code=CODE)
    assert not decision.run
    assert "already recorded" in decision.message and "test/accuracy=0.8000" in decision.message
    assert decision.earlier["id"] == run_id and decision.earlier["results"]["test/accuracy"] == 0.8


def test_warn_and_rerun_run_again(jr):
    _done(jr, _config())
    warned = jr.begin(_config(), DATA, on_duplicate="warn", code=CODE)
    assert warned.run and "already recorded" in warned.message
    jr.finish(warned.run_id, {"test/accuracy": 0.81})
    quiet = jr.begin(_config(), DATA, on_duplicate="rerun", code=CODE)
    assert quiet.run and quiet.message == ""
    with pytest.raises(ValueError, match="on_duplicate='sometimes'"):
        jr.begin(_config(), DATA, on_duplicate="sometimes", code=CODE)


def test_what_makes_an_experiment_new(jr):
    _done(jr, _config())
    # Non-semantic keys do not make a new experiment...
    assert not jr.begin(_config(**{"trainer.progress": False, "dataset.root": "/elsewhere",
                                   "hypothesis": "same thing, new words"}), DATA, code=CODE).run
    # ... but the config, the data and the code do.
    assert jr.begin(_config(seed=1), DATA, code=CODE).run
    assert jr.begin(_config(**{"pool.alpha": 0.25}), DATA, code=CODE).run
    assert jr.begin(_config(), {"files": {"cora/ind.cora.x": "11ee"}}, code=CODE).run
    assert jr.begin(_config(), DATA, code={**CODE, "git_sha": "def"}).run
    assert jr.begin(_config(), DATA, code={**CODE, "dirty": True, "diff_sha256": "d1"}).run


def test_failed_runs_do_not_count(jr):
    decision = jr.begin(_config(), DATA, code=CODE)
    jr.fail(decision.run_id, "Traceback: boom")
    again = jr.begin(_config(), DATA, code=CODE)
    assert again.run and again.message == ""
    assert jr.get(decision.run_id)["status"] == "failed" and "boom" in jr.get(decision.run_id)["error"]


def test_a_crashed_run_is_detected_and_run_again(jr):
    decision = jr.begin(_config(), DATA, code=CODE)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sqlite3.connect(jr.path) as db:  # as if a process that has since died had claimed the run
        db.execute("UPDATE runs SET pid = ? WHERE id = ?", (int(dead.stdout), decision.run_id))
    again = jr.begin(_config(), DATA, code=CODE)
    assert again.run and "crashed" in again.message
    assert jr.get(decision.run_id)["status"] == "failed"


def test_runs_on_other_hosts_are_stale_only_without_heartbeat(jr):
    decision = jr.begin(_config(), DATA, code=CODE)
    with sqlite3.connect(jr.path) as db:
        db.execute("UPDATE runs SET host = 'elsewhere' WHERE id = ?", (decision.run_id,))
    busy = jr.begin(_config(), DATA, code=CODE)
    assert not busy.run and "running now" in busy.message
    with sqlite3.connect(jr.path) as db:
        db.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 3600 WHERE id = ?", (decision.run_id,))
    assert jr.begin(_config(), DATA, code=CODE).run


def test_concurrent_workers_claim_a_cell_once(jr):
    decisions = []

    def worker():
        decisions.append(gj.Journal(jr.path).begin(_config(), DATA, code=CODE))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(d.run for d in decisions) == 1


def test_train_and_evaluate_records_and_skips(tmp_path, capsys):
    jr = gj.Journal(tmp_path / "j.sqlite")
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 120, "task": "classification"}},
                               "model": {"hidden": 4, "heads": 2}, "hypothesis": "GA learns something",
                               "trainer": {"max_epochs": 3, "patience": 3, "progress": False}})
    first = train_and_evaluate(config, tmp_path / "a", journal=jr)
    record = jr.get(first["journal/run_id"])
    assert record["status"] == "done" and record["hypothesis"] == "GA learns something"
    assert record["data_fingerprint"]["generator"]["num_nodes"] == 120
    assert record["results"]["test/accuracy"] == first["test/accuracy"] and record["device"]
    assert set(record["code_version"]) == {"git_sha", "dirty", "diff_sha256", "package"}
    second = train_and_evaluate(config, tmp_path / "b", journal=jr)
    assert "already recorded" in capsys.readouterr().out
    assert second["journal/duplicate_of"] == record["id"] and second["test/accuracy"] == first["test/accuracy"]
    assert not (tmp_path / "b" / "metrics.jsonl").exists() and (tmp_path / "b" / "duplicate_of.json").exists()


def test_a_failing_run_is_recorded_as_failed(tmp_path, monkeypatch):
    import gaflax.train as train

    jr = gj.Journal(tmp_path / "j.sqlite")
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 120, "task": "classification"}},
                               "trainer": {"max_epochs": 2, "progress": False}})

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(train, "fit", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        train_and_evaluate(config, tmp_path / "a", journal=jr)
    (run,) = jr.runs()
    assert run["status"] == "failed" and "simulated" in run["error"]


@pytest.mark.parametrize("section, values", [("optimizer", {"lr": 1e30}), ("nan_feature", None)])
def test_a_run_whose_numbers_go_non_finite_fails_and_is_never_done(tmp_path, monkeypatch, section, values):
    """Loss or learned alphas that become NaN or inf stop the run with an error naming the values,
    the epoch and the settings; the journal records it failed, and no results are written. Before,
    these runs ended ``done`` at chance accuracy (an infinite lr or lr_mult is now refused by the
    config, tests/test_models.py)."""
    jr = gj.Journal(tmp_path / "j.sqlite")
    raw = {"dataset": {"name": "synthetic", "options": {"num_nodes": 120, "task": "classification"}},
           "model": {"hidden": 4, "heads": 2}, "trainer": {"max_epochs": 5, "progress": False}}
    if section == "nan_feature":  # data that reached training by another way than the checked loaders
        import gaflax.tasks as tasks
        import gaflax.train as train
        load = tasks.load_dataset

        def with_nan(config):
            ds = load(config)
            ds.graph.nodes[7, 0] = float("nan")
            return ds

        monkeypatch.setattr(train, "load_dataset", with_nan)
    else:
        raw[section] = values
    with pytest.raises(FloatingPointError, match=r"not finite at epoch \d+ \(optimizer.lr="):
        train_and_evaluate(Config.from_dict(raw), tmp_path / "a", journal=jr)
    (run,) = jr.runs()
    assert run["status"] == "failed" and "not finite" in run["error"]
    assert not (tmp_path / "a" / "results.json").exists() and (tmp_path / "a" / "metrics.jsonl").exists()


def _age_heartbeats(jr, seconds):
    with sqlite3.connect(jr.path) as db:
        db.execute("UPDATE runs SET heartbeat_at = heartbeat_at - ?", (seconds,))


def _heartbeats(jr):
    return {r["id"]: r["heartbeat_at"] for r in jr.runs()}


def test_heartbeats_are_rate_limited_per_run_not_per_journal(jr):
    a, b = (jr.begin(_config(**{"seed": s}), DATA, code=CODE).run_id for s in (0, 1))
    _age_heartbeats(jr, 3600)
    old = _heartbeats(jr)
    jr.heartbeat(a)
    jr.heartbeat(b)  # the same Journal, right after a's beat: b's is still written
    new = _heartbeats(jr)
    assert new[a] > old[a] + 3000 and new[b] > old[b] + 3000
    _age_heartbeats(jr, 3600)
    jr.heartbeat(a, b)  # within heartbeat_every of the last beats: nothing is written
    assert _heartbeats(jr) == {k: v - 3600 for k, v in new.items()}


def test_claim_beats_every_member_and_fails_the_unfinished_on_error(jr):
    experiments = [dict(config=_config(**{"seed": s}), data_fingerprint=DATA, code=CODE) for s in range(3)]
    with pytest.raises(RuntimeError, match="member 2 broke"):
        with jr.claim(experiments) as claim:
            assert claim.todo == [0, 1, 2]
            _age_heartbeats(jr, 3600)
            old = _heartbeats(jr)
            claim.heartbeat()
            assert all(_heartbeats(jr)[i] > old[i] + 3000 for i in old)  # every member, one statement
            claim.finish(0, {"test/accuracy": 0.5})
            raise RuntimeError("member 2 broke")
    status = {r["id"]: (r["status"], r["error"]) for r in jr.runs()}
    first, *rest = sorted(status)
    assert status[first] == ("done", None)
    assert all(status[i][0] == "failed" and "member 2 broke" in status[i][1] for i in rest)
    # The finished member is now a duplicate; the failed ones are claimed again.
    with jr.claim(experiments) as again:
        assert again.todo == [1, 2] and again.decisions[0].earlier["results"]["test/accuracy"] == 0.5
        for i in again.todo:
            again.finish(i, {"test/accuracy": 0.6})


def test_a_claim_left_without_results_is_failed(jr):
    with jr.claim([dict(config=_config(), data_fingerprint=DATA, code=CODE)]):
        pass
    (run,) = jr.runs()
    assert run["status"] == "failed" and run["error"] == "ended without results"


def _cli(*args, db, subprocess_run=False):
    """The journal CLI's exit code, stdout and stderr: in-process (``main``), or through
    ``python -m gaflax.journal`` in a fresh process (``subprocess_run``)."""
    argv = ["--db", str(db), *args]
    if subprocess_run:
        return subprocess.run([sys.executable, "-m", "gaflax.journal", *argv], capture_output=True, text=True,
                              timeout=120)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            gj.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_cli(jr, tmp_path):
    a = _done(jr, _config(), {"test/accuracy": 0.80, "val/accuracy": 0.79})
    b = _done(jr, _config(**{"pool.name": "ga", "pool.alpha": 0.25}), {"test/accuracy": 0.82, "val/accuracy": 0.8})
    listing = _cli("list", db=jr.path, subprocess_run=True)  # the module entry point, once
    assert listing.returncode == 0 and "weighted_sum" in listing.stdout and "ga" in listing.stdout
    filtered = json.loads(_cli("list", "--json", "--filter", "pool.name=ga", db=jr.path).stdout)
    assert [r["id"] for r in filtered] == [b]
    shown = json.loads(_cli("show", str(a), db=jr.path).stdout)
    assert shown["config"]["pool"]["name"] == "weighted_sum"
    compared = _cli("compare", str(a), str(b), db=jr.path).stdout
    assert "pool.alpha: 0.5 -> 0.25" in compared and "test/accuracy: 0.8000 -> 0.8200 (+0.0200)" in compared
    csv_out = tmp_path / "runs.csv"
    assert _cli("export", "--out", str(csv_out), db=jr.path).returncode == 0
    header, *rows = csv_out.read_text().splitlines()
    assert "config.pool.alpha" in header and "results.test/accuracy" in header and len(rows) == 2
    assert len(json.loads(_cli("export", "--format", "json", db=jr.path).stdout)) == 2
    missing = _cli("show", "99", db=jr.path)
    assert missing.returncode == 1 and "no run with id 99" in missing.stderr
    nothing = _cli("list", db=tmp_path / "absent.sqlite")
    assert nothing.returncode == 2 and "no journal at" in nothing.stderr


def test_invalidated_runs_leave_tables_and_run_again(jr, tmp_path):
    """After a bug fix, `invalidate` marks the spoiled runs failed: they leave `status=done` listings
    (which make_table reads), and the duplicate check no longer skips their experiments."""
    spoiled = _done(jr, _config(**{"pool.name": "ga"}), {"test/accuracy": 0.40})
    kept = _done(jr, _config(), {"test/accuracy": 0.80})
    sha = jr.get(spoiled)["code_version"]["git_sha"]
    out = _cli("invalidate", "--filter", f"code_version.git_sha={sha}", "--filter", "pool.name=ga",
               "--reason", "empty segments pooled to -69", db=jr.path)
    assert out.returncode == 0 and f"invalidated 1 run(s): [{spoiled}]" in out.stdout
    assert [r["id"] for r in jr.runs({"status": "done"})] == [kept]
    assert jr.get(spoiled)["error"] == "invalidated: empty segments pooled to -69"
    assert jr.begin(_config(**{"pool.name": "ga"}), DATA, code=CODE).run is True
    assert _cli("invalidate", "--filter", "pool.name=ga", "--reason", " ", db=jr.path).returncode == 1
    assert _cli("invalidate", "--reason", "why", db=jr.path).returncode == 2  # no filter: refused


@pytest.mark.parametrize("damage", ["garbage", "overwritten_pages"])
def test_a_corrupt_journal_is_named_and_never_overwritten(tmp_path, damage):
    """Before: 'database disk image is malformed', without the file's name or a way on."""
    path = tmp_path / "journal.sqlite"
    jr = gj.Journal(path)
    for seed in range(40):
        run = jr.begin({"seed": seed, "pad": "x" * 500}, {})
        jr.finish(run.run_id, {"val/accuracy": 0.5})
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = bytearray(b"this is not a database" * 100)
    else:
        raw[4096:4096 * 3] = b"\xff" * (4096 * 2)  # pages past the header
    path.write_bytes(bytes(raw))
    with pytest.raises(gj.JournalError, match=rf"journal {re.escape(str(path))} cannot be read.*\.recover"):
        journal = gj.Journal(path)
        journal.runs()
    assert path.read_bytes() == bytes(raw)  # kept as it was


def test_code_version_ignores_results_and_prose_but_not_code(tmp_path):
    """A journal committed under results/ grows while its runs go on; if its bytes counted as
    uncommitted code, every later run (and every resumed test) would get a new key."""
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    for path, text in (("gaflax/op.py", "x = 1\n"), ("results/ablations/j.sqlite", "a"), ("README.md", "a\n"),
                       ("docs/note.md", "a\n"), ("conf/model/gat.yaml", "hidden: 8\n")):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    clean = gj.code_version(tmp_path)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and len(clean["git_sha"]) == 40
    for path in ("results/ablations/j.sqlite", "README.md", "docs/note.md"):
        (tmp_path / path).write_text("changed\n")
    assert gj.code_version(tmp_path) == clean
    (tmp_path / "conf/model/gat.yaml").write_text("hidden: 16\n")
    config_changed = gj.code_version(tmp_path)
    assert config_changed["dirty"] is True and config_changed["diff_sha256"]
    (tmp_path / "gaflax/op.py").write_text("x = 2\n")
    code_changed = gj.code_version(tmp_path)
    assert code_changed["dirty"] is True and code_changed["diff_sha256"] != config_changed["diff_sha256"]
