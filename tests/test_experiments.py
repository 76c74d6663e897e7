"""The Hydra entry point, end to end, and the W&B writer's failure handling."""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import pytest

from experiments.loggers import WandbWriter
from experiments.train import _accept_plus_pool
from gaflax.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_train(*overrides, tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "experiments.train", *overrides, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_train_plus_pool_ga_debug_fast(tmp_path):
    proc = run_train("+pool=ga", "debug=fast", "pool.learn=true", "seed=3", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "synthetic / ga" in proc.stdout and "alphas" in proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 3 and config["pool"]["learn"] is True
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "versions.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == results["epochs"]


def test_train_with_wandb_logger_disabled(tmp_path):
    proc = run_train("debug=fast", "logger=wandb", "logger.mode=disabled", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("override, message", [
    ("pool.alpha=1.5", r"pool.alpha=1.5 must lie in [-1, 1]"),
    ("model.dropout=-0.2", "model.dropout=-0.2 must lie in [0, 1)"),
    ("pool=median", "Could not find 'pool/median'"),
])
def test_bad_values_fail_clearly_before_compiling(tmp_path, override, message):
    proc = run_train("debug=fast", override, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


def test_plus_pool_is_the_same_as_pool():
    assert _accept_plus_pool(["x", "+pool=ga", "pool.alpha=0.2", "+other=1"]) == ["x", "pool=ga", "pool.alpha=0.2", "+other=1"]


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
    from hydra import compose, initialize_config_dir

    from experiments.train import to_config

    conf = ROOT / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for group in ("dataset", "model", "pool", "loss", "decision", "optimizer", "trainer", "logger", "debug",
                      "experiment", "hparams_search"):
            for option in sorted(p.stem for p in (conf / group).glob("*.yaml")):
                cfg = compose(config_name="config", overrides=[f"{group}={option}"])
                to_config(cfg)


def test_journal_skips_a_repeated_run_and_a_multirun_resumes(tmp_path):
    journal = tmp_path / "journal.sqlite"
    first = run_train("debug=fast", "seed=0", f"journal.path={journal}", tmp_path=tmp_path / "first")
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_train("debug=fast", "seed=0", f"journal.path={journal}", tmp_path=tmp_path / "again")
    assert again.returncode == 0 and "already recorded" in again.stdout
    assert not (tmp_path / "again" / "metrics.jsonl").exists()
    # A multirun over seeds 0 and 1 (as if relaunched after an interruption) only trains seed 1.
    env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS="cpu")
    multi = subprocess.run([sys.executable, "-m", "experiments.train", "-m", "debug=fast", "seed=0,1",
                            f"journal.path={journal}", f"hydra.sweep.dir={tmp_path / 'multi'}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert multi.stdout.count("already recorded") == 1
    assert not (tmp_path / "multi" / "0" / "metrics.jsonl").exists()
    assert (tmp_path / "multi" / "1" / "metrics.jsonl").exists()
    from gaflax.journal import Journal

    assert [r["config"]["seed"] for r in Journal(journal).runs({"status": "done"})] == [0, 1]


def test_loss_option_trains(tmp_path):
    proc = run_train("debug=fast", "loss=ga", "loss.per_class=true", "loss.alpha=0.9", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert json.loads((tmp_path / "config.json").read_text())["loss"] == {
        "name": "ga", "gamma": 2.0, "alpha": 0.9, "per_class": True}
    assert set(results["baselines"]) == {"uniform", "prior", "zero_rule"}
    assert 0 <= results["test/balanced_accuracy"] <= 1


def _run(args, tmp_path, timeout=600):
    env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_optuna_search_runs_resumes_and_summarizes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    args = ["debug=fast", "pool=ga", "hparams_search=debug", f"hparams_search.storage={storage}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    first = _run([*args, "hparams_search.n_trials=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "0 of 2 trials done" in first.stdout and "search: best trial" in first.stdout
    assert "parameter importances" in first.stdout
    assert (tmp_path / "run" / "trial_000" / "results.json").exists()
    resumed = _run([*args, "hparams_search.n_trials=3"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 of 3 trials done" in resumed.stdout and resumed.stdout.count("search: trial ") == 1

    import optuna

    study = optuna.load_study(study_name="debug", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3


def test_bad_search_space_fails_clearly(tmp_path):
    proc = _run(["debug=fast", "hparams_search=debug", "+hparams_search.params.seed={type:gaussian}",
                 f"hparams_search.storage=sqlite:///{tmp_path / 'o.sqlite'}", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert proc.returncode != 0
    assert "hparams_search.params.seed.type='gaussian' must be one of" in proc.stderr
    assert not (tmp_path / "trial_000").exists()


def test_joblib_launcher_runs_a_local_multirun(tmp_path):
    proc = _run(["-m", "hydra/launcher=local", "debug=fast", "seed=0,1", f"hydra.sweep.dir={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all((tmp_path / str(i) / "results.json").exists() for i in (0, 1))


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the [cluster] extra")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        slurm = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        local = compose(config_name="config", overrides=["hydra/launcher=local"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.timeout_min == 60
    assert local.hydra.launcher._target_.endswith("JoblibLauncher")
