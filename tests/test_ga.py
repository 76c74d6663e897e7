"""The GA primitive against references: closed forms, scipy.stats.pmean, mpmath, check_grads."""

import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.stats import pmean

import gaflax
from gaflax import alpha_from_p, ga, log_ga, p_from_alpha, segment_ga, segment_log_ga

NAMED_ALPHAS = [-1.0, -0.5, 0.0, 0.5, 1.0]


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
def mp_log_mean(x, w, p, dps=60):
    """log of the weighted power mean in high precision (x > 0)."""
    with mp.workdps(max(dps, mp.mp.dps)):  # never lower the precision mp.diff raised
        xs = [a if isinstance(a, mp.mpf) else mp.mpf(float(a)) for a in x]  # keep mp.diff steps
        ws = [a if isinstance(a, mp.mpf) else mp.mpf(float(a)) for a in w]
        W = mp.fsum(ws)
        p = mp.mpf(p)
        if p == 0:
            return mp.fsum(b * mp.log(a) for a, b in zip(xs, ws)) / W
        if mp.isinf(p):
            support = [a for a, b in zip(xs, ws) if b > 0]
            return mp.log(max(support) if p > 0 else min(support))
        return mp.log(mp.fsum(b * a**p for a, b in zip(xs, ws)) / W) / p


def mp_mean(x, w, p):
    with mp.workdps(60):
        return float(mp.exp(mp_log_mean(x, w, p)))


def closed_form(x, w, alpha):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    wb = w / w.sum()
    return {
        -1.0: x.min(),
        -0.5: 1 / np.sum(wb / x),
        0.0: np.exp(np.sum(wb * np.log(x))),
        0.5: np.sum(wb * x),
        1.0: x.max(),
    }[alpha]


# ---------------------------------------------------------------------------------------------
# alpha <-> p
# ---------------------------------------------------------------------------------------------
def test_p_from_alpha_named_points():
    p = p_from_alpha(jnp.array(NAMED_ALPHAS))
    assert p[0] == -jnp.inf and p[-1] == jnp.inf
    np.testing.assert_allclose(p[1:-1], [-1.0, 0.0, 1.0], atol=1e-6)


def test_alpha_from_p_inverts(x64):
    alphas = np.linspace(-1, 1, 41)
    np.testing.assert_allclose(alpha_from_p(p_from_alpha(alphas)), alphas, atol=1e-14)
    assert alpha_from_p(jnp.inf) == 1 and alpha_from_p(-jnp.inf) == -1


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", NAMED_ALPHAS)
@pytest.mark.parametrize("weighted", [False, True])
def test_named_means_closed_form(x64, alpha, weighted):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 10, 17)
    w = rng.uniform(0.1, 3, 17) if weighted else np.ones(17)
    got = ga(x, alpha=alpha, weights=w if weighted else None)
    np.testing.assert_allclose(got, closed_form(x, w, alpha), rtol=1e-14)


@pytest.mark.parametrize("p", [-7.5, -2.0, -0.3, 0.2, 1.5, 4.0, 13.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_scipy_pmean(p, dtype):
    rng = np.random.default_rng(2)
    x = rng.uniform(0.01, 5, (4, 6, 9)).astype(dtype)
    w = rng.uniform(0, 2, (4, 6, 9)).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        got = ga(x, p, axis=-1, weights=w)
        got_axis0 = ga(x, p, axis=0)
    # scipy's plain (mean x^p)^(1/p) carries its own rounding, amplified by 1 / |p|.
    rtol = 64 * np.finfo(dtype).eps * max(1.0, 1 / abs(p))
    np.testing.assert_allclose(got, pmean(x.astype(np.float64), p, axis=-1, weights=w), rtol=rtol)
    np.testing.assert_allclose(got_axis0, pmean(x.astype(np.float64), p, axis=0), rtol=rtol)


def test_tuple_axis_and_keepdims():
    x = np.random.default_rng(3).uniform(0.5, 2, (3, 4, 5)).astype(np.float32)
    got = ga(x, 2.0, axis=(0, 2), keepdims=True)
    assert got.shape == (1, 4, 1)
    ref = pmean(np.moveaxis(x, 1, 0).reshape(4, -1), 2.0, axis=1)
    np.testing.assert_allclose(got.ravel(), ref, rtol=1e-6)


EXPONENTS = [-1e6, -1e3, -30.0, -1.0, -1e-3, -1e-7, 0.0, 1e-7, 1e-3, 0.3, 1.0, 2.0, 30.0, 1e3, 1e6, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 300, pytest.param(3000, marks=pytest.mark.slow)])
def test_high_precision_reference_whole_range(dtype, n):
    """x in [1e-6, 1e6] log-uniform, |p| up to 1e6 and the limits, with and without weights."""
    rng = np.random.default_rng(n)
    x = np.exp(rng.uniform(math.log(1e-6), math.log(1e6), n)).astype(dtype)
    w = rng.uniform(0.1, 2, n).astype(dtype)
    eps = np.finfo(dtype).eps
    with jax.enable_x64(dtype == np.float64):
        for weights in (None, w):
            sweep = jax.jit(jax.vmap(lambda x, w, p: ga(x, p, weights=w), (None, None, 0)))
            got = np.asarray(sweep(x, weights, jnp.array(EXPONENTS, dtype)))
            for p, value in zip(EXPONENTS, got):
                ref = mp_mean(x, np.ones(n) if weights is None else weights, p)
                assert value.dtype == dtype
                np.testing.assert_allclose(value, ref, rtol=64 * eps, err_msg=f"p={p}, weighted={weights is not None}")


@pytest.mark.parametrize("alpha", [-1.0, -0.999999, -1e-6, 0.0, 1e-6, 0.999999, 1.0])
def test_alpha_limits_match_mpmath(x64, alpha):
    rng = np.random.default_rng(5)
    x = rng.uniform(0.1, 100, 50)
    w = rng.uniform(0.1, 1, 50)
    ref = mp_mean(x, w, float(p_from_alpha(alpha)))
    np.testing.assert_allclose(ga(x, alpha=alpha, weights=w), ref, rtol=1e-13)


def test_log_ga_is_log_of_ga(x64):
    rng = np.random.default_rng(6)
    x = rng.uniform(1e-3, 1e3, (5, 40))
    for alpha in [-1, -0.7, -0.2, 0, 0.1, 0.6, 1]:
        np.testing.assert_allclose(log_ga(np.log(x), alpha=alpha), np.log(ga(x, alpha=alpha)), rtol=1e-13, atol=1e-13)


def test_log_ga_real_valued_soft_min_mean_max(x64):
    z = np.array([-3.0, 0.5, 2.0, -1.0])
    np.testing.assert_allclose(log_ga(z, 0.0), z.mean(), rtol=1e-15)
    np.testing.assert_allclose(log_ga(z, 1.0), np.log(np.mean(np.exp(z))), rtol=1e-15)
    np.testing.assert_allclose(log_ga(z, -2.0), -0.5 * np.log(np.mean(np.exp(-2 * z))), rtol=1e-14)
    assert log_ga(z, jnp.inf) == 2.0 and log_ga(z, -jnp.inf) == -3.0
    np.testing.assert_allclose(log_ga(z, 1e4), 2.0 + np.log(0.25) / 1e4, rtol=1e-12)


def test_per_channel_exponent_broadcasts_against_reduced_shape(x64):
    x = np.random.default_rng(7).uniform(0.5, 3, (6, 3, 10))
    alphas = np.array([-0.5, 0.0, 0.5])
    got = ga(x, alpha=alphas)  # reduced shape (6, 3); alpha broadcasts per column
    for j, a in enumerate(alphas):
        np.testing.assert_allclose(got[:, j], ga(x[:, j], alpha=a), rtol=1e-14)


def test_where_equals_subset(x64):
    rng = np.random.default_rng(8)
    x = rng.uniform(0.1, 5, 20)
    mask = rng.random(20) < 0.5
    x_with_garbage = np.where(mask, x, -7.0)  # masked entries may hold anything, even negatives
    for p in [-2.0, 0.0, 0.7, np.inf]:
        np.testing.assert_allclose(ga(x_with_garbage, p, where=mask), ga(x[mask], p), rtol=1e-14)


def test_bfloat16_computes_in_float32():
    x = jnp.array([1.0, 2.0, 4.0, 8.0], jnp.bfloat16)
    got = ga(x, alpha=0.0)
    assert got.dtype == jnp.bfloat16
    assert float(got) == pytest.approx(2 ** 1.5, rel=1e-2)


def test_float32_agrees_with_float64(x64):
    rng = np.random.default_rng(9)
    x = rng.uniform(1e-3, 1e3, (8, 500))
    alphas = np.linspace(-1, 1, 8)
    got32 = ga(x.astype(np.float32), alpha=alphas.astype(np.float32)[:, None][:, 0])
    got64 = ga(x, alpha=alphas)
    np.testing.assert_allclose(got32, got64, rtol=32 * np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------------
# Zeros, empty reductions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [-np.inf, -3.0, -1.0, 0.0, 0.5, 1.0, 2.0, np.inf])
def test_zero_inputs_values_and_finite_gradients(x64, p):
    x = np.array([0.0, 1.0, 2.0, 4.0])
    w = np.array([1.0, 2.0, 1.0, 1.0])
    value = ga(x, p, weights=w)
    if p <= 0:
        assert value == 0
    else:
        ref = x.max() if p == np.inf else np.sum(w / w.sum() * x**p) ** (1 / p)
        np.testing.assert_allclose(value, ref, rtol=1e-14)
    gx, gw, gp = jax.grad(lambda x, w, p: ga(x, p, weights=w), argnums=(0, 1, 2))(x, w, p)
    for g in (gx, gw, gp):
        assert np.all(np.isfinite(g)), (p, gx, gw, gp)
    if p == 1.0:
        np.testing.assert_allclose(gx, w / w.sum(), rtol=1e-14)  # linear: exact even at zero
    if p == 2.0:
        assert gx[0] == 0  # d/dx (x^2) at 0
    if p < 0:
        np.testing.assert_array_equal(gx[1:], 0)  # M stays 0 when other inputs move


def test_all_zero_and_alpha_gradient_finite():
    x = jnp.zeros(5)
    for alpha in [-1.0, -0.5, 0.0, 0.5, 1.0]:
        value, (gx, ga_) = jax.value_and_grad(lambda x, a: ga(x, alpha=a), argnums=(0, 1))(x, alpha)
        assert value == 0 and jnp.all(jnp.isfinite(gx)) and jnp.isfinite(ga_)


def test_empty_reduction_is_zero_with_zero_gradient():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    w = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    out, vjp = jax.vjp(lambda x, w, a: ga(x, alpha=a, weights=w), x, w, 0.3)
    assert out[1] == 0
    gx, gw, galpha = vjp(jnp.array([0.0, 1.0]))
    assert jnp.all(gx == 0) and jnp.all(gw == 0) and galpha == 0
    assert log_ga(jnp.log(x), 0.3, weights=w)[1] == gaflax.EMPTY_LOG_FILL


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------
# Jitted once at module level, so that every parametrized case reuses one compilation (eager
# dispatch of the many small ops made each check_grads case take half a minute).
_ga_p = jax.jit(lambda x, w, p: ga(x, p, weights=w))
_log_ga_p = jax.jit(lambda z, w, p: log_ga(z, p, weights=w))
_ga_alpha = jax.jit(lambda x, w, a: ga(x, alpha=a, weights=w))


@pytest.mark.parametrize("p", [-3.0, -0.5, 0.3, 2.0, 25.0])
def test_check_grads_dense(x64, p):
    rng = np.random.default_rng(10)
    x = rng.uniform(0.2, 3, (3, 5))
    w = rng.uniform(0.2, 2, (3, 5))
    check_grads(_ga_p, (x, w, p), order=2, modes=["fwd", "rev"])
    # log_ga shares the JVP rule: second order forward-over-forward, first order in reverse (the
    # reverse-over-forward compile is the slowest of the suite).
    check_grads(_log_ga_p, (np.log(x), w, p), order=2, modes=["fwd"])
    check_grads(_log_ga_p, (np.log(x), w, p), order=1, modes=["rev"])


@pytest.mark.parametrize("alpha", [-0.9, -0.3, 0.05, 0.4, 0.8])
def test_check_grads_alpha(x64, alpha):
    rng = np.random.default_rng(11)
    x = rng.uniform(0.2, 3, 6)
    w = rng.uniform(0.2, 2, 6)
    check_grads(_ga_alpha, (x, w, alpha), order=2, modes=["fwd"])
    check_grads(_ga_alpha, (x, w, alpha), order=1, modes=["rev"])


def test_check_grads_segments_with_empty_segment(x64):
    rng = np.random.default_rng(12)
    data = rng.uniform(0.2, 3, (7, 3))
    w = rng.uniform(0.2, 2, 7)
    ids = np.array([0, 0, 1, 1, 1, 3, 3])  # segment 2 is empty
    f = jax.jit(lambda d, w, a: segment_ga(d, ids, 4, alpha=a, weights=w))  # jit: eager dispatch made this test take minutes
    # Second order forward-over-forward only: reverse-over-forward compiled for half a minute and
    # differentiates the same JVP rule, whose second order the dense tests check in both modes.
    check_grads(f, (data, w, np.array([-0.4, 0.2, 0.7])), order=2, modes=["fwd"])
    check_grads(f, (data, w, np.array([-0.4, 0.2, 0.7])), order=1, modes=["rev"])
    g = jax.jit(lambda d, w, p: segment_log_ga(d, ids, 4, p, weights=w))
    check_grads(g, (data - 1.5, w, 1.3), order=1, modes=["fwd", "rev"])


def mp_grads(x, w, p):
    """d log M / d x_i, d log M / d w_i, d log M / d p by mpmath differentiation."""
    n = len(x)
    with mp.workdps(60):
        point = [mp.mpf(float(a)) for a in list(x) + list(w)] + [mp.mpf(p)]

        def partial(i):
            def f(t):
                q = list(point)
                q[i] += t
                return mp_log_mean(q[:n], q[n : 2 * n], q[-1])

            return float(mp.diff(f, 0))

        out = [partial(i) for i in range(len(point))]
    return np.array(out[:n]), np.array(out[n : 2 * n]), out[-1]


@pytest.mark.parametrize("p", [-20.0, -1.0, -1e-4, 1e-4, 0.5, 3.0, 200.0])
def test_gradients_match_mpmath(x64, p):
    rng = np.random.default_rng(13)
    x = rng.uniform(0.1, 10, 5)
    w = rng.uniform(0.2, 2, 5)
    ref_x, ref_w, ref_p = mp_grads(x, w, p)
    gx, gw, gp = jax.grad(lambda x, w, p: log_ga(jnp.log(x), p, weights=w), argnums=(0, 1, 2))(x, w, p)
    np.testing.assert_allclose(gx, ref_x, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gw, ref_w, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(gp, ref_p, rtol=1e-9)


def test_exponent_gradient_closed_forms_at_limits(x64):
    """d log M / d alpha: (pi/2) Var_w(log x) / 2 at alpha = 0, -(pi/2) log wbar_max at +-1."""
    x = np.array([0.5, 2.0, 3.0, 10.0])
    w = np.array([1.0, 2.0, 0.5, 1.0])
    wb = w / w.sum()
    z = np.log(x)
    var = np.sum(wb * (z - np.sum(wb * z)) ** 2)
    grad = jax.grad(lambda a: log_ga(z, alpha=a, weights=w))
    np.testing.assert_allclose(grad(0.0), 0.5 * np.pi * var / 2, rtol=1e-14)
    np.testing.assert_allclose(grad(1.0), -0.5 * np.pi * np.log(wb[3]), rtol=1e-14)
    np.testing.assert_allclose(grad(-1.0), -0.5 * np.pi * np.log(wb[0]), rtol=1e-14)
    # d log M / d p at p = 0 is Var / 2; at p = +-inf it is 0.
    gp = jax.grad(lambda p: log_ga(z, p, weights=w))
    np.testing.assert_allclose(gp(0.0), var / 2, rtol=1e-14)
    assert gp(jnp.inf) == 0 and gp(-jnp.inf) == 0
    # One-sided limits: the derivative is continuous as alpha -> 1 and alpha -> 0.
    np.testing.assert_allclose(grad(1 - 1e-9), grad(1.0), rtol=1e-6)
    np.testing.assert_allclose(grad(1e-9), grad(0.0), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_finite_over_whole_range(dtype):
    rng = np.random.default_rng(14)
    x = np.exp(rng.uniform(math.log(1e-6), math.log(1e6), 200)).astype(dtype)
    w = rng.uniform(0.1, 2, 200).astype(dtype)
    alphas = np.array([-1, -0.999, -0.5, -1e-6, 0, 1e-6, 0.5, 0.999, 1], dtype)
    with jax.enable_x64(dtype == np.float64):
        grads = jax.vmap(jax.grad(lambda x, w, a: ga(x, alpha=a, weights=w), argnums=(0, 1, 2)), (None, None, 0))(x, w, alphas)
    for g in grads:
        assert np.all(np.isfinite(g))


def test_float32_exponent_gradient_near_zero(x64):
    """No float32 cancellation near p = 0: d log M / dp matches float64 to ~1e-5."""
    rng = np.random.default_rng(15)
    z = rng.normal(size=300) * 3
    for p in [1e-6, 1e-3, -1e-3, 0.05]:
        g64 = jax.grad(lambda p: log_ga(z, p))(p)
        g32 = jax.grad(lambda p: log_ga(z.astype(np.float32), p))(np.float32(p))
        np.testing.assert_allclose(g32, g64, rtol=2e-5)


# ---------------------------------------------------------------------------------------------
# Segment forms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sorted_ids", [True, False])
def test_segment_matches_dense_per_segment(x64, sorted_ids):
    rng = np.random.default_rng(16)
    ids = rng.integers(0, 6, 50)
    ids[ids == 4] = 5  # segment 4 empty
    if sorted_ids:
        ids = np.sort(ids)
    data = rng.uniform(0.1, 4, (50, 3))
    w = rng.uniform(0.1, 2, 50)
    alphas = np.array([-0.8, 0.0, 0.6])
    out = segment_ga(data, ids, 6, alpha=alphas, weights=w, indices_are_sorted=sorted_ids)
    assert out.shape == (6, 3)
    for s in range(6):
        if s == 4:
            np.testing.assert_array_equal(out[s], 0)
            continue
        m = ids == s
        np.testing.assert_allclose(out[s], ga(data[m].T, alpha=alphas[:, None][:, 0], weights=w[m]), rtol=1e-13)
    log_out = np.asarray(segment_log_ga(np.log(data), ids, 6, alpha=alphas, weights=w, indices_are_sorted=sorted_ids))
    nonempty = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(np.exp(log_out[nonempty]), np.asarray(out)[nonempty], rtol=1e-13)
    np.testing.assert_array_equal(log_out[4], gaflax.EMPTY_LOG_FILL)


def test_segment_weights_per_head_broadcast_over_channels(x64):
    rng = np.random.default_rng(17)
    data = rng.uniform(0.1, 4, (10, 2, 3))  # [E, heads, channels]
    att = rng.uniform(0.1, 1, (10, 2))  # [E, heads]
    ids = np.repeat(np.arange(5), 2)
    out = segment_ga(data, ids, 5, 2.0, weights=att)
    ref = segment_ga(data, ids, 5, 2.0, weights=np.broadcast_to(att[:, :, None], data.shape))
    np.testing.assert_allclose(out, ref, rtol=1e-14)


def test_segment_empty_segment_zero_gradient():
    data = jnp.array([[1.0], [2.0], [3.0]])
    ids = jnp.array([0, 0, 2])
    out, vjp = jax.vjp(lambda d, a: segment_ga(d, ids, 3, alpha=a), data, jnp.array([0.3]))
    assert out[1, 0] == 0
    gd, galpha = vjp(jnp.array([[0.0], [1.0], [0.0]]))
    assert jnp.all(gd == 0) and jnp.all(galpha == 0)


def test_segment_large_p_and_zeros_float32():
    data = jnp.array([[0.0], [1e-6], [1e6], [3.0], [0.0], [0.0]])
    ids = jnp.array([0, 0, 0, 1, 1, 2])
    for p in [-1e6, -2.0, 0.0, 2.0, 1e6]:
        out = segment_ga(data, ids, 3, p)
        grads = jax.grad(lambda d, p: segment_ga(d, ids, 3, p).sum(), argnums=(0, 1))(data, p)
        assert jnp.all(jnp.isfinite(out)) and all(jnp.all(jnp.isfinite(g)) for g in grads)
        if p <= 0:
            np.testing.assert_array_equal(out[:, 0], 0.0)
    np.testing.assert_allclose(segment_ga(data, ids, 3, 1e6)[0, 0], 1e6 * (1 / 3) ** 1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", ["weightless_outliers", "zero_with_negative_p", "weightless_inf"])
def test_segment_loose_channel_bounds_fall_back_to_exact(case):
    """segment_ga takes its reference from unmasked per-channel bounds; rows without weight far
    outside a segment's range, zeros with p < 0 and infinite rows without weight must still give
    the per-segment values (through the exact fallback) and finite gradients."""
    rng = np.random.default_rng(21)
    data = rng.uniform(0.5, 2.0, (12, 2)).astype(np.float32)
    w = np.ones(12, np.float32)
    ids = np.repeat(np.arange(4), 3)
    if case == "weightless_outliers":
        data[0], w[0] = 1e30, 0.0  # underflows segment sums against the channel max for p > 0
        data[3], w[3] = 1e-30, 0.0  # and against the channel min for p < 0
    elif case == "zero_with_negative_p":
        data[0] = 0.0  # the channel's lower bound is clamped, so other segments underflow
    else:
        data[0], w[0] = np.inf, 0.0
    value = jax.jit(lambda d, a: segment_ga(d, ids, 4, alpha=a, weights=w, indices_are_sorted=True))
    grad = jax.jit(jax.grad(lambda d, a: (value(d, a) ** 2).sum(), (0, 1)))
    for alpha in [-0.9, -0.4, 0.3, 0.9]:
        out = value(data, alpha)
        p = math.tan(math.pi * alpha / 2)
        for s in range(4):
            m = (ids == s) & (w > 0)
            with np.errstate(divide="ignore"):  # a zero with p < 0: the mean is 0
                ref = np.mean(data[m].astype(np.float64) ** p, axis=0) ** (1 / p)
            np.testing.assert_allclose(out[s], ref, rtol=2e-5, err_msg=f"{case} alpha={alpha} segment {s}")
        grads = grad(jnp.asarray(data), alpha)
        finite_rows = np.isfinite(data).all(axis=1)
        assert np.all(np.isfinite(np.asarray(grads[0])[finite_rows])) and np.isfinite(grads[1])


# ---------------------------------------------------------------------------------------------
# Transformations
# ---------------------------------------------------------------------------------------------
def test_jit_and_no_jit_agree():
    x = jnp.linspace(0.5, 3, 12).reshape(3, 4)
    for alpha in [-1.0, -0.3, 0.0, 0.4, 1.0]:
        np.testing.assert_allclose(jax.jit(lambda x, a: ga(x, alpha=a))(x, alpha), ga(x, alpha=alpha), rtol=1e-6)


def test_vmap_over_data_and_alpha_sweep(x64):
    rng = np.random.default_rng(18)
    x = rng.uniform(0.1, 5, (4, 30))
    alphas = jnp.linspace(-1, 1, 9)
    sweep = jax.jit(jax.vmap(jax.vmap(lambda x, a: ga(x, alpha=a), (None, 0)), (0, None)))(x, alphas)
    assert sweep.shape == (4, 9)
    for i in range(4):
        for j, a in enumerate(alphas):
            np.testing.assert_allclose(sweep[i, j], ga(x[i], alpha=a), rtol=1e-14)
    # Monotone in alpha, from min to max.
    assert np.all(np.diff(sweep, axis=1) >= 0)
    np.testing.assert_allclose(sweep[:, 0], x.min(1))
    np.testing.assert_allclose(sweep[:, -1], x.max(1))


def test_vmap_segments_over_alpha():
    data = jnp.array([[1.0], [4.0], [2.0]])
    ids = jnp.array([0, 0, 1])
    out = jax.vmap(lambda a: segment_ga(data, ids, 2, alpha=a))(jnp.array([-1.0, 0.0, 1.0]))
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 2.0, 4.0], rtol=1e-6)


def test_negative_under_jit_gives_nan():
    """Documented: values cannot be inspected under jit, so negative inputs give NaN."""
    assert jnp.isnan(jax.jit(lambda x: ga(x, 2.0))(jnp.array([1.0, -1.0])))


# ---------------------------------------------------------------------------------------------
# Non-finite and invalid input (README, "Non-finite input")
# ---------------------------------------------------------------------------------------------
def _value_and_grads(fn, x, w, exponent):
    """Jitted value and gradients w.r.t. x, w and the exponent of sum(fn(...))."""
    f = jax.jit(fn)
    g = jax.jit(jax.grad(lambda x, w, e: jnp.sum(fn(x, w, e)), (0, 1, 2)))
    return np.asarray(f(x, w, exponent)), [np.asarray(a) for a in g(x, w, exponent)]


NAN = float("nan")
INF = float("inf")
INVALID_CASES = {  # (x, w, alpha): each gives NaN for every alpha
    "nan_data": ([1.0, NAN, 3.0], [1.0, 1.0, 1.0], None),
    "nan_data_without_weight": ([1.0, NAN, 3.0], [1.0, 0.0, 1.0], None),
    "negative_data": ([1.0, -2.0, 3.0], [1.0, 1.0, 1.0], None),
    "nan_weight": ([1.0, 2.0, 3.0], [1.0, NAN, 1.0], None),
    "negative_weight": ([1.0, 2.0, 3.0], [1.0, -1.0, 1.0], None),
    "infinite_weight": ([1.0, 2.0, 3.0], [1.0, INF, 1.0], None),
    "nan_alpha": ([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], NAN),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
@pytest.mark.parametrize("form", ["ga", "log_ga", "segment_ga", "segment_log_ga"])
def test_invalid_input_gives_nan_value_and_gradients(case, form, x64):
    """NaN in the data, weights or exponent, a negative input (under jit) or a negative or
    infinite weight: the mean and every gradient of its group are NaN, never a plain number.
    Before, ga([1, nan, 3], alpha=1) gave 1.0, alpha=nan 1.0 and NaN weights 0."""
    x, w, alpha_override = INVALID_CASES[case]
    x, w = np.asarray(x), np.asarray(w)
    log_input = form.endswith("log_ga")
    if log_input:
        if case == "negative_data":
            pytest.skip("log_ga takes any real z")
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log(x)
    for alpha in [-1.0, -0.5, 0.0, 0.5, 1.0] if alpha_override is None else [alpha_override]:
        if form.startswith("segment"):
            fn = getattr(gaflax, form)
            call = lambda x, w, a: fn(x[:, None], jnp.zeros(3, jnp.int32), 1, alpha=a, weights=w)  # noqa: B023,E731
        else:
            fn = getattr(gaflax, form)
            call = lambda x, w, a: fn(x, alpha=a, weights=w)  # noqa: B023,E731
        value, grads = _value_and_grads(call, x, w, alpha)
        assert np.all(np.isnan(value)), f"{form} {case} alpha={alpha}: {value}"
        for name, g in zip(["x", "weights", "alpha"], grads):
            assert np.all(np.isnan(g)), f"{form} {case} alpha={alpha}: d/d{name} = {g}"


def test_invalid_input_stays_in_its_segment(x64):
    """A NaN in one segment leaves every other segment's value and gradients as they were,
    although segments share per-channel bounds."""
    rng = np.random.default_rng(4)
    data = rng.uniform(0.5, 2.0, (9, 2))
    ids = np.repeat(np.arange(3), 3)
    bad = data.copy()
    bad[4, 1] = np.nan  # segment 1, channel 1
    for alpha in [-1.0, -0.3, 0.0, 0.6, 1.0]:
        fn = lambda d, w, a: segment_ga(d, ids, 3, alpha=a, weights=w)  # noqa: B023,E731
        clean_value, clean_grads = _value_and_grads(fn, data, np.ones(9), jnp.full(2, alpha))
        value, grads = _value_and_grads(fn, bad, np.ones(9), jnp.full(2, alpha))
        assert np.isnan(value[1, 1]) and np.all(np.isnan(grads[0][3:6, 1]))
        keep = np.ones((3, 2), bool)
        keep[1, 1] = False
        np.testing.assert_array_equal(value[keep], clean_value[keep])
        rows = np.repeat(keep, 3, axis=0)
        np.testing.assert_array_equal(grads[0][rows], clean_grads[0][rows])
        np.testing.assert_array_equal(grads[2][0], clean_grads[2][0])  # channel 0's alpha
        assert np.isnan(grads[2][1])  # channel 1's alpha is shared with the NaN segment


def test_masked_nan_is_left_out():
    """``where`` removes entries: a NaN there is not part of the input."""
    x = jnp.array([1.0, np.nan, 4.0])
    mask = jnp.array([True, False, True])
    np.testing.assert_allclose(ga(x, alpha=0.0, where=mask), 2.0, rtol=1e-6)
    g = jax.grad(lambda x: ga(x, alpha=0.0, where=mask))(x)
    assert np.all(np.isfinite(g))


def test_infinite_input_follows_the_mathematics(x64):
    """+inf with weight: the mean is +inf for p >= 0 (gradients NaN: undefined); for p < 0 it
    contributes x^p = 0, so M = (sum_finite w x^p / W)^(1/p) with W over all weights, with finite
    gradients (0 for the infinite element); +inf if every weighted input is +inf. A geometric mean
    of 0 and +inf is undefined: NaN. Before, ga([1, inf, 3], alpha=1) gave 1.0 and alpha=0 gave 0."""
    x = np.array([1.0, np.inf, 3.0])
    w = np.array([1.0, 2.0, 0.5])
    for alpha in [0.0, 0.3, 0.5, 1.0]:
        value, grads = _value_and_grads(lambda x, w, a: ga(x, alpha=a, weights=w), x, w, alpha)
        assert value == np.inf, alpha
        assert all(np.all(np.isnan(g)) for g in grads), alpha
        log_value, _ = _value_and_grads(lambda z, w, a: log_ga(z, alpha=a, weights=w), np.log(x), w, alpha)
        assert log_value == np.inf, alpha
    for alpha in [-1.0, -0.9, -0.5, -0.1]:
        finite = np.isfinite(x)

        def reference(xf, wf, a):
            if a == -1:
                return xf.min()
            p = np.tan(np.pi * a / 2)
            return (np.sum(wf[finite] * xf**p) / np.sum(wf)) ** (1 / p)

        value, (gx, gw, ga_) = _value_and_grads(lambda x, w, a: ga(x, alpha=a, weights=w), x, w, alpha)
        np.testing.assert_allclose(value, reference(x[finite], w, alpha), rtol=1e-13)
        log_value, (gz, _, _) = _value_and_grads(lambda z, w, a: log_ga(z, alpha=a, weights=w), np.log(x), w, alpha)
        np.testing.assert_allclose(log_value, np.log(value), rtol=1e-13)
        assert gx[1] == 0 and gz[1] == 0  # the infinite element
        h = 1e-6
        for i in np.flatnonzero(finite):  # central differences of the closed form
            up, down = x[finite].copy(), x[finite].copy()
            j = int(np.sum(finite[:i]))
            up[j] += h
            down[j] -= h
            np.testing.assert_allclose(gx[i], (reference(up, w, alpha) - reference(down, w, alpha)) / (2 * h), rtol=1e-6)
        for i in range(3):
            up, down = w.copy(), w.copy()
            up[i] += h
            down[i] -= h
            fd = (reference(x[finite], up, alpha) - reference(x[finite], down, alpha)) / (2 * h)
            np.testing.assert_allclose(gw[i], fd, rtol=1e-6, atol=1e-12)
        if alpha > -1:
            fd = (reference(x[finite], w, alpha + h) - reference(x[finite], w, alpha - h)) / (2 * h)
            np.testing.assert_allclose(ga_, fd, rtol=1e-6)
        assert np.isfinite(ga_)
    # Every weighted input +inf (an unweighted finite one does not count): +inf for every p.
    for alpha in [-1.0, -0.5, 0.0, 1.0]:
        assert ga(jnp.array([np.inf, np.inf, 1.0]), alpha=alpha, weights=jnp.array([1.0, 1.0, 0.0])) == np.inf
    # 0 and +inf: 0 for p < 0, +inf for p > 0, undefined (NaN) for the geometric mean.
    pair = jnp.array([0.0, np.inf])
    assert ga(pair, alpha=-0.5) == 0 and ga(pair, alpha=0.5) == np.inf and np.isnan(ga(pair, alpha=0.0))
    seg = segment_ga(jnp.array([[1.0], [np.inf], [2.0], [4.0]]), jnp.array([0, 0, 1, 1]), 2, alpha=-0.5)
    np.testing.assert_allclose(seg[:, 0], [2.0, 8 / 3], rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_negative_inputs_raise_clear_error():
    with pytest.raises(ValueError, match=r"non-negative.*1 of 3 entries.*log_ga"):
        ga(jnp.array([1.0, -2.0, 3.0]), 1.0)
    with pytest.raises(ValueError, match=r"non-negative.*segment_log_ga"):
        segment_ga(jnp.array([1.0, -2.0]), jnp.array([0, 0]), 1, 1.0)
    with pytest.raises(ValueError, match="weights"):
        ga(jnp.array([1.0, 2.0]), 1.0, weights=jnp.array([1.0, -1.0]))


def test_bad_arguments_raise_clear_errors():
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="exactly one of `p` and `alpha`"):
        ga(x)
    with pytest.raises(ValueError, match="exactly one of `p` and `alpha`"):
        ga(x, 1.0, alpha=0.5)
    with pytest.raises(ValueError, match=r"alpha.*\[-1, 1\]"):
        ga(x, alpha=1.5)
    with pytest.raises(ValueError, match=r"`p` with shape \(5,\) does not broadcast.*\(3,\)"):
        ga(x, jnp.ones(5))
    with pytest.raises(ValueError, match="weights with shape"):
        ga(x, 1.0, weights=jnp.ones(3))
    with pytest.raises(ValueError, match="out of range"):
        ga(x, 1.0, axis=2)
    with pytest.raises(ValueError, match=r"segment_ids must be an integer array of shape \(3,\)"):
        segment_ga(x, jnp.array([0, 1]), 2, 1.0)
    with pytest.raises(ValueError, match="num_segments must be a static"):
        segment_ga(x, jnp.array([0, 1, 1]), 2.5, 1.0)
    with pytest.raises(ValueError, match=r"weights must have shape \[E\]"):
        segment_ga(x, jnp.array([0, 1, 1]), 2, 1.0, weights=jnp.ones(4))


@pytest.mark.parametrize("fn", [segment_ga, segment_log_ga])
def test_segments_of_zero_edges_are_empty(fn):
    """A graph without edges: every segment is empty, so 0 with zero gradient (it raised "zero-size
    array to reduction operation max" before), eagerly and under jit, at the limits too."""
    data, ids = jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32)
    value = jax.jit(lambda d, a: fn(d, ids, 3, alpha=a))
    grad = jax.jit(jax.grad(lambda d, a: fn(d, ids, 3, alpha=a).sum(), (0, 1)))
    for alpha in [-1.0, -0.5, 0.0, 0.3, 1.0]:
        for out in (fn(data, ids, 3, alpha=alpha), value(data, alpha)):
            assert out.shape == (3, 4)
            np.testing.assert_array_equal(out, 0.0)
        g_data, g_alpha = grad(data, alpha)
        assert g_data.shape == (0, 4) and g_alpha == 0.0


@pytest.mark.parametrize("gap", [1e-3, 1e-5, 1e-6])
def test_float32_alpha_gradient_near_the_limits_matches_float64(x64, gap):
    """#21: near |alpha| = 1 the float32 d log M / d alpha was up to 9 % off the float64 value
    (z - L cancelled for the arg-max, and pi * alpha / 2 rounded p); now it is within 1e-5."""
    rng = np.random.default_rng(19)
    grad = jax.jit(jax.grad(lambda z, a: log_ga(z, alpha=a), 1))
    for _ in range(10):
        z = rng.normal(size=int(rng.integers(2, 34))).astype(np.float32)
        for sign in (1, -1):
            alpha = np.float32(sign * (1 - gap))
            assert float(jnp.abs(p_from_alpha(alpha) / p_from_alpha(np.float64(alpha)) - 1)) < 1e-6
            g32, g64 = grad(z, alpha), grad(z.astype(np.float64), np.float64(alpha))
            assert g32.dtype == np.float32
            np.testing.assert_allclose(g32, g64, rtol=1e-5)


@pytest.mark.parametrize("tiny", [1e-20, 3.8e-37])
@pytest.mark.parametrize("form", ["dense", "segments"])
def test_float32_gradients_when_a_tiny_weight_carries_the_mass(x64, tiny, form):
    """A group whose weight sits on zeros except for one tiny weight (attention weights near 1e-37,
    found through a learned GA with GAT's message dropout): the mean is ~1e-37 and its alpha
    gradient was inf in float32, since e^t = 1 / wbar overflowed before being multiplied by w.
    float32 must give float64's gradients (at alphas where the mean itself is a float32 normal)."""
    x = np.array([0.6931472, 0.0, 2.7538064], np.float32)
    w = np.array([tiny, 2.5, tiny], np.float32)
    if form == "dense":
        fn = lambda x, w, a: ga(x, alpha=a, weights=w)  # noqa: E731
    else:
        ids = jnp.zeros(3, jnp.int32)
        fn = lambda x, w, a: segment_ga(x[:, None], ids, 1, alpha=a, weights=w)[0, 0]  # noqa: E731
    grad = jax.jit(jax.grad(fn, (0, 1, 2)))
    for alpha in [0.507, 0.7, 0.9]:
        g32 = grad(jnp.asarray(x), jnp.asarray(w), np.float32(alpha))
        g64 = grad(jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64), np.float64(alpha))
        for a, b, name in zip(g32, g64, ("x", "weights", "alpha")):
            assert np.all(np.isfinite(np.asarray(a))), f"{name} at alpha={alpha}: {a}"
            # rtol: float32 rounding times p (12.7 at alpha = 0.9); atol: terms ~1e-45 are subnormal
            np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-3, atol=1e-6 * np.max(np.abs(b)),
                                       err_msg=f"{name} alpha={alpha}")


@pytest.mark.parametrize("form", ["ga", "log_ga"])
def test_weight_gradients_finite_when_the_weights_nearly_vanish(x64, form):
    """A segment of GAT's after dropout (found with learned log_ga + message dropout 0.6): the few
    weights left are ~1e-33 and the dropped elements lie far above the weighted ones. d L / d w_i
    of a dropped element (~1e47) is beyond float32; as inf it turned the dropout mask's 0 into
    NaN. It is returned as 0, and the kept elements' gradients equal float64's."""
    z = np.array([50.04427, 0.0, 26.286451, -5.1996613, -12.959299, 0.0], np.float32)
    raw = np.array([0.3, 0.2, 0.1, 1.2239198e-35, 6.2184768e-33, 0.4], np.float32)  # before dropout
    keep = raw < 1e-20  # what dropout kept
    ids = jnp.zeros(6, jnp.int32)
    fn = segment_log_ga if form == "log_ga" else segment_ga

    def out(raw, alpha):
        data = z if form == "log_ga" else np.exp(z.astype(raw.dtype))
        return fn(jnp.asarray(data, raw.dtype)[:, None], ids, 1, alpha=alpha, weights=raw * keep)[0, 0]

    grad = jax.jit(jax.grad(out, (0, 1)))
    for alpha in [0.3, 0.5, 0.8]:
        g_w, g_alpha = grad(jnp.asarray(raw), np.float32(alpha))
        assert np.all(np.isfinite(g_w)) and np.isfinite(g_alpha), (alpha, g_w, g_alpha)
        np.testing.assert_array_equal(np.asarray(g_w)[~keep], 0)
        r_w, r_alpha = grad(jnp.asarray(raw, jnp.float64), np.float64(alpha))
        np.testing.assert_allclose(g_w, r_w, rtol=1e-4)
        np.testing.assert_allclose(g_alpha, r_alpha, rtol=1e-4)


@pytest.mark.parametrize("alpha", [-0.7, -0.3, 0.3, 0.7])
def test_float32_weight_gradients_of_segments_far_below_their_channel_reference(x64, alpha):
    """segment_ga's reference is the channel's max (min for p < 0) over all rows: a segment far
    from it has S = sum wbar e << 1, and d L / d w_i, taken as (e_i - 1) - (S - 1), lost every
    digit (float32 gave exactly 0 for the weights of every such segment). Now within 1e-5 of
    float64 dense GA per segment."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 3.0, (9, 2)).astype(np.float32)
    x[8] = [3e8, 1e-8]  # a segment of its own that sets both channels' references far away
    w = rng.uniform(0.1, 2.0, 9).astype(np.float32)
    ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    grad = jax.jit(jax.grad(lambda x, w: (segment_ga(x, ids, 4, alpha=alpha, weights=w) * np.arange(1, 9).reshape(4, 2)).sum(), (0, 1)))
    g_x, g_w = grad(jnp.asarray(x), jnp.asarray(w))
    for s in range(3):
        m = ids == s
        for c in range(2):
            dense = jax.grad(lambda x, w: ga(x, alpha=np.float64(alpha), weights=w), (0, 1))
            r_x, r_w = dense(x[m, c].astype(np.float64), w[m].astype(np.float64))
            k = 2 * s + c + 1  # the output's cotangent
            np.testing.assert_allclose(g_x[m, c], k * r_x, rtol=1e-5, err_msg=f"x, segment {s} channel {c}")
            # each weight is shared by both channels
            if c == 0:
                r_w_both = k * r_w
            else:
                np.testing.assert_allclose(g_w[m], r_w_both + k * r_w, rtol=1e-5, atol=1e-7, err_msg=f"w, segment {s}")


@pytest.mark.parametrize("form", ["ga", "log_ga"])
def test_float32_segment_gradients_match_float64_on_random_segments(x64, form):
    """Random segments whose scales differ by up to 1e6 (so most lie far from their channel's
    reference), weights from 1e-6 to 1, some zero inputs, alpha anywhere in [-1, 1] and at
    +-1, +-0.999, +-0.99, +-1e-4 and 0: every float32 gradient (data,
    weights, alpha) is within 1e-3 of float64, relative to the largest gradient of the same kind in
    the same segment. Segments of one element are left out of the weight check (their true
    gradient is 0, and float32 leaves rounding times M / W there). Fixed shapes (5 segments of
    15 rows), so that each dtype compiles once."""
    rng = np.random.default_rng(11)
    fn = segment_log_ga if form == "log_ga" else segment_ga
    n, rows = 5, 15
    cotangent = np.arange(1, n + 1)[:, None]

    def loss(x, w, a, ids):
        return jnp.sum(fn(x, ids, n, alpha=a, weights=w) * cotangent.astype(x.dtype))

    grad = jax.jit(jax.grad(loss, (0, 1, 2)))
    for _ in range(100):
        sizes = 1 + rng.multinomial(rows - n, np.ones(n) / n)
        ids = np.repeat(np.arange(n), sizes)
        x = rng.uniform(0.5, 2, (rows, 1)) * (10 ** rng.uniform(-3, 3, n))[ids, None]
        if form == "ga" and rng.random() < 0.3:
            x[rng.integers(0, rows)] = 0.0
        x = np.log(x) if form == "log_ga" else x
        w = 10 ** rng.uniform(-6, 0, rows)
        alpha = np.float32(rng.choice([rng.uniform(-1, 1), 0.999, -0.999, 0.99, -0.99, 1e-4, -1e-4, 1.0, -1.0, 0.0]))
        g32 = grad(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), alpha, ids)
        g64 = grad(jnp.asarray(x.astype(np.float32), jnp.float64), jnp.asarray(w.astype(np.float32), jnp.float64),
                   np.float64(alpha), ids)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in g32)
        np.testing.assert_allclose(g32[2], g64[2], rtol=1e-3, atol=1e-12, err_msg=f"alpha={alpha}")
        for s in range(n):
            m = ids == s
            for kind, a, b in (("x", g32[0][m, 0], g64[0][m, 0]), ("w", g32[1][m], g64[1][m])):
                if kind == "w" and m.sum() == 1:
                    continue
                scale = np.max(np.abs(np.asarray(b)))
                np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=0, atol=1e-3 * scale,
                                           err_msg=f"{kind}, segment {s} of {sizes}, alpha={alpha}")
