"""Vmapped seed grids: each member equals the sequential run with its seed, and is a journal run."""

import dataclasses

import pytest

from gaflax import journal as gj
from gaflax.config import Config
from gaflax.train import train_and_evaluate, train_grid

RAW = {"dataset": {"name": "synthetic", "options": {"num_nodes": 300, "task": "classification"}},
       "model": {"hidden": 4, "heads": 2}, "pool": {"name": "ga", "learn": True},
       "trainer": {"max_epochs": 20, "patience": 5, "progress": False, "vmap": "seeds", "num_members": 2}}
COMPARED = ("best_epoch", "epochs", "test/accuracy", "val/accuracy", "train/accuracy", "test/macro_f1")


@pytest.mark.slow
def test_members_equal_sequential_runs(tmp_path):
    config = Config.from_dict(RAW)
    grid = train_grid(config, tmp_path / "grid")
    assert len(grid) == 2
    for seed, member in enumerate(grid):
        sequential_config = dataclasses.replace(
            config, seed=seed, trainer=dataclasses.replace(config.trainer, vmap="none", num_members=1))
        sequential = train_and_evaluate(sequential_config, tmp_path / f"seq{seed}")
        for key in COMPARED:
            assert member[key] == pytest.approx(sequential[key], abs=1e-9), (seed, key)
        for layer, alpha in sequential["alphas"].items():
            assert member["alphas"][layer] == pytest.approx(alpha, abs=1e-5)
        assert (tmp_path / "grid" / f"seed_{seed}" / "metrics.jsonl").read_text().count("\n") == member["epochs"]


@pytest.mark.slow
def test_members_are_journal_runs_and_resume(tmp_path, capsys):
    jr = gj.Journal(tmp_path / "j.sqlite")
    small = {**RAW, "trainer": {**RAW["trainer"], "max_epochs": 3, "num_members": 2}}
    first = train_grid(Config.from_dict(small), tmp_path / "a", journal=jr)
    runs = jr.runs({"status": "done"})
    assert [r["config"]["seed"] for r in runs] == [0, 1]
    assert all(r["config"]["trainer"]["vmap"] == "none" for r in runs)  # recorded as the sequential run
    # A wider grid trains only the new member; the sequential run of seed 0 is already recorded.
    wider = {**small, "trainer": {**small["trainer"], "num_members": 3}}
    second = train_grid(Config.from_dict(wider), tmp_path / "b", journal=jr)
    assert capsys.readouterr().out.count("already recorded") == 2
    assert second[0]["test/accuracy"] == first[0]["test/accuracy"] and "journal/run_id" in second[2]
    sequential = {**small, "trainer": {**small["trainer"], "vmap": "none", "num_members": 1}}
    again = train_and_evaluate(Config.from_dict(sequential), tmp_path / "c", journal=jr)
    assert again["journal/duplicate_of"] == runs[0]["id"]


def test_grid_needs_a_node_task(tmp_path):
    raw = {**RAW, "dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 20,
                                                               "task": "classification"}}}
    with pytest.raises(ValueError, match="vmapped grids exist for node classification"):
        train_grid(Config.from_dict(raw), tmp_path)
    with pytest.raises(ValueError, match="trainer.vmap='exponents' must be"):
        Config.from_dict({"trainer": {"vmap": "exponents"}})
    with pytest.raises(ValueError, match=r"trainer.vmap=alphas needs a fixed exponent \(pool.learn=false\)"):
        Config.from_dict({"pool": {"name": "ga", "learn": True}, "trainer": {"vmap": "alphas", "alphas": [0.5]}})
    with pytest.raises(ValueError, match=r"trainer.vmap=alphas needs a pool that takes an exponent; pool.name='max'"):
        train_grid(Config.from_dict({**RAW, "pool": {"name": "max"},
                                     "trainer": {**RAW["trainer"], "vmap": "alphas", "alphas": [0.5]}}), tmp_path)
    with pytest.raises(ValueError, match=r"trainer.alphas=\[\] must be a non-empty list"):
        Config.from_dict({"pool": {"name": "ga"}, "trainer": {"vmap": "alphas"}})


@pytest.mark.slow
def test_alpha_grid_members_equal_sequential_runs(tmp_path, capsys):
    """Fixed exponents (the min and max limits included) and seeds in one program."""
    raw = {**RAW, "pool": {"name": "ga", "learn": False},
           "trainer": {**RAW["trainer"], "max_epochs": 8, "vmap": "alphas", "alphas": [-1.0, 1.0],
                       "num_members": 2}}
    jr = gj.Journal(tmp_path / "j.sqlite")
    grid = train_grid(Config.from_dict(raw), tmp_path / "grid", journal=jr)
    assert len(grid) == 4 and (tmp_path / "grid" / "alpha_-1_seed_1" / "results.json").exists()
    for (alpha, seed), member in zip([(a, s) for a in (-1.0, 1.0) for s in (0, 1)], grid):
        assert member["alphas"]["gat_0"] == pytest.approx(alpha)
        single = {**raw, "seed": seed, "pool": {**raw["pool"], "alpha": alpha},
                  "trainer": {**raw["trainer"], "vmap": "none", "num_members": 1, "alphas": []}}
        sequential = train_and_evaluate(Config.from_dict(single), tmp_path / f"seq_{alpha}_{seed}", journal=jr)
        assert sequential["journal/duplicate_of"] == member["journal/run_id"]  # the same experiment
        again = train_and_evaluate(Config.from_dict(single), tmp_path / f"fresh_{alpha}_{seed}")
        for key in COMPARED:
            assert member[key] == pytest.approx(again[key], abs=1e-6), (alpha, seed, key)
