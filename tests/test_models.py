"""GAT layer, pooling registry and the training loop."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaflax import pooling
from gaflax.compat import jraph
from gaflax.config import Config
from gaflax.models import GAT, GATLayer, GraphGAT, add_self_loops, sparse_features
from gaflax.train import make_steps, train_and_evaluate, _optimizer


def small_graph(key, n=12, f=5):
    rng = np.random.default_rng(0)
    senders = rng.integers(0, n, 40)
    receivers = rng.integers(0, n, 40)
    nodes = jax.random.normal(key, (n, f))
    graph = jraph.GraphsTuple(nodes=nodes, edges=None, senders=jnp.asarray(senders, jnp.int32),
                              receivers=jnp.asarray(receivers, jnp.int32), n_node=jnp.array([n]),
                              n_edge=jnp.array([40]), globals=None)
    return add_self_loops(graph)


def layer_out(layer, graph, key):
    params = layer.init(key, graph, deterministic=True)
    return layer.apply(params, graph, deterministic=True), params


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("aggregator", sorted(pooling.AGGREGATORS))
def test_layer_shapes_and_finite(key, v2, aggregator):
    graph = small_graph(key)
    out, _ = layer_out(GATLayer(4, heads=3, v2=v2, aggregator=aggregator, learn_alpha=True, alpha_scope="channel"), graph, key)
    assert out.shape == (12, 12) and jnp.all(jnp.isfinite(out))
    out, _ = layer_out(GATLayer(4, heads=3, concat=False, v2=v2, aggregator=aggregator), graph, key)
    assert out.shape == (12, 4)


@pytest.mark.parametrize("positive", ["relu_eps", "elu1"])
def test_ga_at_alpha_half_equals_weighted_sum_on_positive_messages(key, positive):
    """GA pooling maps back to the message domain, so at p = 1 it is the attention-weighted mean."""
    graph = small_graph(key)
    messages = jnp.abs(jax.random.normal(key, (graph.senders.shape[0], 2, 3))) + 0.1
    logits = jax.random.normal(jax.random.fold_in(key, 1), (graph.senders.shape[0], 2))
    att = jraph.segment_softmax(logits, graph.receivers, 12)
    ws = pooling.weighted_sum(messages, graph.receivers, 12, weights=att)
    ga = pooling.get("ga")(messages, graph.receivers, 12, weights=att, alpha=0.5, positive=positive)
    np.testing.assert_allclose(ga, ws, rtol=2e-5, atol=2e-6)


def test_ga_pooling_limits_are_min_and_max_of_messages(key):
    """alpha = +-1: the max / min of the (real-valued) messages, whatever the transform."""
    graph = small_graph(key)
    messages = jax.random.normal(key, (graph.senders.shape[0], 2, 3)) * 3
    for positive in ("softplus", "elu1"):  # relu_eps clips negative messages: not invertible there
        top = pooling.get("ga")(messages, graph.receivers, 12, alpha=1.0, positive=positive)
        bottom = pooling.get("ga")(messages, graph.receivers, 12, alpha=-1.0, positive=positive)
        np.testing.assert_allclose(top, pooling.maximum(messages, graph.receivers, 12), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bottom, pooling.minimum(messages, graph.receivers, 12), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("aggregator, positive", [(name, "softplus") for name in sorted(pooling.AGGREGATORS)]
                         + [("ga", positive) for positive in sorted(pooling.POSITIVE) if positive != "softplus"])
def test_segments_without_weight_pool_to_zero(key, aggregator, positive):
    """Attention dropout can zero every edge of a low-degree node (p = 0.6^2 for a node with one
    neighbour and its self-loop). Such a segment, and one with no edges at all, pools to 0 like the
    weighted sum, with a zero gradient: inverse(GA) of it used to be log(1e-30) = -69, which broke
    GA training on CiteSeer."""
    messages = jax.random.normal(key, (5, 2, 3))
    receivers = jnp.array([0, 0, 1, 1, 1])  # segment 2 has no edges
    weights = jnp.array([[0.5, 0.5], [0.5, 0.5], [0.0, 0.3], [0.0, 0.3], [0.0, 0.4]])  # head 0 of 1 dropped
    pool = pooling.get(aggregator)
    out = pool(messages, receivers, 3, weights=weights, alpha=0.3, positive=positive)
    assert out.shape == (3, 2, 3) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(out[2], 0)
    if aggregator in ("weighted_sum", "sum", "ga", "log_ga"):  # the operators that use the weights
        np.testing.assert_array_equal(out[1, 0], 0)
    grad = jax.grad(lambda m: jnp.sum(pool(m, receivers, 3, weights=weights, alpha=0.3, positive=positive)[1:, 0]))(messages)
    assert bool(jnp.all(jnp.isfinite(grad)))
    if aggregator in ("weighted_sum", "sum", "ga", "log_ga"):
        np.testing.assert_array_equal(grad[2:, 0], 0)


@pytest.mark.parametrize("v2", [False, True])
def test_sparse_features_give_the_dense_results(key, v2):
    """Sparse bag-of-words inputs: the same parameters, the same dropout masks, and the same outputs
    and gradients (to float rounding) as the dense matrix."""
    graph = small_graph(key, f=30)
    dense = jnp.where(jax.random.uniform(key, graph.nodes.shape) < 0.1, graph.nodes, 0)
    sparse = graph._replace(nodes=sparse_features(dense))
    graph = graph._replace(nodes=dense)
    model = GAT(num_classes=3, hidden=4, heads=2, layer={"v2": v2, "dropout": 0.5})
    params = model.init(key, graph)
    assert jax.tree.structure(model.init(key, sparse)) == jax.tree.structure(params)

    def loss(p, g):
        return jnp.sum(jnp.sin(model.apply(p, g, deterministic=False, rngs={"dropout": jax.random.key(7)})))

    # The dropout masks agree, so training-mode outputs agree too.
    outputs = [model.apply(params, g, deterministic=False, rngs={"dropout": jax.random.key(7)}) for g in (graph, sparse)]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    grads = [jax.grad(loss)(params, g) for g in (graph, sparse)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_permutation_invariance(key):
    graph = small_graph(key)
    layer = GATLayer(4, heads=2, aggregator="ga", alpha=0.2)
    out, params = layer_out(layer, graph, key)
    perm = np.random.default_rng(1).permutation(graph.senders.shape[0])
    shuffled = graph._replace(senders=graph.senders[perm], receivers=graph.receivers[perm])
    np.testing.assert_allclose(layer.apply(params, shuffled, deterministic=True), out, rtol=1e-5, atol=1e-6)
    # Relabelling the nodes permutes the output rows.
    node_perm = np.random.default_rng(2).permutation(12)
    inverse = np.argsort(node_perm)
    relabelled = graph._replace(nodes=graph.nodes[node_perm], senders=jnp.asarray(inverse)[graph.senders],
                                receivers=jnp.asarray(inverse)[graph.receivers])
    np.testing.assert_allclose(layer.apply(params, relabelled, deterministic=True), out[node_perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [-1.0, 1.0])
@pytest.mark.parametrize("aggregator", ["ga", "log_ga"])
def test_finite_gradients_at_alpha_limits(key, alpha, aggregator):
    graph = small_graph(key)
    layer = GATLayer(4, heads=2, aggregator=aggregator, alpha=alpha, learn_alpha=False)
    params = layer.init(key, graph, deterministic=True)
    grads = jax.grad(lambda p, x: jnp.sum(layer.apply(p, graph._replace(nodes=x), deterministic=True) ** 2),
                     argnums=(0, 1))(params, graph.nodes)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # Learned alpha initialised next to the limit also gets a finite gradient.
    learned = GATLayer(4, heads=2, aggregator=aggregator, alpha=alpha, learn_alpha=True)
    p2 = learned.init(key, graph, deterministic=True)
    g2 = jax.grad(lambda p: jnp.sum(learned.apply(p, graph, deterministic=True) ** 2))(p2)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g2))


def test_graph_classifier_on_padded_batch(key):
    from gaflax import data

    ds = data.load("synthetic", level="graph", num_graphs=10, seed=0, task="classification")
    budgets = data.budgets_for(ds, 4)
    batch = next(data.iterate_batches(ds, np.arange(10), 4, budgets))
    graph = add_self_loops(jax.tree.map(jnp.asarray, batch.graph))
    for readout in ("sum", "mean", "max", "ga"):
        model = GraphGAT(num_classes=2, hidden=4, heads=2, num_layers=2, readout=readout)
        params = model.init(key, graph)
        logits = model.apply(params, graph)
        assert logits.shape == (batch.graph.n_node.shape[0], 2) and jnp.all(jnp.isfinite(logits))


def synthetic_config(**overrides):
    raw = {"dataset": {"name": "synthetic", "options": {"level": "node", "num_nodes": 200, "task": "classification",
                                                        "num_classes": 3, "seed": 0}},
           "model": {"hidden": 4, "heads": 2}, "trainer": {"max_epochs": 12, "patience": 5, "progress": False}}
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return Config.from_dict(raw)


def test_train_step_does_not_recompile(key):
    cfg = synthetic_config(pool={"name": "ga", "learn": True})
    from gaflax import data

    ds = data.load("synthetic", **cfg.dataset.options)
    graph = add_self_loops(jax.tree.map(jnp.asarray, ds.graph))
    model = GAT(num_classes=3, hidden=4, heads=2, layer=dict(aggregator="ga", learn_alpha=True))
    params = model.init(key, graph)["params"]
    tx = _optimizer(cfg, params)
    opt_state = tx.init(params)
    traces = []
    train_step, _ = make_steps(model, tx)

    def counted(*args):
        traces.append(1)
        return train_step(*args)

    step = jax.jit(counted)
    mask = jnp.asarray(ds.split(0)[0])
    labels = jnp.asarray(ds.labels)
    for epoch in range(5):
        params, opt_state, loss = step(params, opt_state, graph, labels, mask, jax.random.fold_in(key, epoch))
        assert jnp.isfinite(loss)
    assert len(traces) == 1


def test_train_and_evaluate_writes_run_directory(tmp_path):
    results = train_and_evaluate(synthetic_config(pool={"name": "ga", "learn": True, "scope": "head"}), tmp_path)
    for name in ("config.json", "versions.json", "metrics.jsonl", "results.json"):
        assert (tmp_path / name).exists()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == results["epochs"] and "alphas" in lines[0] and "val/accuracy" in lines[0]
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("test/accuracy", "val/accuracy", "best_epoch", "alphas", "seconds_per_epoch", "compile_seconds", "device"):
        assert key in saved
    assert set(saved["alphas"]) == {"gat_0", "gat_1"}
    # Reproducible from the seed; a rerun in the same directory replaces metrics.jsonl.
    again = train_and_evaluate(synthetic_config(pool={"name": "ga", "learn": True, "scope": "head"}), tmp_path)
    assert again["test/accuracy"] == results["test/accuracy"] and again["alphas"] == results["alphas"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == again["epochs"]


@pytest.mark.parametrize("section, values, message", [
    ("pool", {"name": "median"}, "pool.name='median'"),
    ("pool", {"alpha": 1.5}, r"pool.alpha=1.5 must lie in \[-1, 1\]"),
    ("model", {"dropout": -0.1}, r"model.dropout=-0.1 must lie in \[0, 1\)"),
    ("pool", {"scope": "edge"}, "pool.scope='edge'"),
    ("model", {"readout_lr_mult": 0.0}, "model.readout_lr_mult=0.0 must be positive"),
    ("optimizer", {"learning_rate": 0.1}, r"unknown key\(s\) \['learning_rate'\] in 'optimizer'"),
])
def test_bad_config_values_fail_before_compiling(section, values, message):
    with pytest.raises(ValueError, match=message):
        synthetic_config(**{section: values})


def test_hash_dropout_rate_scaling_and_determinism(key):
    from gaflax.models import Dropout

    x = jnp.ones((300, 500))
    layer = Dropout(0.6)
    out = layer.apply({}, x, deterministic=False, rngs={"dropout": key})
    kept = out > 0
    assert abs(float(kept.mean()) - 0.4) < 0.005
    np.testing.assert_allclose(out[kept], 1 / 0.4, rtol=1e-6)
    again = layer.apply({}, x, deterministic=False, rngs={"dropout": key})
    other = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.fold_in(key, 1)})
    assert jnp.array_equal(out, again) and not jnp.array_equal(out, other)
    # Rows and columns are not correlated: per-row keep rates look binomial.
    row_rates = kept.mean(axis=1)
    assert float(row_rates.std()) < 3 * (0.4 * 0.6 / 500) ** 0.5
    assert jnp.array_equal(layer.apply({}, x, deterministic=True), x)


def test_graph_classification_training_runs_and_is_reproducible(tmp_path):
    raw = {"dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 80, "task": "classification",
                                                        "num_classes": 2, "seed": 0}},
           "model": {"hidden": 4, "heads": 2, "readout": "ga", "mlp": [8]}, "pool": {"name": "ga"},
           "trainer": {"max_epochs": 4, "patience": 4, "progress": False, "batch_size": 16}}
    results = train_and_evaluate(Config.from_dict(raw), tmp_path / "a")
    assert 0 <= results["test/accuracy"] <= 1 and "test/roc_auc" in results
    # The readout's alpha has its own learning-rate multiplier (model.readout_lr_mult, 10 by
    # default): at 1.0 it stayed within 0.01 of its start on MUTAG.
    readout_alpha = np.asarray(results["alphas"]["readout_alpha"])
    assert np.max(np.abs(readout_alpha - 0.5)) > 0.2
    again = train_and_evaluate(Config.from_dict(raw), tmp_path / "b")
    assert again["test/accuracy"] == results["test/accuracy"]


def test_without_attention_neighbours_weigh_one_over_degree(key):
    """attention=False: no attention parameters, and weighted_sum is the plain neighbour mean."""
    graph = small_graph(key)
    kw = dict(heads=2, attention=False, dropout=0.0, attention_dropout=0.0)
    params = GATLayer(3, aggregator="weighted_sum", **kw).init(key, graph, deterministic=True)
    assert set(params["params"]) == {"proj", "bias"}
    h = graph.nodes @ params["params"]["proj"]["kernel"]  # [N, H * C]
    degree = jax.ops.segment_sum(jnp.ones(graph.receivers.shape), graph.receivers, 12)
    mean = jax.ops.segment_sum(h[graph.senders], graph.receivers, 12) / degree[:, None]
    out = GATLayer(3, aggregator="weighted_sum", **kw).apply(params, graph, deterministic=True)
    np.testing.assert_allclose(out, mean, rtol=1e-5, atol=1e-5)
    # GA at alpha = 0.5 on the same (here shifted positive) messages is the same mean.
    shifted = graph._replace(nodes=jnp.abs(graph.nodes))
    positive = {"params": {**params["params"], "proj": {"kernel": jnp.abs(params["params"]["proj"]["kernel"])}}}
    np.testing.assert_allclose(
        GATLayer(3, aggregator="ga", alpha=0.5, positive="relu_eps", **kw).apply(positive, shifted, deterministic=True),
        GATLayer(3, aggregator="weighted_sum", **kw).apply(positive, shifted, deterministic=True), rtol=1e-5, atol=1e-5)


def test_aggregate_first_equals_project_first_for_a_linear_aggregator(key):
    graph = small_graph(key)
    kw = dict(heads=2, attention=False, aggregator="weighted_sum", dropout=0.0, attention_dropout=0.0)
    first = GATLayer(3, aggregate_first=True, **kw)
    params = first.init(key, graph, deterministic=True)["params"]
    assert params["proj_after"].shape == (2, 5, 3)
    project = {"proj": {"kernel": params["proj_after"].transpose(1, 0, 2).reshape(5, 6)}, "bias": params["bias"]}
    np.testing.assert_allclose(first.apply({"params": params}, graph, deterministic=True),
                               GATLayer(3, **kw).apply({"params": project}, graph, deterministic=True),
                               rtol=1e-5, atol=1e-5)
    # With GA the exponent acts on the input features: per channel, one alpha per input feature.
    ga = GATLayer(3, aggregate_first=True, **{**kw, "aggregator": "ga"}, learn_alpha=True, alpha_scope="channel")
    variables = ga.init(key, graph, deterministic=True)
    assert variables["params"]["exponent"]["alpha_theta"].shape == (2, 5)
