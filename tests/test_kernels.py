"""The fused Pallas kernel (gaflax.kernels) in interpret mode against the XLA path of segment_ga:
values and gradients (data, weights, alpha), the limits alpha = +-1, zeros, empty segments,
out-of-range ids, float64, vmap and zero edges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gaflax.ga import segment_ga, segment_log_ga
from gaflax.kernels import fused_segment_sum

NUM_SEGMENTS = 9


def _graph(dtype=np.float32, num_edges=40, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.integers(0, NUM_SEGMENTS, num_edges))
    ids[ids == 4] = 5  # segment 4 is empty
    ids[-2:] = NUM_SEGMENTS  # rows of no segment are dropped
    x = (rng.random((num_edges, channels)) * 3).astype(dtype)
    x[3, 1] = 0.0  # a zero input
    x[ids == 6, 2] = 0.0  # a segment whose channel is all zeros
    w = rng.random(num_edges).astype(dtype)
    return jnp.asarray(x), jnp.asarray(w), jnp.asarray(ids)


def test_fused_segment_sum_equals_a_segment_sum_of_the_terms():
    x, w, ids = _graph()
    scale = jnp.asarray([[0.5, 2.0, -1.0]])
    per_segment = jnp.arange(NUM_SEGMENTS * 3, dtype=jnp.float32).reshape(NUM_SEGMENTS, 3)
    terms = lambda x_, w_, s_, g_: w_ * jnp.exp(s_ * x_) + g_  # noqa: E731
    got = fused_segment_sum(terms, [x, jnp.broadcast_to(w[:, None], x.shape)], [scale], [per_segment], ids,
                            NUM_SEGMENTS, interpret=True)
    valid = ids < NUM_SEGMENTS
    want = jax.ops.segment_sum(w[:, None] * jnp.exp(scale * x) + per_segment[jnp.minimum(ids, NUM_SEGMENTS - 1)]
                               * valid[:, None], ids, NUM_SEGMENTS)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(np.asarray(got[4]) == 0)  # empty segment
    # One value per row ([E, 1]) broadcasts over the channels inside the kernel.
    narrow = fused_segment_sum(terms, [x, w[:, None]], [scale], [per_segment], ids, NUM_SEGMENTS, interpret=True)
    np.testing.assert_allclose(narrow, want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"every input must be 2-D"):
        fused_segment_sum(terms, [x, w], [scale], [per_segment], ids, NUM_SEGMENTS, interpret=True)
    with pytest.raises(ValueError, match=r"rows must be \[E, C\], channels \[1, C\] and segments \[S, C\]"):
        fused_segment_sum(terms, [x, w[:, None, None][:, :, 0].repeat(2, 1)], [scale], [per_segment], ids,
                          NUM_SEGMENTS, interpret=True)


def _loss(fn, kernel, x, w, alpha, ids):
    out = fn(x, ids, NUM_SEGMENTS, alpha=alpha, weights=w, indices_are_sorted=True, kernel=kernel)
    return jnp.sum(jnp.sin(out) * jnp.arange(1, out.size + 1).reshape(out.shape))


def _pallas_calls(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("pallas_call")


@pytest.mark.parametrize("fn", [segment_ga, segment_log_ga])
@pytest.mark.parametrize("alpha", [-1.0, -0.999, -0.5, 0.0, 0.3, 0.8, 0.999, 1.0, "mixed"])
def test_kernel_equals_xla_values_and_gradients(fn, alpha):
    x, w, ids = _graph()
    if fn is segment_log_ga:
        x = x - 1.5  # signed log-domain inputs
    alpha = jnp.asarray([0.6, -0.4, 1.0]) if alpha == "mixed" else jnp.full((3,), alpha)
    grad = {k: jax.value_and_grad(lambda *a, k=k: _loss(fn, k, *a, ids), (0, 1, 2)) for k in ("pallas", "xla")}
    (value, grads), (want_value, want_grads) = grad["pallas"](x, w, alpha), grad["xla"](x, w, alpha)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The fused passes ran (forward sum and exponent gradient) wherever every p is regular.
    if bool(jnp.all(jnp.abs(alpha) < 1) & jnp.all(alpha != 0)):
        assert _pallas_calls(lambda *a: grad["pallas"](*a), x, w, alpha) == 2


def test_kernel_gradients_check_in_float64(x64):
    x, w, ids = _graph(np.float64)
    x = x + 0.1  # away from the zeros, where d/dx is one-sided
    for alpha in ([0.4, -0.6, 0.9], [-0.2, 0.7, 0.1]):
        f = lambda x, w, a: segment_ga(x, ids, NUM_SEGMENTS, alpha=a, weights=w,  # noqa: E731
                                       indices_are_sorted=True, kernel="pallas")
        check_grads(f, (x, w, jnp.asarray(alpha)), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(f(x, w, jnp.asarray(alpha)),
                                   segment_ga(x, ids, NUM_SEGMENTS, alpha=jnp.asarray(alpha), weights=w,
                                              indices_are_sorted=True, kernel="xla"), rtol=1e-12)


def test_kernel_under_vmap_and_with_zero_edges():
    x, w, ids = _graph()
    alphas = jnp.asarray([[0.3, 0.3, 0.3], [-0.6, 0.2, 0.9]])
    run = lambda k: jax.vmap(lambda a: segment_ga(x, ids, NUM_SEGMENTS, alpha=a, weights=w,  # noqa: E731
                                                  indices_are_sorted=True, kernel=k))(alphas)
    np.testing.assert_allclose(run("pallas"), run("xla"), rtol=1e-6)
    empty = jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)
    out, grad = jax.value_and_grad(lambda a: jnp.sum(segment_ga(empty[0], empty[1], 4, alpha=a,
                                                                indices_are_sorted=True, kernel="pallas")))(
        jnp.full((3,), 0.5))
    assert out == 0 and np.all(np.asarray(grad) == 0)


def test_kernel_option_is_checked():
    x, w, ids = _graph()
    with pytest.raises(ValueError, match=r"kernel='pallas' needs segment_ids sorted \(indices_are_sorted=True\)"):
        segment_ga(x, ids, NUM_SEGMENTS, alpha=0.5, kernel="pallas")
    with pytest.raises(ValueError, match=r"kernel='triton' must be one of \(None, 'xla', 'pallas'\)"):
        segment_ga(x, ids, NUM_SEGMENTS, alpha=0.5, kernel="triton")
    # On a CPU the default (None) is the XLA path: no Pallas call.
    if jax.default_backend() == "cpu":
        assert _pallas_calls(lambda a: segment_ga(x, ids, NUM_SEGMENTS, alpha=a, indices_are_sorted=True),
                             jnp.full((3,), 0.5)) == 0
