"""Regression (the synthetic aggregator benchmark): training, metrics, settings that do not fit,
and the point of the benchmark: a learned GA recovers the exponent that generated the targets."""

import json

import numpy as np
import pytest

from gaflax.config import Config
from gaflax.train import train_and_evaluate, train_grid

# The ablation_synthetic preset, smaller: one aggregate-first GA layer without attention.
RAW = {"dataset": {"name": "synthetic", "normalize_features": False,
                   "options": {"task": "regression", "num_nodes": 1000, "alpha": -0.5}},
       "model": {"num_layers": 1, "heads": 1, "out_heads": 1, "attention": False, "aggregate_first": True,
                 "add_self_loops": False, "dropout": 0.0, "attention_dropout": 0.0,
                 "message_dropout": 0.0},
       "pool": {"name": "ga", "alpha": 0.5, "learn": True, "positive": "relu_eps"},
       "loss": {"name": "mse"}, "optimizer": {"lr": 0.02, "weight_decay": 0.0},
       "trainer": {"max_epochs": 1500, "patience": 300, "monitor": "loss", "progress": False}}


def _config(**sections):
    raw = {k: dict(v) for k, v in RAW.items()}
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return Config.from_dict(raw)


@pytest.mark.slow
def test_a_learned_ga_recovers_the_true_exponent(tmp_path):
    results = train_and_evaluate(_config(), tmp_path)
    assert results["alphas"]["gat_0"] == pytest.approx(-0.5, abs=0.1)  # from 0.5, the arithmetic mean
    assert results["test/r2"] > 0.99 and results["test/rmse"] < results["baselines"]["train_mean"]["rmse"] / 10
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "val/accuracy" not in rows[0] and np.isfinite(rows[-1]["val/loss"])


@pytest.mark.slow
def test_regression_grid_members_equal_sequential_runs(tmp_path):
    short = {"max_epochs": 30, "patience": 30}
    grid = train_grid(_config(trainer={**short, "vmap": "seeds", "num_members": 2}), tmp_path / "grid")
    sequential = train_and_evaluate(_config(trainer=short), tmp_path / "seq")
    assert grid[0]["best_epoch"] == sequential["best_epoch"]
    assert grid[0]["test/rmse"] == pytest.approx(sequential["test/rmse"], rel=1e-4)


@pytest.mark.parametrize("section, values, message", [
    ("loss", {"name": "ce"}, "loss.name='ce' does not fit the regression dataset"),
    ("trainer", {"monitor": "accuracy"}, "trainer.monitor='accuracy' does not fit the regression dataset"),
    ("decision", {"threshold": "tuned"}, "decision.threshold='tuned' does not fit the regression dataset"),
])
def test_classification_settings_on_regression_data_fail_clearly(tmp_path, section, values, message):
    raw = {k: dict(v) for k, v in RAW.items()}
    raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(Config.from_dict(raw), tmp_path)


def test_mse_on_classification_data_fails_clearly(tmp_path):
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"task": "classification"}},
                               "loss": {"name": "mse"}, "trainer": {"max_epochs": 1}})
    with pytest.raises(ValueError, match=r"loss.name='mse' does not fit the classification dataset 'synthetic': it is for regression; use one of \['ce',"):
        train_and_evaluate(config, tmp_path)
