"""GA's learnable rivals (powermean, softmax_learned, var, std): float64 NumPy references of the
papers' formulas with the peers' semantics, the contract every operator meets (empty segments,
zero edges, one node, jit, vmap, readout), and equality with PyG's own implementations where
torch_geometric is installed (the ``bench`` extra)."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gaflax import pooling
from gaflax.config import Config
from gaflax.models import alphas_from_intermediates
from gaflax.data import budgets_for, pad_batch
from gaflax.tasks import build_model, init_params, load_dataset, make_optimizer, node_inputs, run_keys

RIVALS = ["powermean", "softmax_learned", "var", "std"]
HAS_PYG = importlib.util.find_spec("torch_geometric") is not None
needs_pyg = pytest.mark.skipif(not HAS_PYG, reason="torch_geometric is not installed (pip install -e '.[bench]')")


# ---------------------------------------------------------------------------------------------
# float64 NumPy references, one segment at a time
# ---------------------------------------------------------------------------------------------
def np_powermean(x, p, lo=1e-4, hi=100.0):
    if len(x) == 0:
        return np.zeros(x.shape[1:])
    return np.clip(np.mean(np.clip(x, lo, hi) ** p, axis=0), lo, hi) ** (1 / p)


def np_softmax_learned(x, t):
    if len(x) == 0:
        return np.zeros(x.shape[1:])
    z = t * x
    e = np.exp(z - z.max(axis=0))
    return np.sum(e / e.sum(axis=0) * x, axis=0)


def np_var(x):
    return np.zeros(x.shape[1:]) if len(x) == 0 else np.mean(x * x, axis=0) - np.mean(x, axis=0) ** 2


def np_std(x):
    out = np.sqrt(np.maximum(np_var(x), 1e-5))
    return np.where(out <= np.sqrt(1e-5), 0, out)


REFERENCES = {"powermean": (np_powermean, "p"), "softmax_learned": (np_softmax_learned, "t"),
              "var": (np_var, None), "std": (np_std, None)}


def _case(seed, n_edges=40, segments=7, channels=(2, 3)):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.5, (n_edges, *channels))
    x[:5] = rng.uniform(0, 300, (5, *channels))  # some above powermean's clamp
    ids = np.sort(rng.integers(0, segments - 1, n_edges)).astype(np.int32)  # the last segment is empty
    param = rng.uniform(0.3, 2.5, channels) * rng.choice([-1, 1], channels)  # signs: soft min and max
    return x, ids, segments, param


@pytest.mark.parametrize("name", RIVALS)
def test_rivals_match_float64_references(name, x64):
    ref, param_name = REFERENCES[name]
    pool, _ = pooling.make(name)
    for seed in range(3):
        x, ids, segments, param = _case(seed)
        if name == "powermean":
            param = np.abs(param)  # p < 0 is allowed, but the clamp then dominates; test both below
        params = {param_name: jnp.asarray(param)} if param_name else None
        out = np.asarray(pool(jnp.asarray(x), jnp.asarray(ids), segments, params=params))
        for s in range(segments):
            rows = x[ids == s]
            expected = ref(rows, param) if param_name else ref(rows)
            np.testing.assert_allclose(out[s], expected, rtol=1e-12, atol=1e-12, err_msg=f"{name} segment {s}")
    if name == "powermean":  # negative p, per channel
        x, ids, segments, _ = _case(7)
        p = np.array([[-1.0, -0.5, 2.0], [0.5, -2.0, 1.0]])
        out = np.asarray(pool(jnp.asarray(x), jnp.asarray(ids), segments, params={"p": jnp.asarray(p)}))
        for s in range(segments - 1):
            np.testing.assert_allclose(out[s], np_powermean(x[ids == s], p), rtol=1e-12)


@pytest.mark.parametrize("name", RIVALS)
def test_rival_gradients_are_exact(name, x64):
    """check_grads (float64, first order, both modes) with respect to the messages and the
    per-channel parameter, away from powermean's clamp edges and std's floor."""
    pool, _ = pooling.make(name)
    _, param_name = REFERENCES[name]
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 3.0, (12, 2, 3))
    ids = jnp.asarray(np.repeat(np.arange(4), 3), jnp.int32)
    param = jnp.asarray(rng.uniform(0.5, 2.0, (2, 3)))
    if param_name:
        check_grads(lambda x, q: pool(x, ids, 5, params={param_name: q}), (jnp.asarray(x), param), order=1,
                    modes=("fwd", "rev"))
    else:
        check_grads(lambda x: pool(x, ids, 5), (jnp.asarray(x),), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", RIVALS)
def test_rival_contract_edges(name):
    """Empty segments give 0 with zero gradient (for the messages and the parameter); zero edges
    and a single node give finite values and gradients; jit and vmap (over messages and over the
    parameter, as a grid does) agree with the plain call; [N, F] inputs work as a readout."""
    pool, _ = pooling.make(name)
    _, param_name = REFERENCES[name]

    def call(x, ids, n, q):
        return pool(x, ids, n, params={param_name: q} if param_name else None)

    q = jnp.full((2, 3), 1.3)
    x = jax.random.normal(jax.random.key(0), (6, 2, 3))
    ids = jnp.array([0, 0, 1, 1, 1, 3], jnp.int32)  # segment 2 is empty
    out = call(x, ids, 4, q)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(out[2], 0)
    gx, gq = jax.grad(lambda x, q: jnp.sum(call(x, ids, 4, q)[2]), (0, 1))(x, q)
    np.testing.assert_array_equal(gx, 0)
    np.testing.assert_array_equal(gq, 0)
    full_grads = jax.grad(lambda x, q: jnp.sum(call(x, ids, 4, q) ** 2), (0, 1))(x, q)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in full_grads)
    # Zero edges: every segment is empty.
    empty = call(jnp.zeros((0, 2, 3)), jnp.zeros((0,), jnp.int32), 3, q)
    np.testing.assert_array_equal(empty, 0)
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda q: jnp.sum(call(jnp.zeros((0, 2, 3)), jnp.zeros((0,), jnp.int32),
                                                                        3, q)))(q))))
    # One node, one message (its self-loop).
    one = call(x[:1], jnp.zeros((1,), jnp.int32), 1, q)
    assert bool(jnp.all(jnp.isfinite(one)))
    if name in ("var", "std"):
        np.testing.assert_array_equal(one, 0)
    elif name == "softmax_learned":
        np.testing.assert_allclose(one[0], x[0], rtol=1e-6)
    # jit, and vmap over messages and over the parameter.
    np.testing.assert_allclose(jax.jit(call, static_argnums=2)(x, ids, 4, q), out, rtol=1e-6, atol=1e-6)
    over_x = jax.vmap(lambda m: call(m, ids, 4, q))(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(over_x[0], out, rtol=1e-6, atol=1e-6)
    over_q = jax.vmap(lambda r: call(x, ids, 4, r))(jnp.stack([q, q + 0.5]))
    np.testing.assert_allclose(over_q[0], out, rtol=1e-6, atol=1e-6)
    # A readout: node features [N, F] pooled per graph.
    nodes = x.reshape(6, 6)
    pooled = pool(nodes, ids, 4, params={param_name: jnp.full((6,), 1.3)} if param_name else None)
    assert pooled.shape == (4, 6) and bool(jnp.all(jnp.isfinite(pooled)))


@pytest.mark.parametrize("name", ["powermean"])  # softmax_learned's t takes the same path
def test_rival_parameters_are_learned_per_channel_and_reported(name):
    """In a GAT each layer learns one value per head and channel; a graph readout one per feature.
    They are reported with the alphas, and get no weight decay (like GA's exponent)."""
    param_name = REFERENCES[name][1]
    for kind, raw in [("node", {"dataset": {"name": "synthetic", "options": {"num_nodes": 60, "task": "classification"}},
                                "pool": {"name": name}}),
                      ("graph", {"dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 8,
                                                                              "task": "classification"}},
                                 "readout": {"name": name}})]:
        config = Config.from_dict({**raw, "model": {"hidden": 4, "heads": 2}})
        ds = load_dataset(config)
        model = build_model(config, ds)
        if kind == "node":
            inputs = node_inputs(config, ds)[0]
        else:
            graphs = [ds[i] for i in range(4)]
            inputs = pad_batch(graphs, ds.labels[:4], budgets_for(ds, 4)).graph
        params = init_params(model, *run_keys(0), inputs)
        if kind == "node":
            assert params["gat_0"]["aggregator_params"][param_name].shape == (2, 4)
            assert params["gat_1"]["aggregator_params"][param_name].shape == (1, ds.num_classes)
            owner = params["gat_0"]["aggregator_params"]
        else:
            assert params["readout_params"][param_name].shape == (8,)  # heads * hidden features
            owner = params["readout_params"]
        _, state = model.apply({"params": params}, inputs, deterministic=True, mutable=["intermediates"])
        reported = alphas_from_intermediates(state["intermediates"])
        assert np.allclose(reported[("gat_0/" if kind == "node" else "readout/") + param_name], 1.0), reported.keys()
        # Weight decay with a zero gradient moves every decayed weight, and not these.
        owner[param_name] = owner[param_name] + 0.5
        tx = make_optimizer(Config.from_dict({"optimizer": {"weight_decay": 1.0}}), params)
        updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
        moved = updates["gat_0"]["aggregator_params"] if kind == "node" else updates["readout_params"]
        np.testing.assert_array_equal(moved[param_name], 0)
        assert bool(jnp.any(updates["gat_0"]["proj"]["kernel"] != 0))


# ---------------------------------------------------------------------------------------------
# The peers' own implementations
# ---------------------------------------------------------------------------------------------
def _pyg(name, channels):
    from torch_geometric.nn import aggr

    return {"powermean": lambda: aggr.PowerMeanAggregation(learn=True, channels=channels),
            "softmax_learned": lambda: aggr.SoftmaxAggregation(learn=True, channels=channels),
            "var": aggr.VarAggregation, "std": aggr.StdAggregation}[name]()


@needs_pyg
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch_geometric's import uses torch.jit.script
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", RIVALS)
def test_rivals_equal_pyg_values_and_gradients(name):
    """Same inputs and parameters as PyG 2.8's aggregation modules: equal values, and equal
    gradients for the messages and the per-channel parameter, on non-empty segments (PyG's
    powermean gives an empty segment 1e-4^(1/p), gaflax 0)."""
    import torch

    param_name = REFERENCES[name][1]
    rng = np.random.default_rng(11)
    channels = 5
    x = rng.normal(0.3, 2.0, (60, channels)).astype(np.float32)
    x[:4] = rng.uniform(50, 300, (4, channels))
    ids = np.sort(np.concatenate([np.arange(8), rng.integers(0, 8, 52)])).astype(np.int64)  # none empty
    param = rng.uniform(0.5, 2.0, channels).astype(np.float32)

    module = _pyg(name, channels)
    if param_name:
        getattr(module, param_name).data = torch.tensor(param)
    xt = torch.tensor(x, requires_grad=True)
    out_t = module(xt, torch.tensor(ids), dim_size=8)
    cot = rng.normal(size=out_t.shape).astype(np.float32)
    (out_t * torch.tensor(cot)).sum().backward()

    pool, _ = pooling.make(name)

    def f(x, q):
        return jnp.sum(pool(x, jnp.asarray(ids, jnp.int32), 8, params={param_name: q} if param_name else None) * cot)

    out = pool(jnp.asarray(x), jnp.asarray(ids, jnp.int32), 8, params={param_name: jnp.asarray(param)} if param_name else None)
    gx, gq = jax.grad(f, (0, 1))(jnp.asarray(x), jnp.asarray(param))
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=2e-4, atol=2e-5)
    if param_name:
        np.testing.assert_allclose(gq, getattr(module, param_name).grad.numpy(), rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------------------------
# PNA
# ---------------------------------------------------------------------------------------------
def np_pna(rows, delta, mix, bias):
    """One segment of PNA for [n, H, C] rows: 4 aggregators x 3 scalers, mixed per head."""
    if len(rows) == 0:
        return np.zeros(mix.shape[::2])
    parts = np.concatenate([rows.mean(0), rows.min(0), rows.max(0), np_std(rows)], axis=-1)  # [H, 4C]
    log_d = np.log(len(rows) + 1)
    scaled = np.concatenate([parts, parts * log_d / delta, parts * delta / log_d], axis=-1)  # [H, 12C]
    return np.einsum("hk,hkc->hc", scaled, mix) + bias


def test_pna_matches_the_float64_formula(x64):
    pool, _ = pooling.make("pna", delta=1.7)
    x, ids, segments, _ = _case(5)
    params = {k: v.astype(jnp.float64) for k, v in pool.initial_params(jax.random.key(3), (2, 3)).items()}
    params["mix_bias"] = params["mix_bias"] + 0.25
    assert params["mix"].shape == (2, 36, 3)
    out = np.asarray(pool(jnp.asarray(x), jnp.asarray(ids), segments, params=params))
    for s in range(segments):
        expected = np_pna(x[ids == s], 1.7, np.asarray(params["mix"]), np.asarray(params["mix_bias"]))
        np.testing.assert_allclose(out[s], expected, rtol=1e-12, atol=1e-12, err_msg=f"segment {s}")
    np.testing.assert_array_equal(out[segments - 1], 0)  # empty: 0, not the bias
    # The mixing map's gradient (the messages' goes through min / max, checked against PyG below).
    check_grads(lambda m: pool(jnp.asarray(x), jnp.asarray(ids), segments, params={"mix": m, "mix_bias": params["mix_bias"]}),
                (params["mix"],), order=1, modes=("fwd", "rev"))


def test_pna_delta_comes_from_the_training_graphs():
    """delta is the mean log(d + 1) over the training graph's nodes (self-loops counted when the
    model adds them); a readout's is over the training graphs' sizes."""
    from gaflax.tasks import degree_stats

    node = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 50, "task": "classification"}},
                             "pool": {"name": "pna"}})
    ds = load_dataset(node)
    degrees = np.bincount(np.asarray(ds.graph.receivers), minlength=50)
    stats = degree_stats(node, ds)
    assert stats["pool"]["delta"] == pytest.approx(np.mean(np.log(degrees + 2)))  # GAT adds self-loops
    graph = Config.from_dict({"dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 12,
                                                                           "task": "classification"}},
                              "model": {"name": "gin"}, "readout": {"name": "pna"}})
    gds = load_dataset(graph)
    train = np.array([0, 3, 5])
    stats = degree_stats(graph, gds, train)
    assert stats["readout"]["delta"] == pytest.approx(np.mean([np.log(gds[i].nodes.shape[0] + 1) for i in train]))
    assert degree_stats(Config(), ds) == {}  # only for PNA


@needs_pyg
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pna_equals_pyg_degree_scaler_aggregation():
    """PyG's DegreeScalerAggregation(['mean', 'min', 'max', 'std'], ['identity', 'amplification',
    'attenuation'], deg) followed by the same linear map: equal values and message gradients."""
    import torch
    from torch_geometric.nn.aggr import DegreeScalerAggregation

    rng = np.random.default_rng(12)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    ids = np.sort(np.concatenate([np.arange(9), rng.integers(0, 9, 41)])).astype(np.int64)
    histogram = np.bincount(np.bincount(ids, minlength=9))
    delta = float(np.sum(np.log(np.arange(len(histogram)) + 1) * histogram) / histogram.sum())
    module = DegreeScalerAggregation(["mean", "min", "max", "std"], ["identity", "amplification", "attenuation"],
                                     torch.tensor(histogram))
    mix = rng.normal(size=(48, 4)).astype(np.float32) * 0.2
    xt = torch.tensor(x, requires_grad=True)
    out_t = module(xt, torch.tensor(ids), dim_size=9) @ torch.tensor(mix)
    out_t.sum().backward()

    pool, _ = pooling.make("pna", delta=delta)
    params = {"mix": jnp.asarray(mix)[None], "mix_bias": jnp.zeros((1, 4))}
    out = pool(jnp.asarray(x), jnp.asarray(ids, jnp.int32), 9, params=params)
    grad = jax.grad(lambda v: jnp.sum(pool(v, jnp.asarray(ids, jnp.int32), 9, params=params)))(jnp.asarray(x))
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=2e-4, atol=2e-5)


def test_pna_mixing_map_is_a_decayed_weight():
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 40, "task": "classification"}},
                               "model": {"name": "gcn", "hidden": 4}, "pool": {"name": "pna"},
                               "optimizer": {"weight_decay": 1.0}})
    ds = load_dataset(config)
    params = init_params(build_model(config, ds), *run_keys(0), node_inputs(config, ds)[0])
    weights = params["gcn_0"]["aggregator_weights"]
    assert weights["mix"].shape == (1, 48, 4) and "aggregator_params" not in params["gcn_0"]
    tx = make_optimizer(config, params)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    assert bool(jnp.all(updates["gcn_0"]["aggregator_weights"]["mix"] != 0))


# ---------------------------------------------------------------------------------------------
# LAF
# ---------------------------------------------------------------------------------------------
def np_laf(rows, w, eps=1e-7):
    """One segment of LAF units for [n, H, C] rows, w [12, H, C, U] -> [H, C, U]."""
    x = np.clip(1 / (1 + np.exp(-rows)), eps, 1 - eps)[..., None]
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    terms = []
    for k, base in enumerate((x, 1 - x, x, 1 - x)):
        total = np.maximum(np.sum(base ** relu(w[k]), axis=0), eps)
        terms.append(total ** relu(w[4 + k]) * w[8 + k])
    num, den = terms[0] + terms[1], terms[2] + terms[3]
    den = np.where(np.abs(den) < eps, np.where(den > 0, 1.0, -1.0) * eps, den)
    return num / den


def test_laf_matches_the_float64_formula(x64):
    pool, _ = pooling.make("laf")
    x, ids, segments, _ = _case(9)
    x = x / 50  # inside the sigmoid's range
    params = {k: v.astype(jnp.float64) for k, v in pool.initial_params(jax.random.key(5), (2, 3)).items()}
    out = np.asarray(pool(jnp.asarray(x), jnp.asarray(ids), segments, params=params))
    mix = np.asarray(params["mix"])
    for s in range(segments - 1):
        units = np_laf(x[ids == s], np.asarray(params["laf"]))  # [H, C, U]
        expected = np.einsum("hk,hkc->hc", units.reshape(2, -1), mix) + np.asarray(params["mix_bias"])
        np.testing.assert_allclose(out[s], expected, rtol=1e-10, atol=1e-10, err_msg=f"segment {s}")
    np.testing.assert_array_equal(out[segments - 1], 0)


def test_laf_starts_with_positive_coefficients(x64):
    """LAF starts uniform on [0, 1] (public GIN-LAF code's choice): every numerator and denominator
    is positive, so no unit starts at a denominator near 0 (the standard normal start gave outputs
    of 1e7 and a GCN at chance on Cora)."""
    pool, _ = pooling.make("laf")
    x, ids, segments, _ = _case(11)
    for key in range(5):
        w = np.asarray(pool.initial_params(jax.random.key(key), (2, 3))["laf"], np.float64)
        assert w.min() >= 0 and w.max() <= 1
        for s in range(segments - 1):
            units = np_laf(x[ids == s], w)
            assert np.all(units > 0) and np.all(np.isfinite(units)), (key, s)


def test_laf_can_be_the_mean(x64):
    """The paper's table: mean = L_{1,1}(x) / L_{1,0}(x) (alpha = gamma = 1, a = b = e = 1, f = 0)."""
    pool, _ = pooling.make("laf")
    x, ids, segments, _ = _case(10)
    units = pooling.LAF_UNITS
    w = np.zeros((12, 2, 3, units))
    w[0] = w[4] = 1  # b, a
    w[6] = 1  # e (f = w[2] = 0)
    w[8] = w[10] = 1  # alpha, gamma
    mix = np.zeros((2, 3 * units, 3))
    for c in range(3):
        mix[:, c * units:(c + 1) * units, c] = 1 / units
    out = pool(jnp.asarray(x), jnp.asarray(ids), segments,
               params={"laf": jnp.asarray(w), "mix": jnp.asarray(mix), "mix_bias": jnp.zeros((2, 3))})
    for s in range(segments - 1):
        expected = np.mean(np.clip(1 / (1 + np.exp(-x[ids == s])), 1e-7, 1 - 1e-7), axis=0)
        np.testing.assert_allclose(out[s], expected, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# GenAgg
# ---------------------------------------------------------------------------------------------
def np_mish(x):
    return x * np.tanh(np.log1p(np.exp(x)))


def np_mish_slope(x):
    """d/dx x tanh(softplus(x)) = tanh(s) + x sigmoid(x) (1 - tanh(s)^2), s = softplus(x)."""
    t = np.tanh(np.logaddexp(0, x))
    return t + x * np.exp(-np.logaddexp(0, -x)) * (1 - t ** 2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mish_and_its_hand_written_derivative_match_the_textbook_form(dtype):
    x = np.concatenate([np.linspace(-30, 30, 601), [-1e4, -88, -20, 0, 19.999, 20, 20.001, 25, 1e4]])
    with jax.enable_x64(dtype == "float64"):
        values, slopes = jax.vmap(jax.value_and_grad(pooling._mish))(jnp.asarray(x, dtype))
        assert values.dtype == slopes.dtype == jnp.dtype(dtype)
        tol = 1e-6 if dtype == "float32" else 1e-13
        np.testing.assert_allclose(values, x * np.tanh(np.logaddexp(0, x)), rtol=tol, atol=tol)
        np.testing.assert_allclose(slopes, np_mish_slope(x), rtol=tol, atol=tol)
        if dtype == "float64":  # the custom derivative against finite differences, to second order
            check_grads(pooling._mish, (jnp.asarray([-3.0, -0.5, 0.0, 0.7, 4.0]),), order=2, modes=["fwd", "rev"])


def np_mlp(params, prefix, x, widths):
    """Linear, then BatchNorm1d in training mode over all rows of x (biased variance), then Mish."""
    for i in range(len(widths) - 1):
        x = x @ np.asarray(params[f"{prefix}{i}_kernel"]) + np.asarray(params[f"{prefix}{i}_bias"])
        if i < len(widths) - 2:
            rows = x.reshape(-1, x.shape[-1])
            x = (x - rows.mean(0)) / np.sqrt(rows.var(0) + 1e-5)
            x = np_mish(x * np.asarray(params[f"{prefix}{i}_scale"]) + np.asarray(params[f"{prefix}{i}_shift"]))
    return x


def np_genagg(x, ids, segments, params):
    """All segments at once: batch normalisation makes f depend on every row, and f^-1 on every
    segment (an empty one included, as in the package)."""
    a, b = np.clip(float(params["a"]), 0, 1), np.clip(float(params["b"]), 0, 1)
    counts = np.array([np.sum(ids == s) for s in range(segments)])
    means = np.stack([x[ids == s].mean(0) if counts[s] else np.zeros(x.shape[1:]) for s in range(segments)])
    encoded = np_mlp(params, "f", (x - b * means[ids])[..., None], pooling.GENAGG_WIDTHS)
    scaled = np.stack([encoded[ids == s].mean(0) * counts[s] ** a if counts[s] else np.zeros(encoded.shape[1:])
                       for s in range(segments)])
    out = np_mlp(params, "f_inverse", scaled, pooling.GENAGG_WIDTHS[::-1])[..., 0]
    return np.where((counts > 0).reshape(-1, *([1] * (out.ndim - 1))), out, 0)


def test_genagg_matches_the_float64_formula(x64):
    pool, _ = pooling.make("genagg")
    x, ids, segments, _ = _case(13)
    x = x / 20
    params = {k: jnp.asarray(v, jnp.float64) for k, v in pool.initial_params(jax.random.key(2), (2, 3)).items()}
    params["a"], params["b"] = jnp.asarray(0.7), jnp.asarray(0.4)
    rng = np.random.default_rng(3)  # batch normalisation's affine parameters away from their start
    for name in [k for k in params if k.endswith(("_scale", "_shift"))]:
        params[name] = jnp.asarray(rng.normal(1.0 if name.endswith("_scale") else 0.0, 0.3, params[name].shape))
    out, aux = pool(jnp.asarray(x), jnp.asarray(ids), segments, params=params, with_aux=True)
    np.testing.assert_allclose(out, np_genagg(x, ids, segments, params), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out[segments - 1], 0)
    means = np.stack([x[ids == s].mean(0) for s in range(segments - 1)])
    shifted = x - 0.4 * means[ids]
    reconstructed = np_mlp(params, "f_inverse", np_mlp(params, "f", shifted[..., None], pooling.GENAGG_WIDTHS),
                           pooling.GENAGG_WIDTHS[::-1])[..., 0]
    np.testing.assert_allclose(aux, np.mean((np.abs(shifted) - np.abs(reconstructed)) ** 2), rtol=1e-10)
    # a and b live in [0, 1]
    params["a"], params["b"] = jnp.asarray(1.8), jnp.asarray(-0.5)
    clipped = dict(params, a=jnp.asarray(1.0), b=jnp.asarray(0.0))
    np.testing.assert_allclose(pool(jnp.asarray(x), jnp.asarray(ids), segments, params=params),
                               pool(jnp.asarray(x), jnp.asarray(ids), segments, params=clipped), rtol=1e-12)


def _genagg_gcn():
    """A small GCN with GenAgg on synthetic nodes: (config, dataset, model, inputs, initial params)."""
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 40, "task": "classification"}},
                               "model": {"name": "gcn", "hidden": 4}, "pool": {"name": "genagg"}})
    ds = load_dataset(config)
    model = build_model(config, ds)
    inputs = node_inputs(config, ds)[0]
    return config, ds, model, inputs, init_params(model, *run_keys(0), inputs)


def test_genagg_a_and_b_leave_the_bound_they_start_at():
    """a and b start at 0, the edge of [0, 1]. A descent step below 0 must not freeze them (plain
    clip has zero gradient there): the gradient passes when it points back into [0, 1], is 0 when
    it points further out, and the reported value is the clipped one."""
    grad = jax.grad(lambda raw, c: pooling.unit_interval(raw) * c)
    assert float(grad(-0.01, -2.0)) == -2.0  # below 0, descent moves it up: passes
    assert float(grad(-0.01, 2.0)) == 0.0  # below 0, descent would move it further down
    assert float(grad(1.2, 3.0)) == 3.0 and float(grad(1.2, -3.0)) == 0.0
    assert float(grad(0.0, 2.0)) == 2.0 and float(grad(0.4, -1.0)) == -1.0
    np.testing.assert_allclose(pooling.unit_interval(jnp.asarray([-0.3, 0.5, 1.7])), [0.0, 0.5, 1.0])
    # In a model: a raw a below 0 is reported as the value GenAgg uses, 0.
    _, _, model, inputs, params = _genagg_gcn()
    params["gcn_0"]["aggregator_params"]["a"] = jnp.asarray(-0.05)
    _, state = model.apply({"params": params}, inputs, deterministic=True, mutable=["intermediates"])
    assert float(state["intermediates"]["gcn_0"]["aggregator_params"]["a"][0]) == 0.0  # reported clipped


def test_genagg_reconstruction_loss_joins_the_objective():
    """The layers sow GenAgg's inverse-reconstruction loss and the train step adds it: the loss a
    GenAgg model reports is its classification loss plus that term."""
    from gaflax import losses
    from gaflax.tasks import make_steps

    config, ds, model, inputs, params = _genagg_gcn()
    norms = {f"{prefix}{i}_{part}" for prefix in ("f", "f_inverse") for i in (0, 1) for part in ("scale", "shift")}
    assert set(params["gcn_0"]["aggregator_params"]) == {"a", "b"} | norms  # without weight decay
    _, state = model.apply({"params": params}, inputs, deterministic=True, mutable=["intermediates", "losses"])
    aux = sum(float(v) for v in jax.tree_util.tree_leaves(state["losses"]))
    assert aux > 0 and len(jax.tree_util.tree_leaves(state["losses"])) == 2  # one per layer
    tx = make_optimizer(config, params)
    train_step = jax.jit(make_steps(model, tx, losses.cross_entropy)[0])
    labels, mask = jnp.asarray(ds.labels), jnp.ones(ds.num_nodes, bool)
    _, _, reported = train_step(params, tx.init(params), inputs, labels, mask, jax.random.key(1))
    logits, state = model.apply({"params": params}, inputs, deterministic=False, rngs={"dropout": jax.random.key(1)},
                                mutable=["intermediates", "losses"])
    aux = sum(float(v) for v in jax.tree_util.tree_leaves(state["losses"]))  # with the same dropout
    np.testing.assert_allclose(float(reported), float(losses.cross_entropy(logits, labels, mask)) + aux, rtol=1e-5)


def test_genagg_without_the_inverse_loss():
    """``pool.inverse_loss=false`` (the package as it runs, below): the same aggregate, and an
    auxiliary loss of exactly 0 instead of the reconstruction term."""
    from gaflax.config import PoolConfig

    messages = jax.random.normal(jax.random.key(3), (30, 2, 3))
    segments = jax.random.randint(jax.random.key(4), (30,), 0, 6)
    with_loss, _ = pooling.from_config(PoolConfig(name="genagg"), "pool")
    without, _ = pooling.from_config(PoolConfig(name="genagg", inverse_loss=False), "pool")
    params = with_loss.initial_params(jax.random.key(5), (2, 3))
    out, loss = with_loss(messages, segments, 6, params=params, with_aux=True)
    out_without, loss_without = without(messages, segments, 6, params=params, with_aux=True)
    np.testing.assert_array_equal(out, out_without)
    assert float(loss) > 0 and float(loss_without) == 0.0
    # and its gradient reaches f^-1 through the aggregate alone
    grads = jax.grad(lambda p: without(messages, segments, 6, params=p, with_aux=True)[1])(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads))


@needs_pyg
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_genagg_package_never_applies_its_inverse_loss():
    """What ``pool.inverse_loss=false`` copies: the package registers the reconstruction loss as a
    forward hook of its autoencoder f, but ``GenAgg.forward`` calls ``f.forward``, which bypasses
    hooks. After a forward and backward pass the loss is still 0 and f^-1's gradient is the task
    loss's alone (the same as with the objective switched off)."""
    genagg_pkg = pytest.importorskip("genagg", reason="the genagg package is not installed (pip install genagg)")
    import torch
    from genagg.MLPAutoencoder import MLPAutoencoder

    grads = []
    for enforce_inverse in (True, False):
        torch.manual_seed(0)
        module = genagg_pkg.GenAgg(f=MLPAutoencoder(layer_sizes=pooling.GENAGG_WIDTHS, enforce_inverse=enforce_inverse,
                                                    init=None, jit=False))
        x = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
        index = torch.arange(40) % 7
        module(x, index, dim_size=7).square().mean().backward()
        assert float(module.f.inverse_loss) == 0.0
        grads.append(torch.cat([p.grad.flatten() for p in module.f.net_rev.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    # called as a module, the hook does fire and adds the reconstruction loss: so the test can fail
    f = MLPAutoencoder(layer_sizes=pooling.GENAGG_WIDTHS, init=None, jit=False)
    f(torch.randn(40, 1))
    assert float(f.inverse_loss) > 0


@needs_pyg
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_genagg_equals_the_authors_package():
    """The ``genagg`` package's GenAgg with the same f (its default batch normalisation, in
    training mode), a and b: equal values and message gradients."""
    genagg_pkg = pytest.importorskip("genagg", reason="the genagg package is not installed (pip install genagg)")
    import torch
    from genagg.MLPAutoencoder import MLPAutoencoder

    f = MLPAutoencoder(layer_sizes=pooling.GENAGG_WIDTHS, init=None, enforce_inverse=False, jit=False)
    module = genagg_pkg.GenAgg(f=f).train()  # batch normalisation with batch statistics, as gaflax's
    module.a.data.fill_(0.6)
    module.b.data.fill_(0.3)
    params = {"a": jnp.asarray(0.6), "b": jnp.asarray(0.3)}
    linears = {"f": [m for m in f.net_for.children() if isinstance(m, torch.nn.Linear)],
               "f_inverse": [m for m in f.net_rev.children() if isinstance(m, torch.nn.Linear)]}
    for prefix, layers in linears.items():
        for i, layer in enumerate(layers):
            params[f"{prefix}{i}_kernel"] = jnp.asarray(layer.weight.detach().numpy().T)
            params[f"{prefix}{i}_bias"] = jnp.asarray(layer.bias.detach().numpy())
        norms = [m for m in (f.net_for if prefix == "f" else f.net_rev).children() if isinstance(m, torch.nn.BatchNorm1d)]
        for i, norm in enumerate(norms):
            with torch.no_grad():
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
            params[f"{prefix}{i}_scale"] = jnp.asarray(norm.weight.detach().numpy())
            params[f"{prefix}{i}_shift"] = jnp.asarray(norm.bias.detach().numpy())
    rng = np.random.default_rng(14)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    ids = np.sort(np.concatenate([np.arange(6), rng.integers(0, 6, 34)])).astype(np.int64)
    xt = torch.tensor(x, requires_grad=True)
    out_t = module(xt, torch.tensor(ids), dim_size=6)
    out_t.sum().backward()
    pool, _ = pooling.make("genagg")
    out = pool(jnp.asarray(x), jnp.asarray(ids, jnp.int32), 6, params=params)
    grad = jax.grad(lambda v: jnp.sum(pool(v, jnp.asarray(ids, jnp.int32), 6, params=params)))(jnp.asarray(x))
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The extended GA
# ---------------------------------------------------------------------------------------------
def _alpha(p):
    return float(np.sign(p)) if np.isinf(p) else 2 / np.pi * np.arctan(p)


#: GenAgg's regression targets that the extended GA contains, with the parameters that give them:
#: (p, gate s, mean shift b, degree exponent gamma, log-degree weight delta).
EXTENDED_GA_COVERS = {
    "max": (np.inf, 0, 0, 0, 0), "min": (-np.inf, 0, 0, 0, 0), "mean": (0.0, 0, 0, 0, 0), "sum": (0.0, 0, 0, 1, 0),
    "logsumexp": (1.0, 0, 0, 0, 1), "max_mag": (np.inf, 1, 0, 0, 0), "min_mag": (-np.inf, 1, 0, 0, 0),
    "geomean_mag": (0.0, 1, 0, 0, 0), "harmean_mag": (-1.0, 1, 0, 0, 0), "rms": (2.0, 1, 0, 0, 0),
    "norm2": (2.0, 1, 0, 0.5, 0), "std": (2.0, 1, 1, 0, 0),
}


def _extended_ga_params(s, b, gamma, delta, channels=6):
    return {name: jnp.full((1, channels), value, jnp.float64)
            for name, value in (("gate", s), ("b", b), ("gamma", gamma), ("delta", delta))}


@pytest.mark.parametrize("target", sorted(EXTENDED_GA_COVERS))
def test_extended_ga_contains_twelve_regression_targets_exactly(target, x64):
    """With the parameters of EXTENDED_GA_COVERS, the extended GA is GenAgg's regression target
    (the authors' formulas, float64) on the benchmark's graphs, including the limits p = +-inf."""
    from gaflax.data.aggregator_regression import edge_lists, sample_graphs

    p, s, b, gamma, delta = EXTENDED_GA_COVERS[target]
    x, adjacency, y = sample_graphs(jax.random.key(5), target, 40, 8, 6, 0.3)
    senders, receivers, _ = edge_lists(adjacency)
    pool, _ = pooling.make("extended_ga")
    messages = x.reshape(-1, 6)[senders][:, None, :]
    out = pool(messages, receivers, 40 * 8 + 1, alpha=jnp.full((1, 6), _alpha(p)),
               params=_extended_ga_params(s, b, gamma, delta))[:-1, 0]
    np.testing.assert_allclose(out, y.reshape(-1, 6), rtol=1e-9, atol=1e-11)


def np_extended_ga(rows, weights, p, s, b, gamma, delta):
    """One segment, float64: z = x - b * wmean(x); n^gamma ((1 - s) LGA_p(z) + s GA_p(|z|)) + delta log n."""
    if len(rows) == 0:
        return np.zeros(rows.shape[1:])
    w = weights / weights.sum()
    z = rows - b * np.sum(w * rows, axis=0)
    if p == 0:
        signed, magnitude = np.sum(w * z, axis=0), np.exp(np.sum(w * np.log(np.abs(z)), axis=0))
    else:
        signed = np.log(np.sum(w * np.exp(p * z), axis=0)) / p
        magnitude = np.sum(w * np.abs(z) ** p, axis=0) ** (1 / p)
    n = len(rows)
    return n**gamma * ((1 - s) * signed + s * magnitude) + delta * np.log(n)


def test_extended_ga_matches_the_float64_formula_and_its_gradients(x64):
    """Values against the NumPy formula with attention weights, random parameters inside their
    ranges and an empty segment; check_grads (reverse mode, float64) for the messages, b, s, gamma
    and delta; finite gradients at the ends s, b in {0, 1} and alpha = +-1."""
    pool, _ = pooling.make("extended_ga")
    rng = np.random.default_rng(21)
    x, ids, segments, _ = _case(21, channels=(1, 3))
    weights = rng.uniform(0.2, 1.0, (len(x), 1))
    for p in (-1.5, 0.7, 2.0):
        s, b, gamma, delta = rng.uniform(0.1, 0.9, 4)
        params = {k: v[:, :3] for k, v in _extended_ga_params(s, b, gamma, delta).items()}
        out = pool(jnp.asarray(x), jnp.asarray(ids), segments, weights=jnp.asarray(weights),
                   alpha=jnp.full((1, 3), _alpha(p)), params=params)
        for seg in range(segments):
            rows = x[ids == seg]
            expected = np_extended_ga(rows, weights[ids == seg][:, :, None], p, s, b, gamma, delta)
            np.testing.assert_allclose(out[seg], expected, rtol=1e-10, atol=1e-12, err_msg=f"p={p} segment {seg}")
    ids_j, w_j = jnp.asarray(ids), jnp.asarray(weights)

    def f(x, b, s, gamma, delta, alpha=0.3):
        params = {"b": b, "gate": s, "gamma": gamma, "delta": delta}
        return pool(x, ids_j, segments, weights=w_j, alpha=jnp.full((1, 3), alpha), params=params)

    inside = [jnp.full((1, 3), v) for v in (0.4, 0.6, 0.3, 0.2)]
    check_grads(f, (jnp.asarray(x), *inside), order=1, modes=("rev",), eps=1e-7)
    for alpha in (-1.0, 1.0):
        for end in (0.0, 1.0):
            ends = [jnp.full((1, 3), end), jnp.full((1, 3), end), inside[2], inside[3]]
            grads = jax.grad(lambda *a: jnp.sum(f(*a, alpha=alpha)), argnums=(0, 1, 2, 3, 4))(jnp.asarray(x), *ends)
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads), (alpha, end)


def test_extended_ga_edges_zero_edges_one_node_and_nan(x64):
    """Zero edges give 0 with finite (zero) parameter gradients; a single message gives
    (1 - s) z + s |z| with z = (1 - b) x (n = 1: no degree term), at every alpha including +-1;
    a NaN message makes its own segment NaN and leaves the others finite."""
    pool, _ = pooling.make("extended_ga")
    s, b, gamma, delta = 0.3, 0.4, 0.5, 0.2
    params = {k: v[:, :3] for k, v in _extended_ga_params(s, b, gamma, delta).items()}

    def call(x, ids, n, params, alpha=0.3):
        return pool(x, ids, n, alpha=jnp.full((1, 3), alpha), params=params)

    none = jnp.zeros((0,), jnp.int32)
    np.testing.assert_array_equal(call(jnp.zeros((0, 1, 3)), none, 3, params), 0)
    grads = jax.grad(lambda p: jnp.sum(call(jnp.zeros((0, 1, 3)), none, 3, p)))(params)
    assert all(bool(jnp.all(g == 0)) for g in jax.tree_util.tree_leaves(grads))
    x = jnp.asarray([[[1.0, -2.0, 0.5]]])
    z = (1 - b) * np.asarray(x[0])
    for alpha in (-1.0, -0.5, 0.0, 0.3, 1.0):
        np.testing.assert_allclose(call(x, jnp.zeros((1,), jnp.int32), 1, params, alpha)[0],
                                   (1 - s) * z + s * np.abs(z), rtol=1e-12, err_msg=f"alpha={alpha}")
    rows = jnp.asarray(np.random.default_rng(4).normal(size=(6, 1, 3))).at[1, 0, 0].set(jnp.nan)
    out = call(rows, jnp.asarray([0, 0, 0, 1, 1, 1], jnp.int32), 2, params)
    assert bool(jnp.isnan(out[0, 0, 0])) and bool(jnp.all(jnp.isfinite(out[1])))
