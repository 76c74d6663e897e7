"""GCN, GraphSAGE and GIN: each layer with its default aggregator against a float64 NumPy
reference of the published formula, and every backbone with every registered aggregator, on node
and graph tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaflax import pooling
from gaflax.compat import jraph
from gaflax.config import Config
from gaflax.models import GCNLayer, GINLayer, SAGELayer, add_self_loops, alphas_from_intermediates
from gaflax.tasks import build_model, init_params, load_dataset, node_inputs, run_keys
from gaflax.train import train_and_evaluate


def _graph(seed=0, n=9, features=5):
    rng = np.random.default_rng(seed)
    pairs = {(int(a), int(b)) for a, b in rng.integers(0, n - 1, (14, 2)) if a != b}  # node n-1: isolated
    senders = np.array([a for a, b in pairs] + [b for a, b in pairs], np.int32)
    receivers = np.array([b for a, b in pairs] + [a for a, b in pairs], np.int32)
    nodes = rng.normal(size=(n, features))
    return jraph.GraphsTuple(nodes=jnp.asarray(nodes), edges=None, senders=jnp.asarray(senders),
                             receivers=jnp.asarray(receivers), n_node=jnp.array([n]), n_edge=jnp.array([len(senders)]),
                             globals=None)


def _adjacency(graph):
    n = graph.nodes.shape[0]
    a = np.zeros((n, n))
    np.add.at(a, (np.asarray(graph.receivers), np.asarray(graph.senders)), 1.0)  # a[i, j]: j -> i
    return a


def test_gcn_layer_is_the_normalised_propagation(x64):
    graph = add_self_loops(_graph())
    layer = GCNLayer(4)
    params = layer.init(jax.random.key(0), graph)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # a non-zero bias
    out = np.asarray(layer.apply(params, graph))
    a = _adjacency(graph)  # includes I
    d = a.sum(1)
    w = np.asarray(params["params"]["proj"]["kernel"])
    b = np.asarray(params["params"]["bias"])
    expected = (a / np.sqrt(np.outer(d, d))) @ np.asarray(graph.nodes) @ w + b
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_sage_layer_is_root_plus_neighbour_mean(x64):
    graph = _graph(1)
    layer = SAGELayer(4)
    params = layer.init(jax.random.key(1), graph)
    out = np.asarray(layer.apply(params, graph))
    a = _adjacency(graph)
    mean = np.divide(a, np.maximum(a.sum(1, keepdims=True), 1)) @ np.asarray(graph.nodes)  # isolated node: 0
    p = params["params"]
    expected = (np.asarray(graph.nodes) @ np.asarray(p["proj_root"]["kernel"]) + np.asarray(p["proj_root"]["bias"])
                + mean @ np.asarray(p["proj_neighbours"]["kernel"]))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_gin_layer_is_mlp_of_eps_self_plus_neighbour_sum(x64):
    graph = _graph(2)
    layer = GINLayer(4)
    params = layer.init(jax.random.key(2), graph)
    params["params"]["eps"] = jnp.asarray(0.3)
    out = np.asarray(layer.apply(params, graph))
    a = _adjacency(graph)
    p = params["params"]
    x = np.asarray(graph.nodes)
    hidden = np.maximum((1.3 * x + a @ x) @ np.asarray(p["proj"]["kernel"]) + np.asarray(p["bias"]), 0)
    expected = hidden @ np.asarray(p["mlp_out"]["kernel"]) + np.asarray(p["mlp_out"]["bias"])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # eps is learned: its gradient reaches it.
    g = jax.grad(lambda q: jnp.sum(layer.apply(q, graph) ** 2))(params)
    assert float(g["params"]["eps"]) != 0


# One aggregator of each kind in GCN (whose edge weights are not uniform): the default, one with an
# exponent, per-channel parameters, weight matrices and data statistics, an auxiliary loss, and one
# that ignores the weights; the default and GA in SAGE and GIN. tests/test_pooling.py holds every
# operator to the registry's contract.
CASES = [("gcn", name) for name in ("weighted_sum", "ga", "powermean", "pna", "genagg", "max", "extended_ga")] + [
    (backbone, name) for backbone in ("sage", "gin") for name in ("weighted_sum", "ga")]


@pytest.mark.parametrize("backbone, aggregator", CASES)
def test_every_backbone_takes_every_aggregator(backbone, aggregator):
    """A node model with each registered aggregator (GA learned per head where it has an
    exponent): finite logits and gradients for every parameter, with the learned ones created
    per layer and reported."""
    pool = {"name": aggregator}
    if pooling.AGGREGATORS[aggregator].takes_exponent:
        pool |= {"learn": True, "scope": "head"}
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 40, "task": "classification"}},
                               "model": {"name": backbone, "hidden": 4}, "pool": pool})
    ds = load_dataset(config)
    model = build_model(config, ds)
    inputs = node_inputs(config, ds)[0]
    params = init_params(model, *run_keys(0), inputs)

    @jax.jit
    def loss_and_grads(params):
        def loss(params):
            logits, state = model.apply({"params": params}, inputs, deterministic=False,
                                        rngs={"dropout": jax.random.key(1)}, mutable=["intermediates"])
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), state.get("intermediates", {})
        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, intermediates), grads = loss_and_grads(params)
    assert np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    learned = set(alphas_from_intermediates(intermediates))
    if pooling.AGGREGATORS[aggregator].takes_exponent:
        assert {f"{backbone}_0", f"{backbone}_1"} <= learned
    for spec in pooling.AGGREGATORS[aggregator].params:
        assert (f"{backbone}_0/{spec.name}" in learned) == spec.report  # weight matrices are not reported


@pytest.mark.parametrize("backbone", ["gcn", "sage", "gin"])
def test_backbones_train_nodes_end_to_end(backbone, tmp_path):
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 60, "task": "classification"}},
                               "model": {"name": backbone, "hidden": 4, "num_layers": 2},
                               "pool": {"name": "ga", "learn": True, "scope": "head"},
                               "trainer": {"max_epochs": 3, "progress": False}})
    results = train_and_evaluate(config, tmp_path)
    assert results["epochs"] == 3 and set(results["alphas"]) == {f"{backbone}_0", f"{backbone}_1"}


@pytest.mark.parametrize("backbone", ["gcn", "sage", "gin"])
def test_backbones_classify_graphs_with_a_learned_readout(backbone, tmp_path):
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 40,
                                                                            "task": "classification"}},
                               "model": {"name": backbone, "hidden": 8, "num_layers": 2},
                               "readout": {"name": "ga", "learn": True, "scope": "channel"},
                               "trainer": {"max_epochs": 2, "progress": False}})
    results = train_and_evaluate(config, tmp_path)
    assert results["epochs"] == 2 and len(results["alphas"]["readout_alpha"]) == 8


def _gin_bn_graph_task(**trainer):
    from gaflax.tasks import GraphTask

    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 40,
                                                                            "task": "classification"}},
                               "model": {"name": "gin", "hidden": 8, "num_layers": 2, "batch_norm": True},
                               "optimizer": {"weight_decay": 0.01},
                               "trainer": {"max_epochs": 2, "progress": False, "batch_size": 8, **trainer}})
    return GraphTask(config, load_dataset(config))


def test_gin_batch_norm_keeps_running_statistics_of_the_real_nodes():
    """Xu et al.'s GIN with batch norm: the running statistics ride in the parameter tree
    (tasks.STATE), a train step moves them by momentum 0.9 towards the batch's statistics over the
    real nodes only (changing the padding nodes changes nothing), and neither Adam nor the weight
    decay touches them."""
    from gaflax.tasks import STATE, as_variables

    task = _gin_bn_graph_task()
    stats = task.params[STATE]
    assert set(stats) == {"gin_0", "gin_1"} and set(stats["gin_0"]) == {"norm_hidden", "norm_out"}
    np.testing.assert_array_equal(stats["gin_0"]["norm_hidden"]["mean"], 0)
    np.testing.assert_array_equal(stats["gin_0"]["norm_hidden"]["var"], 1)
    batch = next(task._batches("train"))
    graph, labels, graph_mask = task._device(batch)
    key = jax.random.key(3)
    new, _, _ = task.train_step(task.params, task.opt_state, graph, labels, graph_mask, key)
    # What flax's BatchNorm gives for the same forward pass (dropout key included), by hand:
    _, state = task.model.apply(as_variables(task.params), graph, deterministic=False, rngs={"dropout": key},
                                mutable=["batch_stats", "intermediates", "losses"])
    for layer in ("gin_0", "gin_1"):
        for norm in ("norm_hidden", "norm_out"):
            for moment in ("mean", "var"):
                np.testing.assert_allclose(new[STATE][layer][norm][moment], state["batch_stats"][layer][norm][moment],
                                           rtol=1e-6, atol=1e-7)
    assert not np.allclose(new[STATE]["gin_0"]["norm_hidden"]["mean"], 0)
    # Padding nodes (the last graph's) left out: other values there change nothing.
    padded = int(batch.node_mask.size - batch.node_mask.sum())
    assert padded > 0
    noisy = graph._replace(nodes=graph.nodes.at[-padded:].set(100.0))
    other, _, _ = task.train_step(task.params, task.opt_state, noisy, labels, graph_mask, key)
    for a, b in zip(jax.tree.leaves(new[STATE]), jax.tree.leaves(other[STATE])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gin_batch_norm_evaluates_each_graph_alone():
    """With running averages in evaluation, a graph's logits do not depend on which graphs share
    its batch."""
    from gaflax.data.batching import pad_batch

    task = _gin_bn_graph_task()
    for epoch in range(2):
        task.train_epoch(epoch)
    ds = task.ds

    def logits(indices):
        batch = pad_batch([ds[i] for i in indices], ds.labels[indices], task.budgets)
        graph, labels, mask = task._device(batch)
        return np.asarray(task.eval_step(task.params, graph, labels, mask[None])[0])[: len(indices)]

    alone, together = logits([3]), logits([3, 7, 11, 20, 25])
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-5, atol=1e-5)


def test_graph_predictions_follow_the_current_parameters_on_every_split():
    """GraphTask.predict builds each split's batches once and reuses them: after training has moved
    the parameters, it gives what eval_step gives on freshly built batches of that split (labels in
    the order batched, class probabilities, mean loss over the real graphs)."""
    task = _gin_bn_graph_task()
    before = task.predict(task.params)[0][0]
    for epoch in range(2):
        task.train_epoch(epoch)
    (splits, _), = task.predict(task.params)
    assert splits.keys() == {"train", "val", "test"}
    for split, (labels, probs, loss) in splits.items():
        want_labels, want_probs, losses = [], [], []
        for batch in task._batches(split):
            graph, batch_labels, mask = task._device(batch)
            logits, batch_loss, _ = task.eval_step(task.params, graph, batch_labels, mask[None])
            keep = batch.graph_mask
            want_labels.append(batch.labels[keep])
            want_probs.append(np.asarray(jax.nn.softmax(logits, -1))[keep])
            losses.append(float(batch_loss[0]) * keep.sum())
        np.testing.assert_array_equal(labels, np.concatenate(want_labels))
        order = np.sort if split == "train" else np.asarray  # the train split is batched in its epoch-0 shuffle
        np.testing.assert_array_equal(order(labels), order(task.ds.labels[task.indices[split]]))
        np.testing.assert_allclose(probs, np.concatenate(want_probs), rtol=1e-6)
        np.testing.assert_allclose(loss, sum(losses) / len(labels), rtol=1e-6)
        assert not np.allclose(probs, before[split][1])  # the parameters moved, and predict followed them


def test_gin_batch_norm_trains_nodes_and_grids(tmp_path):
    """Node classification (one graph, nothing padded) with batch norm trains, and a 2-seed grid
    gives each seed's sequential run."""
    from gaflax.train import train_grid

    raw = {"dataset": {"name": "synthetic", "options": {"num_nodes": 80, "task": "classification", "num_classes": 3}},
           "model": {"name": "gin", "hidden": 8, "batch_norm": True},
           "trainer": {"max_epochs": 4, "patience": 4, "progress": False}}
    single = [train_and_evaluate(Config.from_dict({**raw, "seed": s}), tmp_path / f"s{s}") for s in (0, 1)]
    grid = train_grid(Config.from_dict({**raw, "trainer": {**raw["trainer"], "vmap": "seeds", "num_members": 2}}),
                      tmp_path / "grid")
    for a, b in zip(single, grid):
        assert (a["best_epoch"], a["val/accuracy"], a["test/accuracy"]) == (b["best_epoch"], b["val/accuracy"],
                                                                            b["test/accuracy"])


@pytest.mark.parametrize("masked", [False, True])
def test_masked_batch_norm_equals_flax_batch_norm(masked):
    """models.MaskedBatchNorm (GIN's, which can also sum its statistics over devices) gives flax's
    nn.BatchNorm: outputs and gradients in training, the running statistics after a step, and the
    outputs from running averages in evaluation."""
    import flax.linen as nn

    from gaflax.models import MaskedBatchNorm

    x = jax.random.normal(jax.random.key(0), (12, 5)) * 3 + 1
    mask = (jnp.arange(12) < 9)[:, None] if masked else None
    ours = MaskedBatchNorm()
    theirs = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    variables = {"params": {"scale": jnp.linspace(0.5, 2, 5), "bias": jnp.linspace(-1, 1, 5)},
                 "batch_stats": {"mean": jnp.full(5, 0.3), "var": jnp.full(5, 2.0)}}
    assert jax.tree.structure(ours.init(jax.random.key(1), x, mask)) == jax.tree.structure(variables)

    def run(module, mask_kw):
        def f(params, x):
            y, state = module.apply({**variables, "params": params}, x, mutable=["batch_stats"], **mask_kw)
            return jnp.sum(jnp.sin(y) * (1 if mask is None else mask)), (y, state)
        (_, (y, state)), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(variables["params"], x)
        return y, state, grads

    y_ours, state_ours, grads_ours = run(ours, {"mask": mask})
    y_theirs, state_theirs, grads_theirs = run(theirs, {"mask": mask})
    rows = slice(None) if mask is None else slice(0, 9)
    np.testing.assert_allclose(y_ours[rows], y_theirs[rows], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves((state_ours, grads_ours)), jax.tree.leaves((state_theirs, grads_theirs))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    evaluated = MaskedBatchNorm(use_running_average=True).apply(variables, x)
    reference = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(variables, x)
    np.testing.assert_allclose(evaluated, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("aggregator", sorted(pooling.AGGREGATORS))
def test_bfloat16_messages_stay_finite(aggregator):
    """trainer.dtype=bfloat16: the per-edge messages are stored in bfloat16 (a gather with a
    bfloat16 [E, ...] result in the program), the aggregation and the logits are float32, and the
    values and gradients are finite, for every aggregator inside a GCN; for GA also at alpha = -1
    and 1 inside a GAT."""
    pools = [{"name": aggregator} | ({"learn": True} if pooling.AGGREGATORS[aggregator].takes_exponent else {})]
    models = [{"name": "gcn", "hidden": 4}]
    if aggregator == "ga":
        pools += [{"name": "ga", "alpha": -1.0}, {"name": "ga", "alpha": 1.0}]
        models += [{"name": "gat", "hidden": 4, "heads": 2}]
    for model_config in models:
        for pool in pools:
            config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 40,
                                                                                    "task": "classification"}},
                                       "model": model_config, "pool": pool, "trainer": {"dtype": "bfloat16"}})
            ds = load_dataset(config)
            model = build_model(config, ds)
            graph = node_inputs(config, ds)[0]
            params = init_params(model, *run_keys(0), graph)

            def loss(params):
                logits = model.apply({"params": params}, graph, deterministic=False, rngs={"dropout": jax.random.key(1)},
                                     mutable=["intermediates", "losses"])[0]
                return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), logits

            # jitted: op by op, GA's custom rules made this test take minutes
            (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
            assert logits.dtype == jnp.float32 and np.isfinite(float(value)), (model_config, pool)
            assert all(bool(jnp.all(jnp.isfinite(g))) and g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
            jaxpr = str(jax.make_jaxpr(loss)(params))
            num_edges = graph.senders.shape[0]
            assert f"bf16[{num_edges}," in jaxpr, "no bfloat16 per-edge array in the program"


@pytest.mark.parametrize("aggregator", sorted(pooling.AGGREGATORS))
def test_remat_recomputes_the_aggregation_with_the_same_values_and_gradients(aggregator):
    """trainer.remat=true wraps each neighbourhood aggregation in jax.checkpoint: the program
    has a checkpoint, and the logits, GenAgg's auxiliary loss and every gradient equal those
    without it, for every aggregator inside a GCN."""
    pool = {"name": aggregator} | ({"learn": True} if pooling.AGGREGATORS[aggregator].takes_exponent else {})
    results = {}
    for remat in (False, True):
        config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 40,
                                                                                "task": "classification"}},
                                   "model": {"name": "gcn", "hidden": 4}, "pool": pool, "trainer": {"remat": remat}})
        ds = load_dataset(config)
        model = build_model(config, ds)
        graph = node_inputs(config, ds)[0]
        params = init_params(model, *run_keys(0), graph)

        def loss(params):
            logits, state = model.apply({"params": params}, graph, deterministic=True, mutable=["intermediates", "losses"])
            auxiliary = sum(jnp.sum(v) for v in jax.tree.leaves(state.get("losses", {})))
            return jnp.sum(jnp.sin(logits)) + auxiliary, (logits, auxiliary)

        results[remat] = jax.value_and_grad(loss, has_aux=True)(params)
        assert ("remat" in str(jax.make_jaxpr(loss)(params))) == remat  # jax.checkpoint's primitive
    ((value, (logits, aux)), grads), ((value_r, (logits_r, aux_r)), grads_r) = results[False], results[True]
    np.testing.assert_allclose(logits_r, logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(aux_r, aux, rtol=1e-6, atol=1e-7)
    assert jax.tree.structure(grads) == jax.tree.structure(grads_r)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
