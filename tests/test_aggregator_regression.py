"""GenAgg's aggregator-regression benchmark: the graphs (the authors' generator), the 13 targets
against float64 NumPy versions of the authors' formulas, the fixed-size edge lists, the vmapped
task (a grid member equals its sequential run) and the preset with ``debug=fast``."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaflax.config import Config
from gaflax.data import load
from gaflax.data.aggregator_regression import TARGETS, edge_lists, edge_slots, sample_adjacency, sample_graphs
from gaflax.train import train_and_evaluate, train_grid

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: The authors' mixfuncs (run/regress_agg.py), on the neighbours' rows ``[k, C]`` of one node.
NUMPY_TARGETS = {
    "max": lambda v: np.max(v, axis=0),
    "min": lambda v: np.min(v, axis=0),
    "max_mag": lambda v: np.max(np.abs(v), axis=0),
    "min_mag": lambda v: np.min(np.abs(v), axis=0),
    "mean": lambda v: np.mean(v, axis=0),
    "sum": lambda v: np.sum(v, axis=0),
    "std": lambda v: np.std(v, axis=0),
    "norm2": lambda v: np.linalg.norm(v, axis=0),
    "rms": lambda v: np.sqrt(np.mean(v**2, axis=0)),
    "prod_mag": lambda v: np.prod(np.abs(v), axis=0),
    "geomean_mag": lambda v: np.prod(np.abs(v), axis=0) ** (1 / v.shape[0]),
    "harmean_mag": lambda v: v.shape[0] / np.sum(1 / np.abs(v), axis=0),
    "logsumexp": lambda v: np.log(np.sum(np.exp(v), axis=0)),
}


def _authors_adjacency(rng, num_graphs, n=8, density=0.3):
    """The authors' construction in NumPy: U < sqrt(density), no diagonal, A AND A^T, and every
    graph with an isolated node drawn again."""
    out = np.zeros((num_graphs, n, n), bool)
    todo = np.arange(num_graphs)
    while todo.size:
        a = (rng.random((todo.size, n, n)) < np.sqrt(density)) & ~np.eye(n, dtype=bool)
        a &= a.transpose(0, 2, 1)
        out[todo] = a
        todo = todo[~a.any(axis=2).all(axis=1)]
    return out


def test_graphs_follow_the_authors_generator():
    """Symmetric, no self-loops, no isolated node (rejected graphs are drawn again), and the same
    distribution as the authors' construction: the per-pair Bernoulli(0.3) of gaflax against
    U < sqrt(0.3) AND its transpose, compared by the mean and spread of the edge count and the
    degree histogram of 6,000 graphs each (a standard error of about 0.06 edges)."""
    adjacency = np.asarray(sample_adjacency(jax.random.key(0), 6000, 8, 0.3))
    assert adjacency.shape == (6000, 8, 8) and adjacency.dtype == bool
    assert np.array_equal(adjacency, adjacency.transpose(0, 2, 1))
    assert not adjacency[:, np.arange(8), np.arange(8)].any()
    assert adjacency.any(axis=2).all()
    authors = _authors_adjacency(np.random.default_rng(0), 6000)
    ours_edges, their_edges = adjacency.sum(axis=(1, 2)), authors.sum(axis=(1, 2))
    assert abs(ours_edges.mean() - their_edges.mean()) < 0.35, (ours_edges.mean(), their_edges.mean())
    assert abs(ours_edges.std() - their_edges.std()) < 0.3, (ours_edges.std(), their_edges.std())
    ours_degrees = np.bincount(adjacency.sum(axis=2).ravel(), minlength=8) / (6000 * 8)
    their_degrees = np.bincount(authors.sum(axis=2).ravel(), minlength=8) / (6000 * 8)
    np.testing.assert_allclose(ours_degrees, their_degrees, atol=0.012)
    # The rejection matters: without it about half of the graphs would have an isolated node.
    raw = (np.random.default_rng(1).random((4000, 28)) < 0.3)
    assert raw.sum(axis=1).mean() < 0.95 * their_edges.mean() / 2


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_targets_match_the_authors_formulas(target, x64):
    x, adjacency, y = sample_graphs(jax.random.key(3), target, 50, 8, 6, 0.3)
    x, adjacency, y = np.asarray(x), np.asarray(adjacency), np.asarray(y)
    assert x.dtype == np.float64
    expected = np.stack([np.stack([NUMPY_TARGETS[target](x[g][adjacency[g, i]]) for i in range(8)]) for g in range(50)])
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(y))


def test_edge_lists_cover_every_pair_and_route_non_edges_to_a_dummy_segment():
    x, adjacency, y = sample_graphs(jax.random.key(4), "sum", 30, 8, 6, 0.3)
    senders, receivers, num_edges = edge_lists(adjacency)
    assert senders.shape == receivers.shape == (30 * 56,) and int(num_edges) == int(adjacency.sum())
    pooled = jax.ops.segment_sum(x.reshape(-1, 6)[senders], receivers, 30 * 8 + 1)
    np.testing.assert_allclose(pooled[:-1], y.reshape(-1, 6), rtol=1e-5, atol=1e-5)
    assert int(jnp.sum(receivers == 30 * 8)) == 30 * 56 - int(adjacency.sum())


def test_compact_edge_lists_hold_exactly_the_edges_and_their_slots_suffice():
    """With ``edge_slots`` slots the list holds each edge once, receivers in order, the rest in
    the dummy segment; the slots exceed the largest edge count of 300 drawn batches by a wide
    margin at the paper's settings, and too few slots are reported through ``num_edges``."""
    x, adjacency, y = sample_graphs(jax.random.key(4), "sum", 30, 8, 6, 0.3)
    slots = edge_slots(30, 8, 0.3)
    senders, receivers, num_edges = edge_lists(adjacency, slots)
    assert senders.shape == (slots,) and int(num_edges) <= slots < 30 * 56
    real = np.asarray(receivers) < 30 * 8
    assert real.sum() == adjacency.sum() and np.all(np.diff(np.asarray(receivers)) >= 0)
    pairs = {(int(s), int(r)) for s, r in zip(np.asarray(senders)[real], np.asarray(receivers)[real])}
    g, i, j = np.nonzero(np.asarray(adjacency))
    assert pairs == set(zip((g * 8 + j).tolist(), (g * 8 + i).tolist()))
    pooled = jax.ops.segment_sum(x.reshape(-1, 6)[senders], receivers, 30 * 8 + 1)
    np.testing.assert_allclose(pooled[:-1], y.reshape(-1, 6), rtol=1e-5, atol=1e-5)

    count = jax.jit(jax.vmap(lambda k: jnp.sum(sample_adjacency(k, 1024, 8, 0.3))))
    largest = int(jnp.max(count(jax.random.split(jax.random.key(7), 300))))
    assert largest < edge_slots(1024, 8, 0.3) - 1000 < 1024 * 56
    *_, num_edges = edge_lists(adjacency, 10)
    assert int(num_edges) == int(adjacency.sum()) > 10  # what the task checks against its slots


def test_a_batch_with_more_edges_than_slots_is_an_error(tmp_path, monkeypatch):
    """The task never trains on cut-off edge lists: too few slots stop the run, naming them."""
    import gaflax.data.aggregator_regression as regression

    monkeypatch.setattr(regression, "edge_slots", lambda num_graphs, n, density: num_graphs * 10)
    with pytest.raises(RuntimeError, match="more edges than its 640 edge slots"):
        train_and_evaluate(_config("mean", max_epochs=1), tmp_path / "run")


def test_options_are_checked_by_name():
    with pytest.raises(ValueError, match="target='median'.*dataset.options.target"):
        load("aggregator_regression", target="median")
    with pytest.raises(ValueError, match="density"):
        load("aggregator_regression", density=0.0)
    with pytest.raises(ValueError, match="num_nodes=4 must be an int >= 8"):
        load("aggregator_regression", num_nodes=4)
    ds = load("aggregator_regression", target="std", num_nodes=800)
    assert ds.graphs_per_step == 100 and ds.kind == "aggregator_regression" and ds.task == "regression"


def _config(pool, target="max", **trainer):
    return Config.from_dict({
        "dataset": {"name": "aggregator_regression",
                    "options": {"target": target, "num_nodes": 400, "steps_per_epoch": 20, "eval_graphs": 64}},
        "model": {"name": "aggregator"}, "pool": {"name": pool, "learn": True, "scope": "channel"},
        "loss": {"name": "mse"}, "optimizer": {"lr": 0.01, "weight_decay": 0.0},
        "trainer": {"max_epochs": 4, "patience": 4, "monitor": "loss", "progress": False, **trainer}})


def test_learning_moves_the_aggregator_towards_the_target(tmp_path):
    """softmax_learned on the max: its temperature t grows from 1, and the test MSE falls below the
    untrained mean's; the results carry MSE and Pearson r for every split."""
    learned = train_and_evaluate(_config("softmax_learned"), tmp_path / "softmax")
    floor = train_and_evaluate(_config("mean", max_epochs=1), tmp_path / "mean")  # nothing to train
    assert min(learned["alphas"]["aggregator/t"][0]) > 1.2
    assert learned["test/mse"] < 0.7 * floor["test/mse"]
    for split in ("train", "val", "test"):
        assert {f"{split}/mse", f"{split}/pearson_r"} <= set(learned)
    assert 0.9 < learned["test/pearson_r"] <= 1


@pytest.mark.slow
def test_a_grid_member_equals_its_sequential_run(tmp_path):
    """Seeds 0-2 as one vmapped program give what three sequential runs give (init and data keys
    come from each member's seed)."""
    grid = train_grid(_config("powermean", target="rms", vmap="seeds", num_members=3), tmp_path / "grid")
    for seed in (2,):
        single = train_and_evaluate(Config.from_dict({**_config("powermean", target="rms").to_dict(), "seed": seed}),
                                    tmp_path / f"single_{seed}")
        np.testing.assert_allclose(grid[seed]["test/mse"], single["test/mse"], rtol=1e-4)
        np.testing.assert_allclose(grid[seed]["alphas"]["aggregator/p"], single["alphas"]["aggregator/p"], rtol=1e-4)
    assert grid[0]["test/mse"] != grid[1]["test/mse"]  # different seeds, different data


@pytest.mark.slow
def test_preset_debug_fast_runs_one_cell(tmp_path):
    """``python -m experiments.train experiment=aggregator_regression debug=fast``: seconds, five
    seeds of the learned GA on the max, recorded in the journal."""
    from hydra import compose, initialize_config_dir

    from experiments.train import train_one

    overrides = ["experiment=aggregator_regression", "debug=fast", f"journal.path={tmp_path / 'j.sqlite'}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        results = train_one(compose(config_name="config", overrides=overrides), tmp_path)["members"]
    assert len(results) == 5 and all(np.isfinite(r["test/mse"]) for r in results)
    assert all(r["epochs"] == 5 for r in results)  # debug=fast's epochs win over the preset's


def test_the_regression_grid_refuses_the_loop_step(tmp_path):
    """Its steps are tiny, so the aggregator-regression grid always vmaps: grid_step=loop is an error."""
    with pytest.raises(ValueError, match="trainer.grid_step=loop: the aggregator-regression grid always vmaps"):
        train_grid(_config("powermean", vmap="seeds", num_members=2, grid_step="loop"), tmp_path)
