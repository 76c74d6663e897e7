"""The Hydra entry point, end to end, and the W&B writer's failure handling.

Two tests run the README's commands in a fresh process (a single run, and a resumed multirun on
the joblib launcher); the rest compose the config with Hydra's compose API and call the entry
point's functions in this process, which saves a JAX and Hydra import per test.
"""

import contextlib
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from experiments.loggers import WandbWriter
from experiments.train import _accept_plus_pool, to_config, train_one
from gaflax import pooling
from gaflax.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_train(*overrides, tmp_path, **env_vars):
    env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS="cpu", **env_vars)
    cmd = [sys.executable, "-m", "experiments.train", *overrides, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def hydra_conf():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield


def train_here(*overrides, out_dir) -> dict:
    """``python -m experiments.train <overrides>`` in this process: compose, then ``train_one``."""
    with hydra_conf():
        return train_one(compose(config_name="config", overrides=_accept_plus_pool(list(overrides))), out_dir)


@pytest.mark.slow
def test_train_plus_pool_ga_debug_fast(tmp_path):
    """The flagship: pool=ga learns alpha per head from 0.5 (before, it kept alpha fixed at 0.5,
    the weighted sum on positive messages), prints the learned alphas as a table, writes their
    trajectories into the run directory, and fills the persistent compilation cache."""
    cache = tmp_path / "jax-cache"
    proc = run_train("+pool=ga", "debug=fast", "seed=3", "journal.enabled=false", tmp_path=tmp_path / "run",
                     GAFLAX_COMPILATION_CACHE=str(cache))
    tmp_path = tmp_path / "run"
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "synthetic / ga" in proc.stdout
    assert "learned alphas at the best epoch" in proc.stdout and "head 7" in proc.stdout
    assert f"alpha trajectories: {tmp_path / 'alphas.png'}" in proc.stdout
    assert (tmp_path / "alphas.png").read_bytes()[:4] == b"\x89PNG"
    assert any(cache.glob("jit_train_step-*"))  # the entry point turned the cache on
    assert len(list((cache / "programs").glob("*.exported"))) == 2  # and the traced train and eval steps
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 3 and config["pool"]["learn"] is True and config["pool"]["scope"] == "head"
    assert config["pool"]["alpha"] == 0.5
    assert len(results["alphas"]["gat_0"]) == 8  # one alpha per head
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "versions.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == results["epochs"]


def test_train_with_wandb_logger_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = train_here("debug=fast", "logger=wandb", "logger.mode=disabled", "journal.enabled=false", out_dir=tmp_path)
    assert results["epochs"] >= 1 and (tmp_path / "results.json").exists()


@pytest.mark.parametrize("override, error, message", [
    ("pool.alpha=1.5", ValueError, r"pool.alpha=1.5 must lie in [-1, 1]"),
    ("readout.name=median", ValueError, "readout.name='median' is not a registered pooling operator"),
    ("model.dropout=-0.2", ValueError, "model.dropout=-0.2 must lie in [0, 1)"),
    ("pool.name=median", ValueError, "pool.name='median' is not a registered pooling operator"),
    ("pool=median", MissingConfigException, "Could not find 'pool/median'"),
])
def test_bad_values_fail_clearly_before_compiling(tmp_path, override, error, message):
    with pytest.raises(error) as caught:
        train_here("debug=fast", "pool=ga", override, out_dir=tmp_path)
    assert message in str(caught.value)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


def test_options_an_operator_does_not_have_cannot_be_set():
    """pool=max has no exponent, so its config group holds no alpha to override."""
    with hydra_conf(), pytest.raises(Exception, match=r"Could not override 'pool.alpha'"):
        compose(config_name="config", overrides=["pool=max", "pool.alpha=0.3"])


def test_plus_pool_is_the_same_as_pool():
    assert _accept_plus_pool(["x", "+pool=ga", "pool.alpha=0.2", "+other=1"]) == ["x", "pool=ga", "pool.alpha=0.2", "+other=1"]


@pytest.mark.parametrize("env, expected", [(None, "offline"), ("online", "online"), ("disabled", "disabled")])
def test_wandb_mode_from_the_environment_wins_and_init_is_bounded(tmp_path, monkeypatch, capsys, env, expected):
    """Before, WANDB_MODE=online was overridden by the config's offline without a word, and
    wandb.init could stall about 100 s without a network."""
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs))
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    WandbWriter({"mode": "offline"}, Config(), tmp_path)
    (kwargs,) = calls
    assert kwargs["mode"] == expected and kwargs["settings"].init_timeout == 15
    out = capsys.readouterr().out
    assert f"wandb: mode {expected}, from {'logger.mode' if env is None else 'WANDB_MODE'}" in out
    assert ("logger.mode=offline is overridden" in out) == (expected != "offline")


def test_wandb_failure_never_kills_training(tmp_path):
    writer = WandbWriter({"mode": "disabled"}, Config(), tmp_path)

    class Broken:
        def log(self, *args, **kwargs):
            raise RuntimeError("wandb exploded")

        def finish(self):
            raise RuntimeError("also broken")

    writer.run = Broken()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.log(0, {"train/loss": 1.0, "alphas": {"gat_0": [[0.1], [0.2]]}})
        writer.log(1, {"train/loss": 0.5})  # no longer tries
        writer.close()
    assert any("wandb log failed" in str(w.message) for w in caught)
    assert writer.run is None


def test_every_dataset_and_group_option_composes():
    """Every config file in every group composes into a valid typed Config."""
    conf = ROOT / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for group in ("dataset", "model", "pool", "readout", "loss", "decision", "optimizer", "trainer", "logger",
                      "debug", "experiment", "hparams_search"):
            for option in sorted(p.stem for p in (conf / group).glob("*.yaml")):
                cfg = compose(config_name="config", overrides=[f"{group}={option}"])
                to_config(cfg)


@pytest.mark.parametrize("override, available", [("experiment=ablation_nod", "ablation_node"),
                                                 ("hparams_search=cora_gaa", "cora_ga"), ("debug=fats", "fast")])
def test_a_misspelt_preset_is_an_error_that_lists_the_presets(override, available):
    """Before, the optional defaults skipped an unknown preset and the default run trained, exit 0."""
    with hydra_conf(), pytest.raises(MissingConfigException, match=rf"(?s)Could not find.*Available options.*{available}"):
        compose(config_name="config", overrides=[override])


def test_every_registered_operator_is_a_pool_and_readout_option():
    """A registry entry is enough: ``pool=<name>`` and ``readout=<name>`` compose for every
    operator, with or without a yaml file of its own."""
    with hydra_conf():
        for name in pooling.AGGREGATORS:
            for group in ("pool", "readout"):
                config = to_config(compose(config_name="config", overrides=[f"{group}={name}"]))
                assert getattr(config, group).name == name


def test_journal_skips_a_repeated_run(tmp_path, capsys):
    journal = tmp_path / "journal.sqlite"
    train_here("debug=fast", "seed=0", f"journal.path={journal}", out_dir=tmp_path / "first")
    again = train_here("debug=fast", "seed=0", f"journal.path={journal}", out_dir=tmp_path / "again")
    assert "already recorded" in capsys.readouterr().out and "journal/duplicate_of" in again
    assert not (tmp_path / "again" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_multirun_on_the_joblib_launcher_resumes_through_the_journal(tmp_path):
    """The README's multirun, in a fresh process: seed 0 is already in the journal (as if the
    sweep had been interrupted), so relaunching seeds 0 and 1 trains only seed 1."""
    journal = tmp_path / "journal.sqlite"
    train_here("debug=fast", "seed=0", f"journal.path={journal}", out_dir=tmp_path / "first")
    env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS="cpu")
    multi = subprocess.run([sys.executable, "-m", "experiments.train", "-m", "hydra/launcher=local", "debug=fast",
                            "seed=0,1", f"journal.path={journal}", f"hydra.sweep.dir={tmp_path / 'multi'}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert multi.stdout.count("already recorded") == 1
    assert not (tmp_path / "multi" / "0" / "metrics.jsonl").exists()
    assert (tmp_path / "multi" / "1" / "results.json").exists()
    from gaflax.journal import Journal

    assert [r["config"]["seed"] for r in Journal(journal).runs({"status": "done"})] == [0, 1]


def test_loss_option_trains(tmp_path):
    results = train_here("debug=fast", "loss=ga", "loss.per_class=true", "loss.alpha=0.9", "journal.enabled=false",
                         out_dir=tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["loss"] == {
        "name": "ga", "gamma": 2.0, "alpha": 0.9, "per_class": True}
    assert set(results["baselines"]) == {"uniform", "prior", "zero_rule"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == results["epochs"] and all(np.isfinite(r["train/loss"]) for r in rows)


def _search(*overrides, out_dir):
    from experiments.search import run_study

    with hydra_conf():
        cfg = compose(config_name="config", overrides=list(overrides))
        return run_study(cfg, list(overrides), out_dir, train_one)


@pytest.mark.slow
def test_optuna_search_runs_resumes_and_summarizes(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    args = ["debug=fast", "pool=ga", "hparams_search=debug", f"hparams_search.storage={storage}",
            f"journal.path={tmp_path / 'journal.sqlite'}"]
    _search(*args, "hparams_search.n_trials=2", out_dir=tmp_path / "run")
    first = capsys.readouterr().out
    assert "0 of 2 trials done" in first and "search: best trial" in first
    assert "parameter importances" in first
    assert (tmp_path / "run" / "trial_000" / "results.json").exists()
    _search(*args, "hparams_search.n_trials=3", out_dir=tmp_path / "run")
    resumed = capsys.readouterr().out
    assert "2 of 3 trials done" in resumed and resumed.count("search: trial ") == 1

    import optuna

    study = optuna.load_study(study_name="debug", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    # The smoke-test search moves something that changes the score (before: 0.359 for every trial).
    assert len({t.value for t in complete}) > 1, [t.value for t in complete]


def _dead_pid():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_resumed_search_continues_and_retries_the_killed_trial(tmp_path, capsys):
    """Killed after two trials (one more left running by the dead process, in Optuna and in the
    journal), then relaunched: the study ends with n_trials distinct configurations, the killed
    trial's configuration is tried again, and no journal run stays 'running'. Before, a resumed
    study drew its first trials' parameters again (same sampler seed), the journal skipped them
    as already recorded, and the killed trial was never retried."""
    import socket

    import optuna

    from experiments.search import run_study
    from gaflax.journal import Journal

    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    journal = Journal(tmp_path / "journal.sqlite")
    seen = []

    def fake_train(cfg, trial_dir):  # the objective depends on the parameters only
        seen.append((cfg.pool.alpha, cfg.optimizer.lr, cfg.loss.name))
        return {"val/accuracy": 0.5 + 0.1 * cfg.pool.alpha - cfg.optimizer.lr}

    args = ["debug=fast", "hparams_search=debug", f"hparams_search.storage={storage}"]
    with hydra_conf():
        run_study(compose(config_name="config", overrides=[*args, "hparams_search.n_trials=2"]), args,
                  tmp_path / "run", fake_train, journal=journal)
        # The process that ran trial 2 died: its Optuna trial and its journal run are left running.
        study = optuna.load_study(study_name="debug", storage=storage)
        killed = study.ask({"pool.alpha": optuna.distributions.FloatDistribution(-1, 1),
                            "optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True),
                            "loss": optuna.distributions.CategoricalDistribution(["ce", "focal"])})
        dead = _dead_pid()
        killed.set_user_attr("host", socket.gethostname())
        killed.set_user_attr("pid", dead)
        run = journal.begin({"seed": 0, "trial": killed.number}, {})
        with sqlite3.connect(journal.path) as db:
            db.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead, run.run_id))
        run_study(compose(config_name="config", overrides=[*args, "hparams_search.n_trials=6"]), args,
                  tmp_path / "run", fake_train, journal=journal)
    out = capsys.readouterr().out
    assert f"trial {killed.number} was left running by a dead process" in out
    study = optuna.load_study(study_name="debug", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    configurations = {tuple(sorted(t.params.items())) for t in complete}
    assert len(complete) == 6 and len(configurations) == 6
    assert tuple(sorted(killed.params.items())) in configurations  # retried
    assert len(set(seen)) == len(seen) == 6
    assert [r["status"] for r in journal.runs()] == ["failed"]


def test_bad_search_space_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"hparams_search.params.seed.type='gaussian' must be one of"):
        _search("debug=fast", "hparams_search=debug", "+hparams_search.params.seed={type:gaussian}",
                f"hparams_search.storage=sqlite:///{tmp_path / 'o.sqlite'}", out_dir=tmp_path)
    assert not (tmp_path / "trial_000").exists()


def test_launcher_configs_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the [cluster] extra")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        slurm = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        local = compose(config_name="config", overrides=["hydra/launcher=local"], return_hydra_config=True)
        command = ["trainer.distributed=true", "trainer.devices=all", "trainer.shard=data", "dataset=synthetic",
                   "dataset.options.level=graph"]
        hosts = compose(config_name="config", overrides=["hydra/launcher=slurm_multihost", *command],
                        return_hydra_config=True)
        config = to_config(compose(config_name="config", overrides=command))
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.timeout_min == 60
    assert local.hydra.launcher._target_.endswith("JoblibLauncher")
    # several hosts: one task per node, and the trainer settings of the preset's command are valid
    assert hosts.hydra.launcher.nodes == 2 and hosts.hydra.launcher.tasks_per_node == 1
    assert (config.trainer.distributed, config.trainer.devices, config.trainer.shard) == (True, "all", "data")


def test_compilation_cache_settings(tmp_path, monkeypatch):
    from experiments import runtime

    monkeypatch.setenv("GAFLAX_COMPILATION_CACHE", "0")
    assert runtime.compilation_cache_dir() is None
    monkeypatch.setenv("GAFLAX_COMPILATION_CACHE", str(tmp_path / "c"))
    assert runtime.compilation_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GAFLAX_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.compilation_cache_dir() == tmp_path / "xdg" / "gaflax" / "jax"


def test_fixed_alpha_presets_stay_fixed():
    """pool=ga learns alpha by default now; the named-mean presets keep it fixed."""
    with hydra_conf():
        assert to_config(compose(config_name="config", overrides=["pool=ga"])).pool.learn is True
        for preset, alpha in [("ga_min", -1.0), ("ga_harmonic", -0.5), ("ga_geometric", 0.0), ("ga_arithmetic", 0.5),
                              ("ga_max", 1.0)]:
            pool = to_config(compose(config_name="config", overrides=[f"pool={preset}"])).pool
            assert (pool.alpha, pool.learn) == (alpha, False), preset
        reddit = to_config(compose(config_name="config", overrides=["experiment=imbalance_reddit"]))
        assert reddit.pool.name == "ga" and reddit.pool.learn is False


def test_model_selection_never_reads_the_outer_test_fold(tmp_path, monkeypatch):
    """experiments/select.py on fold 2 of a synthetic graph set: the four candidates of the grid
    train with trainer.evaluate_test=false, and no batch of theirs (training or evaluation) holds
    a graph of the outer test fold; the best candidate by val/accuracy is then trained once with
    the test fold, which is batched only there. Every run is in the journal."""
    from omegaconf import OmegaConf

    from experiments.select import run_selection
    from gaflax import tasks
    from gaflax.data import load

    batched, phase = [], {}
    real_batches = tasks.gdata.iterate_batches

    def spy(ds, indices, *args, **kwargs):
        batched.append((phase["evaluate_test"], set(np.asarray(indices).tolist())))
        return real_batches(ds, indices, *args, **kwargs)

    def train_and_note(cfg, out_dir):
        phase["evaluate_test"] = cfg.trainer.evaluate_test
        results = train_one(cfg, out_dir)
        phase["runs"] = phase.get("runs", []) + [(cfg.optimizer.lr, cfg.model.hidden, results)]
        return results

    monkeypatch.setattr(tasks.gdata, "iterate_batches", spy)
    options = {"level": "graph", "num_graphs": 60, "task": "classification", "num_classes": 2}
    overrides = ["dataset=synthetic", "dataset.options.level=graph", "+dataset.options.num_graphs=60",
                 "dataset.options.num_classes=2", "model=gin", "readout=mean",
                 "trainer.max_epochs=3", "trainer.patience=3", "trainer.progress=false", "trainer.fold=2",
                 f"journal.path={tmp_path / 'journal.sqlite'}"]
    with hydra_conf():
        cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.set_struct(cfg, False)
        cfg.model_selection = {"direction": "maximize", "grid": {"optimizer.lr": [0.01, 0.001], "model.hidden": [4, 8]}}
        results = run_selection(cfg, overrides, tmp_path, train_and_note)

    test_fold = set(load("synthetic", **options).folds(seed=0)[2][2].tolist())
    sealed = [indices for evaluate_test, indices in batched if not evaluate_test]
    final = [indices for evaluate_test, indices in batched if evaluate_test]
    assert sealed and final
    assert all(not (indices & test_fold) for indices in sealed)  # selection never batched a test graph
    assert any(indices & test_fold for indices in final)  # the final run evaluates it (the spy sees it)

    runs = phase["runs"]
    assert [(lr, hidden) for lr, hidden, _ in runs[:4]] == [(0.01, 4), (0.01, 8), (0.001, 4), (0.001, 8)]
    assert all(not any(k.startswith("test/") for k in r) for *_, r in runs[:4])
    best = max(range(4), key=lambda i: runs[i][2]["val/accuracy"])
    assert results["model_selection"]["chosen"] == {"optimizer.lr": runs[best][0], "model.hidden": runs[best][1]}
    assert (runs[4][0], runs[4][1]) == (runs[best][0], runs[best][1]) and "test/accuracy" in results
    assert json.loads((tmp_path / "selection.json").read_text())["chosen"] == results["model_selection"]["chosen"]
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM runs")]
    assert statuses == ["done"] * 5


def test_model_selection_refuses_a_test_objective_and_an_empty_grid():
    from experiments.select import candidates, run_selection

    with pytest.raises(ValueError, match="model_selection.grid must map"):
        candidates({"grid": {}})
    with pytest.raises(ValueError, match="model_selection.grid.model.hidden must be a non-empty list"):
        candidates({"grid": {"model.hidden": []}})
    with hydra_conf():
        cfg = compose(config_name="config", overrides=["objective=test/accuracy"])
    with pytest.raises(ValueError, match="objective='test/accuracy'.*use a val/ metric"):
        run_selection(cfg, [], pathlib.Path("."), train_one=None)
