"""The pooling registry: every operator's contract (jit and not, empty segments, weights), and the
GA operator's special points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaflax import pooling
from gaflax.compat import jraph
from tests.test_models import DISTINCT, small_graph


def _inputs(key, n_edges=9, segments=4):
    messages = jax.random.normal(key, (n_edges, 2, 3))
    receivers = jnp.asarray(np.random.default_rng(0).integers(0, segments - 1, n_edges), jnp.int32)  # last: empty
    logits = jax.random.normal(jax.random.fold_in(key, 1), (n_edges, 2))
    return messages, receivers, jraph.segment_softmax(logits, receivers, segments)


@pytest.mark.parametrize("aggregator", DISTINCT)
def test_every_operator_runs_under_jit_and_without_it(key, aggregator):
    entry = pooling.AGGREGATORS[aggregator]
    pool, exponent = pooling.make(aggregator, alpha=0.3, positive="softplus")
    assert (exponent is not None) == entry.takes_exponent
    messages, receivers, weights = _inputs(key)
    alpha = jnp.float32(0.3) if entry.takes_exponent else None
    eager = pool(messages, receivers, 4, weights=weights, alpha=alpha)
    jitted = jax.jit(pool, static_argnums=2)(messages, receivers, 4, weights=weights, alpha=alpha)
    assert eager.shape == (4, 2, 3) and bool(jnp.all(jnp.isfinite(eager)))
    np.testing.assert_allclose(jitted, eager, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(eager[3], 0)  # the empty segment
    # vmapped over a batch of message sets, as a grid does.
    batched = jax.vmap(lambda m: pool(m, receivers, 4, weights=weights, alpha=alpha))(jnp.stack([messages, -messages]))
    np.testing.assert_allclose(batched[0], eager, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("aggregator", DISTINCT)
def test_uses_weights_says_whether_the_weights_matter(key, aggregator):
    """The registry's ``uses_weights`` is true exactly for the operators whose output moves with the
    attention coefficients."""
    pool, _ = pooling.make(aggregator, alpha=0.3, positive="softplus")
    messages, receivers, weights = _inputs(key)
    alpha = jnp.float32(0.3) if pooling.AGGREGATORS[aggregator].takes_exponent else None
    other = jraph.segment_softmax(jax.random.normal(jax.random.fold_in(key, 9), weights.shape), receivers, 4)
    a = pool(messages, receivers, 4, weights=weights, alpha=alpha)
    b = pool(messages, receivers, 4, weights=other, alpha=alpha)
    assert bool(jnp.any(jnp.abs(a - b) > 1e-4)) == pooling.AGGREGATORS[aggregator].uses_weights


def test_make_binds_options_and_names_the_key():
    fn, exponent = pooling.make("ga", alpha=-0.2, learn=True, scope="head", lr_mult=3.0, positive="elu1")
    assert fn.fn.keywords == {"positive": "elu1"} and fn.params == ()
    assert exponent == pooling.ExponentSpec(init=-0.2, learn=True, scope="head", lr_mult=3.0)
    fn, exponent = pooling.make("max", alpha=0.9, positive="elu1")
    assert fn.fn is pooling.maximum and exponent is None
    fn, exponent = pooling.make("powermean", alpha=0.9)
    assert fn.params == (pooling.ParamSpec("p", 1.0),) and exponent is None
    with pytest.raises(ValueError, match=r"readout.name='median' is not a registered pooling operator"):
        pooling.make("median", key="readout")


@pytest.mark.parametrize("positive", ["relu_eps", "elu1"])
def test_ga_at_alpha_half_equals_weighted_sum_on_positive_messages(key, positive):
    """GA pooling maps back to the message domain, so at p = 1 it is the attention-weighted mean."""
    graph = small_graph(key)
    messages = jnp.abs(jax.random.normal(key, (graph.senders.shape[0], 2, 3))) + 0.1
    logits = jax.random.normal(jax.random.fold_in(key, 1), (graph.senders.shape[0], 2))
    att = jraph.segment_softmax(logits, graph.receivers, 12)
    ws = pooling.weighted_sum(messages, graph.receivers, 12, weights=att)
    ga = pooling.ga(messages, graph.receivers, 12, weights=att, alpha=0.5, positive=positive)
    np.testing.assert_allclose(ga, ws, rtol=2e-5, atol=2e-6)


def test_ga_pooling_limits_are_min_and_max_of_messages(key):
    """alpha = +-1: the max / min of the (real-valued) messages, whatever the transform."""
    graph = small_graph(key)
    messages = jax.random.normal(key, (graph.senders.shape[0], 2, 3)) * 3
    for positive in ("softplus", "elu1"):  # relu_eps clips negative messages: not invertible there
        top = pooling.ga(messages, graph.receivers, 12, alpha=1.0, positive=positive)
        bottom = pooling.ga(messages, graph.receivers, 12, alpha=-1.0, positive=positive)
        np.testing.assert_allclose(top, pooling.maximum(messages, graph.receivers, 12), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bottom, pooling.minimum(messages, graph.receivers, 12), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("aggregator, positive", [(name, "softplus") for name in DISTINCT]
                         + [("ga", positive) for positive in sorted(pooling.POSITIVE) if positive != "softplus"])
def test_segments_without_weight_pool_to_zero(key, aggregator, positive):
    """Attention dropout can zero every edge of a low-degree node (p = 0.6^2 for a node with one
    neighbour and its self-loop). Such a segment, and one with no edges at all, pools to 0 like the
    weighted sum, with a zero gradient: inverse(GA) of it used to be log(1e-30) = -69, which broke
    GA training on CiteSeer."""
    messages = jax.random.normal(key, (5, 2, 3))
    receivers = jnp.array([0, 0, 1, 1, 1])  # segment 2 has no edges
    weights = jnp.array([[0.5, 0.5], [0.5, 0.5], [0.0, 0.3], [0.0, 0.3], [0.0, 0.4]])  # head 0 of 1 dropped
    pool, _ = pooling.make(aggregator, positive=positive)
    uses_weights = pooling.AGGREGATORS[aggregator].uses_weights
    out = pool(messages, receivers, 3, weights=weights, alpha=0.3)
    assert out.shape == (3, 2, 3) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(out[2], 0)
    if uses_weights:
        np.testing.assert_array_equal(out[1, 0], 0)
    grad = jax.grad(lambda m: jnp.sum(pool(m, receivers, 3, weights=weights, alpha=0.3)[1:, 0]))(messages)
    assert bool(jnp.all(jnp.isfinite(grad)))
    if uses_weights:
        np.testing.assert_array_equal(grad[2:, 0], 0)


