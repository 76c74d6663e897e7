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


@pytest.mark.slow
def test_vmapped_step_members_equal_sequential_runs(tmp_path):
    """trainer.grid_step=vmap (all members in one batched step; the default on accelerators) gives
    what the loop step (the default on one CPU) and the sequential runs give."""
    raw = {**RAW, "trainer": {**RAW["trainer"], "grid_step": "vmap"}}
    vmapped = train_grid(Config.from_dict(raw), tmp_path / "vmap")
    looped = train_grid(Config.from_dict({**raw, "trainer": {**raw["trainer"], "grid_step": "loop"}}), tmp_path / "loop")
    for a, b in zip(vmapped, looped):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], abs=1e-9), key


def test_loop_step_trains_and_evaluates_only_running_members():
    import jax
    import numpy as np

    from gaflax.tasks import NodeGrid, grid_members, load_dataset

    config = Config.from_dict({**RAW, "trainer": {**RAW["trainer"], "num_members": 3, "grid_step": "loop"}})
    members = [c for _, c in grid_members(config)]
    assert {c.trainer.grid_step for c in members} == {"auto"}  # recorded as the sequential runs
    ds = load_dataset(config)
    assert not NodeGrid(members, ds, grid_step="vmap").loop
    task = NodeGrid(members, ds, grid_step="loop")
    assert task.loop
    before = jax.tree.map(np.asarray, task.params)
    task.stop_member(1)
    losses = task.train_epoch(0)
    after = jax.tree.map(np.asarray, task.params)
    changed = [any(not np.array_equal(a[m], b[m]) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
               for m in range(3)]
    assert changed == [True, False, True]
    assert np.isfinite(losses[[0, 2]]).all()
    running = task.predict_running(task.params)
    assert running[1] is None and running[0] is not None and running[2] is not None
    assert all(p is not None for p in task.predict(task.params))  # the final evaluation: every member


def test_grid_step_is_checked():
    with pytest.raises(ValueError, match=r"trainer.grid_step='batched' must be one of \('auto', 'vmap', 'loop'\)"):
        Config.from_dict({"trainer": {"grid_step": "batched"}})
    with pytest.raises(ValueError, match="trainer.grid_step=loop runs one member at a time on one device"):
        Config.from_dict({"trainer": {"grid_step": "loop", "vmap": "seeds", "num_members": 4, "devices": 2}})


@pytest.mark.parametrize("grid_step", ["loop", "vmap"])
def test_a_member_that_goes_non_finite_fails_alone(tmp_path, monkeypatch, grid_step):
    """A grid member whose numbers go non-finite is recorded failed with the error, while the other
    members train on, are recorded done and equal the grid without the failure; the call still
    raises. Before, one diverging seed (powermean's p crossing 0 on CiteSeer) failed the whole cell."""
    from gaflax import evaluation

    raw = {**RAW, "trainer": {**RAW["trainer"], "max_epochs": 6, "num_members": 3, "grid_step": grid_step}}
    clean = train_grid(Config.from_dict(raw), tmp_path / "clean")
    calls, real = [], evaluation.non_finite

    def member_1_at_epoch_2(row):  # rows come in member order, three per epoch while all run
        calls.append(row)
        return ["val/loss"] if len(calls) == 2 * 3 + 2 else real(row)

    monkeypatch.setattr(evaluation, "non_finite", member_1_at_epoch_2)
    jr = gj.Journal(tmp_path / "j.sqlite")
    with pytest.raises(FloatingPointError, match=r"1 of 3 grid members went non-finite.*seed 1: val/loss not finite at epoch 2"):
        train_grid(Config.from_dict(raw), tmp_path / "grid", journal=jr)
    runs = {r["config"]["seed"]: r for r in jr.runs()}
    assert runs[1]["status"] == "failed" and "seed 1: val/loss not finite at epoch 2" in runs[1]["error"]
    assert not (tmp_path / "grid" / "seed_1" / "results.json").exists()
    for seed in (0, 2):
        assert runs[seed]["status"] == "done"
        for key in COMPARED:
            assert runs[seed]["results"][key] == pytest.approx(clean[seed][key], abs=1e-9), (seed, key)
