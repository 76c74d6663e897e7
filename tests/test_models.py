"""GAT layers, the model registry, the tasks and the training loop."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaflax import data, pooling, tasks
from gaflax.compat import jraph
from gaflax.config import Config
from gaflax.models import GAT, MODELS, AggregatorOnly, GATLayer, GraphGAT, LayerOptions, add_self_loops, sparse_features
from gaflax.train import train_and_evaluate

#: One entry per distinct operator ("sum" is "weighted_sum" under its readout name).
DISTINCT = sorted({entry.fn: name for name, entry in sorted(pooling.AGGREGATORS.items(), reverse=True)}.values())


def opts(aggregator="weighted_sum", alpha=0.5, learn=False, scope="layer", positive="softplus", **layer):
    """LayerOptions with the aggregator ``aggregator`` (and its exponent) from the registry."""
    aggregate, exponent = pooling.make(aggregator, alpha=alpha, learn=learn, scope=scope, positive=positive)
    return LayerOptions(aggregate=aggregate, exponent=exponent, **layer)


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
@pytest.mark.parametrize("aggregator", DISTINCT)
def test_layer_shapes_and_finite(key, v2, aggregator):
    graph = small_graph(key)
    out, params = layer_out(GATLayer(4, heads=3, options=opts(aggregator, learn=True, scope="channel", v2=v2)),
                            graph, key)
    assert out.shape == (12, 12) and jnp.all(jnp.isfinite(out))
    has_exponent = pooling.AGGREGATORS[aggregator].takes_exponent
    assert ("exponent" in params["params"]) == has_exponent  # only operators with an exponent learn one
    if has_exponent:
        assert params["params"]["exponent"]["alpha_theta"].shape == (3, 4)
    out, _ = layer_out(GATLayer(4, heads=3, concat=False, options=opts(aggregator, v2=v2)), graph, key)
    assert out.shape == (12, 4) and jnp.all(jnp.isfinite(out))


@pytest.mark.parametrize("v2", [False, True])
def test_sparse_features_give_the_dense_results(key, v2):
    """Sparse bag-of-words inputs: the same parameters, the same dropout masks, and the same outputs
    and gradients (to float rounding) as the dense matrix."""
    graph = small_graph(key, f=30)
    dense = jnp.where(jax.random.uniform(key, graph.nodes.shape) < 0.1, graph.nodes, 0)
    sparse = graph._replace(nodes=sparse_features(dense))
    graph = graph._replace(nodes=dense)
    model = GAT(num_classes=3, hidden=4, heads=2, layer=LayerOptions(v2=v2, dropout=0.5))
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
    layer = GATLayer(4, heads=2, options=opts("ga", alpha=0.2))
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
    layer = GATLayer(4, heads=2, options=opts(aggregator, alpha=alpha))
    params = layer.init(key, graph, deterministic=True)
    grads = jax.grad(lambda p, x: jnp.sum(layer.apply(p, graph._replace(nodes=x), deterministic=True) ** 2),
                     argnums=(0, 1))(params, graph.nodes)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # Learned alpha initialised next to the limit also gets a finite gradient.
    learned = GATLayer(4, heads=2, options=opts(aggregator, alpha=alpha, learn=True))
    p2 = learned.init(key, graph, deterministic=True)
    g2 = jax.grad(lambda p: jnp.sum(learned.apply(p, graph, deterministic=True) ** 2))(p2)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g2))


def test_graph_classifier_on_padded_batch(key):
    from gaflax import data

    ds = data.load("synthetic", level="graph", num_graphs=10, seed=0, task="classification")
    budgets = data.budgets_for(ds, 4)
    batch = next(data.iterate_batches(ds, np.arange(10), 4, budgets))
    graph = add_self_loops(jax.tree.map(jnp.asarray, batch.graph))
    for readout in DISTINCT:
        fn, exponent = pooling.make(readout, learn=True, scope="channel", positive="softplus", key="readout")
        model = GraphGAT(num_classes=2, hidden=4, heads=2, num_layers=2, readout=fn, readout_exponent=exponent)
        params = model.init(key, graph)
        logits = model.apply(params, graph)
        assert logits.shape == (batch.graph.n_node.shape[0], 2) and jnp.all(jnp.isfinite(logits))
        if exponent is not None:  # one learned alpha per pooled channel (2 heads x 4)
            assert params["params"]["readout_exponent"]["alpha_theta"].shape == (1, 8)


def synthetic_config(**overrides):
    raw = {"dataset": {"name": "synthetic", "options": {"level": "node", "num_nodes": 200, "task": "classification",
                                                        "num_classes": 3, "seed": 0}},
           "model": {"hidden": 4, "heads": 2}, "trainer": {"max_epochs": 12, "patience": 5, "progress": False}}
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return Config.from_dict(raw)


def test_the_tasks_real_steps_do_not_recompile(monkeypatch):
    """Node task: its steps are compiled once, ahead of time, and every epoch (with a fresh
    class-balanced mask each time) runs that executable. Graph task: padded batches come in at most
    three shapes (the budgets), so its jitted train step is traced at most three times, all in
    epoch 0 (the traces are counted on the task's own step function)."""
    cfg = synthetic_config(trainer={"resample": "balanced"})
    ds = tasks.load_dataset(cfg)
    task = tasks.NodeTask(cfg, ds)
    assert isinstance(task.train_step, jax.stages.Compiled) and isinstance(task.eval_step, jax.stages.Compiled)
    losses = [task.train_epoch(epoch)[0] for epoch in range(4)]
    assert np.all(np.isfinite(losses)) and len(set(losses)) == 4

    traces, make_steps = [], tasks.make_steps

    def counting_steps(*args, **kwargs):
        train_step, eval_step = make_steps(*args, **kwargs)

        def counted(*step_args):
            traces.append(1)  # runs only while jit traces
            return train_step(*step_args)

        return counted, eval_step

    monkeypatch.setattr(tasks, "make_steps", counting_steps)
    graph_cfg = Config.from_dict({
        "dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 24, "task": "classification",
                                                     "num_classes": 2, "seed": 0}},
        "model": {"hidden": 4, "heads": 2, "mlp": [8]}, "trainer": {"batch_size": 8}})
    graph_task = tasks.GraphTask(graph_cfg, tasks.load_dataset(graph_cfg))
    graph_task.train_epoch(0)
    traced = len(traces)
    assert 1 <= traced <= 3
    for epoch in (1, 2):
        graph_task.train_epoch(epoch)
    assert len(traces) == traced


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
    ("pool", {"alpha": 1.5}, r"pool.alpha=1.5 must lie in \[-1, 1\]"),
    ("model", {"dropout": -0.1}, r"model.dropout=-0.1 must lie in \[0, 1\)"),
    ("pool", {"scope": "edge"}, "pool.scope='edge'"),
    ("readout", {"lr_mult": 0.0}, "readout.lr_mult=0.0 must be positive"),
    ("optimizer", {"learning_rate": 0.1}, r"unknown key\(s\) \['learning_rate'\] in 'optimizer'"),
    ("model", {"name": "mlp", "heads": 2}, r"unknown key\(s\) \['heads'\] in 'model'"),
    ("model", {"name": "transformer"}, r"model.name='transformer' is not one of \['aggregator', 'bagging', 'gat', 'gcn', 'gin', 'lightgbm', 'mlp', 'sage', "
     r"'xgboost'\]"),
    # Non-finite rates and wrong types (#21): before, inf trained to NaN and ended 'done', 'abc'
    # gave a TypeError about <=, and 1.5 a JAX shape error.
    ("optimizer", {"lr": float("inf")}, "optimizer.lr=inf must be positive and finite"),
    ("optimizer", {"lr": float("nan")}, "optimizer.lr=nan must be positive and finite"),
    ("optimizer", {"lr": -0.01}, "optimizer.lr=-0.01 must be positive and finite"),
    ("pool", {"lr_mult": float("inf")}, "pool.lr_mult=inf must be positive and finite"),
    ("optimizer", {"weight_decay": float("nan")}, "optimizer.weight_decay=nan must be finite"),
    ("pool", {"alpha": "abc"}, "pool.alpha='abc' must be a number, got str"),
    ("model", {"hidden": 1.5}, "model.hidden=1.5 must be an int, got float"),
    ("trainer", {"progress": "yes"}, "trainer.progress='yes' must be true or false, got str"),
    ("trainer", {"alphas": 0.5}, "trainer.alphas=0.5 must be a list, got float"),
    ("dataset", {"nonfinite_features": "drop"}, "dataset.nonfinite_features='drop' must be 'error' or 'zero'"),
])
def test_bad_config_values_fail_before_compiling(section, values, message):
    with pytest.raises(ValueError, match=message):
        synthetic_config(**{section: values})


@pytest.mark.parametrize("section, values, message", [
    ("pool", {"name": "median"}, r"pool.name='median' is not a registered pooling operator; choose one of \["),
    ("readout", {"name": "median"}, r"readout.name='median' is not a registered pooling operator"),
    ("pool", {"name": "ga", "positive": "abs"}, r"pool.positive='abs' must be one of"),
    ("loss", {"name": "hinge"}, r"loss.name='hinge' is not a registered loss"),
    ("trainer", {"resample": "smote"}, r"trainer.resample='smote' does not fit dataset 'synthetic'"),
    ("trainer", {"resample": "magic"}, r"trainer.resample='magic' is not a registered resampler"),
])
def test_unknown_names_fail_before_compiling(tmp_path, monkeypatch, section, values, message):
    """Names are looked up in their registries when the run is built, before any task exists."""
    def no_task(*args, **kwargs):
        raise AssertionError("a task was built before the names were checked")

    monkeypatch.setattr(tasks.NodeTask, "__init__", no_task)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(synthetic_config(**{section: values}), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_every_model_builds_for_its_kinds():
    """Every flax model builds for each dataset kind it names; a tree ensemble has no module and
    names its task instead (tests/test_ensembles.py trains them)."""
    for name, entry in MODELS.items():
        if entry.task is not None:
            assert entry.build is None and entry.kinds == ("tabular",), name
            continue
        for kind in entry.kinds:
            ds = {"node": SimpleNamespace(kind="node", num_classes=3), "graph": SimpleNamespace(kind="graph", num_classes=3),
                  "tabular": SimpleNamespace(kind="tabular", num_classes=2),
                  "aggregator_regression": SimpleNamespace(kind="aggregator_regression", num_classes=1)}[kind]
            model = tasks.build_model(Config.from_dict({"model": {"name": name}}), ds)
            if kind == "aggregator_regression":  # the aggregator alone: its output has the messages' channels
                assert isinstance(model, AggregatorOnly)
            else:
                assert model.num_classes == ds.num_classes


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


@pytest.mark.slow
def test_graph_classification_training_runs_and_is_reproducible(tmp_path):
    raw = {"dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 80, "task": "classification",
                                                        "num_classes": 2, "seed": 0}},
           "model": {"hidden": 4, "heads": 2, "mlp": [8]}, "pool": {"name": "ga"}, "readout": {"name": "ga"},
           "trainer": {"max_epochs": 4, "patience": 4, "progress": False, "batch_size": 16}}
    results = train_and_evaluate(Config.from_dict(raw), tmp_path / "a")
    assert "test/roc_auc" in results and set(results["alphas"]) == {"gat_0", "gat_1", "readout_alpha"}
    # The readout's alpha has its own learning-rate multiplier (readout.lr_mult, 10 by
    # default): at 1.0 it stayed within 0.01 of its start on MUTAG.
    readout_alpha = np.asarray(results["alphas"]["readout_alpha"])
    assert np.max(np.abs(readout_alpha - 0.5)) > 0.2
    again = train_and_evaluate(Config.from_dict(raw), tmp_path / "b")
    assert again["test/accuracy"] == results["test/accuracy"]


@pytest.mark.parametrize("aggregator", ["ga", "log_ga"])
def test_one_node_without_edges(key, aggregator):
    """A one-node graph without self-loops has zero edges: the layer's aggregate is empty (0), and
    its output and gradients are finite (GA raised on the zero-size reduction before)."""
    graph = jraph.GraphsTuple(nodes=jax.random.normal(key, (1, 5)), edges=None, senders=jnp.zeros((0,), jnp.int32),
                              receivers=jnp.zeros((0,), jnp.int32), n_node=jnp.array([1]), n_edge=jnp.array([0]),
                              globals=None)
    layer = GATLayer(4, heads=2, options=opts(aggregator, alpha=0.3, learn=True))
    params = layer.init(key, graph, deterministic=True)
    out = layer.apply(params, graph, deterministic=True)
    assert out.shape == (1, 8) and bool(jnp.all(jnp.isfinite(out)))
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, graph, deterministic=True) ** 2))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_without_attention_neighbours_weigh_one_over_degree(key):
    """attention=False: no attention parameters, and weighted_sum is the plain neighbour mean."""
    graph = small_graph(key)
    kw = dict(attention=False, dropout=0.0, attention_dropout=0.0)
    params = GATLayer(3, heads=2, options=opts(**kw)).init(key, graph, deterministic=True)
    assert set(params["params"]) == {"proj", "bias"}
    h = graph.nodes @ params["params"]["proj"]["kernel"]  # [N, H * C]
    degree = jax.ops.segment_sum(jnp.ones(graph.receivers.shape), graph.receivers, 12)
    mean = jax.ops.segment_sum(h[graph.senders], graph.receivers, 12) / degree[:, None]
    out = GATLayer(3, heads=2, options=opts(**kw)).apply(params, graph, deterministic=True)
    np.testing.assert_allclose(out, mean, rtol=1e-5, atol=1e-5)
    # GA at alpha = 0.5 on the same (here shifted positive) messages is the same mean.
    shifted = graph._replace(nodes=jnp.abs(graph.nodes))
    positive = {"params": {**params["params"], "proj": {"kernel": jnp.abs(params["params"]["proj"]["kernel"])}}}
    np.testing.assert_allclose(
        GATLayer(3, heads=2, options=opts("ga", positive="relu_eps", **kw)).apply(positive, shifted, deterministic=True),
        GATLayer(3, heads=2, options=opts(**kw)).apply(positive, shifted, deterministic=True), rtol=1e-5, atol=1e-5)


def test_aggregate_first_equals_project_first_for_a_linear_aggregator(key):
    graph = small_graph(key)
    kw = dict(attention=False, dropout=0.0, attention_dropout=0.0)
    first = GATLayer(3, heads=2, options=opts(aggregate_first=True, **kw))
    params = first.init(key, graph, deterministic=True)["params"]
    assert params["proj_after"].shape == (2, 5, 3)
    project = {"proj": {"kernel": params["proj_after"].transpose(1, 0, 2).reshape(5, 6)}, "bias": params["bias"]}
    np.testing.assert_allclose(first.apply({"params": params}, graph, deterministic=True),
                               GATLayer(3, heads=2, options=opts(**kw)).apply({"params": project}, graph,
                                                                              deterministic=True),
                               rtol=1e-5, atol=1e-5)
    # With GA the exponent acts on the input features: per channel, one alpha per input feature.
    ga = GATLayer(3, heads=2, options=opts("ga", learn=True, scope="channel", aggregate_first=True, **kw))
    variables = ga.init(key, graph, deterministic=True)
    assert variables["params"]["exponent"]["alpha_theta"].shape == (2, 5)


def test_progress_into_a_log_is_a_few_lines_not_one_per_epoch(tmp_path, capsys):
    """stderr that is not a terminal (CI, SLURM, nohup): before, one Cora run wrote about 1000
    progress lines; now at most one every LOG_PROGRESS_SECONDS, plus the first and the last."""
    train_and_evaluate(synthetic_config(trainer={"max_epochs": 40, "patience": 40, "progress": True}), tmp_path)
    err = capsys.readouterr().err
    updates = err.count("\r") + err.count("\n")
    assert "synthetic_node" in err or "synthetic" in err
    assert updates <= 4, err[-2000:]


@pytest.mark.parametrize("v2", [False, True])
def test_message_dropout_drops_projected_features_in_training_only(key, v2):
    """model.message_dropout (the GAT authors' dropout of the projected features): 0 changes
    nothing; a rate changes training outputs, never evaluation, and is checked like other rates."""
    graph = small_graph(key)
    plain, dropped = GATLayer(4, heads=3, options=opts(v2=v2)), GATLayer(4, heads=3, options=opts(v2=v2, message_dropout=0.5))
    params = plain.init(key, graph, deterministic=True)
    assert jax.tree.structure(params) == jax.tree.structure(dropped.init(key, graph, deterministic=True))
    rngs = {"dropout": jax.random.key(1)}
    np.testing.assert_array_equal(dropped.apply(params, graph, deterministic=True),
                                  plain.apply(params, graph, deterministic=True))
    train = {k: layer.apply(params, graph, deterministic=False, rngs=rngs) for k, layer in (("plain", plain), ("dropped", dropped))}
    assert not np.allclose(train["plain"], train["dropped"])
    zero = GATLayer(4, heads=3, options=opts(v2=v2, message_dropout=0.0))
    np.testing.assert_array_equal(zero.apply(params, graph, deterministic=False, rngs=rngs), train["plain"])
    with pytest.raises(ValueError, match=r"model.message_dropout=1.0 must lie in \[0, 1\)"):
        synthetic_config(model={"message_dropout": 1.0})


def test_learned_ga_with_message_dropout_stays_finite(tmp_path):
    """Found when 0.6 was briefly the GAT default (67f6b1f): non-finite at epoch 2, since an
    attention weight near 1e-37 carried a segment's mass and the alpha gradient overflowed
    (tests/test_ga.py::test_float32_gradients_when_a_tiny_weight_carries_the_mass)."""
    raw = {"dataset": {"name": "synthetic", "options": {"num_nodes": 300, "task": "classification"}},
           "model": {"hidden": 4, "heads": 2, "message_dropout": 0.6}, "pool": {"name": "ga", "learn": True},
           "seed": 1, "trainer": {"max_epochs": 5, "patience": 5, "progress": False}}
    results = train_and_evaluate(Config.from_dict(raw), tmp_path)
    assert np.isfinite(results["test/accuracy"])
