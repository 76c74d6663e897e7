"""The Generalized Average (GA): the weighted power mean, in dense and segment form.

    M_p(x) = (sum_i w_i x_i^p / sum_i w_i)^(1/p),     x_i >= 0, w_i >= 0,

with its limits p -> 0 (geometric mean), p = -inf (min) and p = +inf (max). The bounded control
``alpha`` in [-1, 1] maps to ``p = tan(pi * alpha / 2)``.

Everything is computed in the log domain, ``z = log x``:

    L = log M = zref + log(sum_i wbar_i exp(p (z_i - zref))) / p,       wbar = w / sum(w),

where ``zref`` is the largest (p > 0) or smallest (p < 0) z with positive weight, so that every
exponent is <= 0 and nothing overflows. When the sum S is close to 1 (small |p|, the geometric
regime) ``log S`` loses digits, so we use ``log1p(sum wbar expm1(...))`` instead, which is exact to
rounding right down to p = 0, where L is the weighted mean of z. The gradient is a ``custom_jvp``
whose formulas (derived in ``docs/ga_math.md``) are finite at p = 0, p = +-inf, zero inputs and
empty segments, where plain autodiff of the formula above gives NaN or Inf.

One implementation serves both layouts: ``_Dense`` reduces over axes (keeping them), ``_Segments``
reduces rows of ``[E, ...]`` into ``[num_segments, ...]`` like ``jax.ops.segment_sum``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from gaflax import kernels

__all__ = [
    "EMPTY_LOG_FILL",
    "alpha_from_p",
    "ga",
    "log_ga",
    "p_from_alpha",
    "segment_ga",
    "segment_log_ga",
]

#: Value of ``log_ga`` / ``segment_log_ga`` for an empty reduction (no element with positive
#: weight). ``ga`` / ``segment_ga`` return 0 there. Both have zero gradient.
EMPTY_LOG_FILL = 0.0

# Named thresholds (derivations in docs/ga_math.md):
# log1p(U) form when |p| * (log max - log min) is below this: u = 0.567 solves u e^u = 1, where the
# error bounds of the two forms, eps * D * e^{|p| D} and eps / |p|, cross.
_LOG1P_SWITCH = 0.567
# expm1(t) by its Taylor series below this |t|: just above _LOG1P_SWITCH, so every term of a
# log1p-form sum takes the series, and 10 (float32) / 17 (float64) terms reach rounding.
_EXPM1_SERIES_RADIUS = 0.6
# Below this |t| = |p (z - L)| the exponent-gradient terms use a Taylor series (_kl_over_p2_terms).
_KL_TAYLOR_RADIUS = 0.5
# A log(S)-form sum below 2^this may have lost terms to underflow (they vanish below the smallest
# normal, 2^-126 / 2^-1022, i.e. 2^-26 / 2^-122 of it: at or below rounding): then segments
# retake the reference per segment.
_UNDERFLOW_GUARD_EXP32 = -100
_UNDERFLOW_GUARD_EXP64 = -900
# Clips of d = z - L and t = p d in the exponent gradient. Real differences of logs stay below
# 2 * 710 and e^t underflows long before -1e4; the clips only keep the dropped terms of groups
# that are not ok (d = -inf for a zero input) finite, as the double-where idiom needs, with
# d^2 = 1e30 still finite in float32.
_LOG_DIFF_CLIP = 1e15
_EXPONENT_CLIP = 1e4
# Taylor coefficients of h(t) / t^2 with h(t) = (t - 1) e^t + 1:  sum_j (j + 1) / (j + 2)! t^j.
_KL_TAYLOR = tuple((j + 1) / math.factorial(j + 2) for j in range(15))
# Taylor coefficients of expm1(t) / t: 1 / (k + 1)!.
_EXPM1_TAYLOR = tuple(1 / math.factorial(k + 1) for k in range(17))


# ----------------------------------------------------------------------------------------------
# alpha <-> p
# ----------------------------------------------------------------------------------------------
def p_from_alpha(alpha):
    """``p = tan(pi * alpha / 2)``, exactly ``+-inf`` at ``alpha = +-1``.

    alpha = -1, -0.5, 0, 0.5, 1 give min, harmonic, geometric, arithmetic and max.
    """
    alpha = jnp.asarray(alpha, _float_dtype(jnp.asarray(alpha).dtype))
    magnitude = jnp.abs(alpha)
    at_limit = magnitude >= 1
    # For |alpha| > 1/2, p = sign(alpha) cot(pi (1 - |alpha|) / 2): 1 - |alpha| is exact there
    # (Sterbenz), while pi * alpha / 2 rounds away the digits of it that p depends on (float32 at
    # alpha = 0.999999: 9 % off in d/dalpha). tan on [0, pi/4] is accurate either way.
    outer = magnitude > 0.5
    inner = jnp.tan(0.5 * jnp.pi * jnp.where(outer, 0.0, alpha))
    gap = jnp.where(outer & ~at_limit, 1 - magnitude, 0.5)
    p = jnp.where(outer, jnp.sign(alpha) / jnp.tan(0.5 * jnp.pi * gap), inner)
    return jnp.where(at_limit, jnp.sign(alpha) * jnp.inf, p)


def alpha_from_p(p):
    """``alpha = (2 / pi) * arctan(p)``, the inverse of :func:`p_from_alpha` (``+-inf -> +-1``)."""
    p = jnp.asarray(p, _float_dtype(jnp.asarray(p).dtype))
    return (2 / jnp.pi) * jnp.arctan(p)


# ----------------------------------------------------------------------------------------------
# Layouts: how elements are reduced to groups and groups broadcast back to elements.
# ----------------------------------------------------------------------------------------------
class _Dense(NamedTuple):
    """Reduce over ``axes`` of a dense array; groups keep the reduced axes as size 1."""

    axes: tuple[int, ...]
    fused: bool = False  # (segments only: the Pallas sums)

    def sum(self, v, ids):
        return jnp.sum(v, self.axes, keepdims=True)

    def max(self, v, ids):
        return jnp.max(v, self.axes, keepdims=True, initial=-jnp.inf)

    def bounds(self, v, support, floor, clamp):
        """(max, min) of the supported values, zeros (the floor) left out of the min: exact."""
        hi = jnp.max(jnp.where(support, v, -jnp.inf), self.axes, keepdims=True, initial=-jnp.inf)
        lo = -jnp.max(jnp.where(support & (v != floor), -v, -jnp.inf), self.axes, keepdims=True, initial=-jnp.inf)
        return hi, lo

    def expand(self, g, ids):
        return g


class _Segments(NamedTuple):
    """Reduce rows ``[E, ...]`` into ``[num_segments, ...]`` by ``segment_ids``. ``fused``: the
    per-channel-reference sums of the common case run as one Pallas pass (gaflax.kernels; sorted
    ids only)."""

    num_segments: int
    indices_are_sorted: bool
    fused: bool = False

    def fused_sum(self, terms, rows, channels, segments, ids):
        """``self.sum`` of ``terms(*rows, *channels, *segments)`` in one fused pass: rows
        ``[E, ...]`` (or broadcasting), channels ``[1, ...]``, segments ``[num_segments, ...]``."""
        shape = jnp.broadcast_shapes(*(a.shape[1:] for a in (*rows, *channels, *segments)))
        width = math.prod(shape)

        def flat(a, n):  # [n, width], or [n, 1] for one value per row (broadcast in the kernel)
            if math.prod(a.shape[1:]) == 1:
                return jnp.broadcast_to(a.reshape(a.shape[0], 1), (n, 1))
            return jnp.broadcast_to(a, (n,) + shape).reshape(n, width)

        num_rows = ids.shape[0]
        out = kernels.fused_segment_sum(
            terms, [flat(r, num_rows) for r in rows], [flat(c, 1) for c in channels],
            [flat(g, self.num_segments) for g in segments], ids, self.num_segments)
        return out.reshape((self.num_segments,) + shape)

    def sum(self, v, ids):
        return jax.ops.segment_sum(v, ids, self.num_segments, indices_are_sorted=self.indices_are_sorted)

    def max(self, v, ids):
        return jax.ops.segment_max(v, ids, self.num_segments, indices_are_sorted=self.indices_are_sorted)

    def bounds(self, v, support, floor, clamp):
        """Per channel, over all rows: an upper bound of every segment's max and a lower bound of
        its min above the floor. Unmasked on purpose: rows without weight only widen the bounds,
        and the floor (a zero) is clamped to ``clamp``, the smallest normal number (log input: -max).
        Two plain reductions cost about one segment_sum; masked ones were 10x slower on
        XLA:CPU. Bounds that are too loose make a sum underflow, which ``_stats`` detects.
        """
        # initial: zero rows (a graph without edges) give (-inf, inf), and every segment is empty.
        return (jnp.max(v, axis=0, keepdims=True, initial=-jnp.inf),
                jnp.min(jnp.maximum(v, clamp), axis=0, keepdims=True, initial=jnp.inf))

    def expand(self, g, ids):
        if g.shape[0] == 1 and self.num_segments != 1:  # per channel only: broadcasts as is
            return g
        return jnp.take(g, ids, axis=0, mode="clip")


# ----------------------------------------------------------------------------------------------
# The core: forward statistics, shared by the value and the JVP.
# ----------------------------------------------------------------------------------------------
class _GroupStats(NamedTuple):
    """Per-group results of the forward pass (all of the group shape). With wbar = w / sum(w) and
    the element terms e_i = exp(p (z_i - log_ref)):"""

    log_mean: jax.Array  # L = log M (EMPTY_LOG_FILL where empty)
    log_offset: jax.Array  # L - log_ref, computed without the rounding of L (0 where not ok)
    mean: jax.Array  # M itself (0 where empty); unused for log inputs
    ok: jax.Array  # bool: non-empty and L > -inf; gradients are zero elsewhere
    total_weight: jax.Array  # W = sum w, 1 where empty
    term_mean: jax.Array  # S = sum wbar e, 1 where not ok
    term_mean_minus_1: jax.Array  # U = S - 1, exact to rounding in the log1p form
    log_ref: jax.Array  # the reference log-value (log of the max / min input) of the exponents
    use_log1p: jax.Array  # bool: the log1p(U) form (Taylor expm1 terms) was used
    unreliable: jax.Array  # bool: the per-channel reference is not good enough (segments)
    log_ref_coarse: jax.Array  # the reference from layout.bounds (per channel for segments)
    exact: jax.Array  # scalar bool: log_ref is the per-segment reference, not log_ref_coarse
    terms: jax.Array | None  # the e_i (with p = 1 where p is 0 or infinite); JVP only


class _Reference(NamedTuple):
    """The reference input of each group's exponents, and the spread the sum's form depends on."""

    value: jax.Array  # the max (p >= 0) or min non-zero (p < 0) input; neutral (x = 1) if none
    log: jax.Array  # its log
    found: jax.Array  # bool: an input with weight that can serve (finite, above the floor)
    bound: jax.Array  # the value before the neutral stand-in (may be +-inf or the floor)
    log_coarse: jax.Array  # log of the layout's bound (per channel for segments)
    log_spread: jax.Array  # log(max) - log(min) of the bounds


def _horner(coefficients, t):
    """sum_k coefficients[k] t^k by Horner's rule: a few FMAs instead of a transcendental."""
    acc = jnp.zeros_like(t)
    for c in reversed(coefficients):
        acc = acc * t + c
    return acc


def _expm1_over_t(t):
    """expm1(t) / t for |t| < _EXPM1_SERIES_RADIUS by its Taylor series sum_k t^k / (k + 1)!."""
    n_terms = 10 if jnp.finfo(t.dtype).bits <= 32 else 17  # truncation below rounding there
    return _horner(_EXPM1_TAYLOR[:n_terms], t)


def _element_terms(z, p, zref_e, at_extreme_e, e_regular=None):
    """Per element: e = exp(p d0) and em1 = e - 1 with d0 = z - zref (a Taylor series for |p d0| <
    _EXPM1_SERIES_RADIUS). At p = 0, e = 1 and em1 = d0, the terms of the geometric mean. For
    infinite p, e is ``at_extreme_e`` (the indicator of the arg-max or arg-min) and em1 is
    meaningless. ``e_regular``, if given, is exp(p d0) already computed with p = 1 where p is 0 or
    infinite.

    Written with group-level selects only: an element-level select between two gathered
    quantities made XLA:CPU's scatter 5x slower (scripts/bench_ga.py).
    """
    p_lin = jnp.where(jnp.isfinite(p) & (p != 0), p, 1)  # 1 at p = 0: t0 = d0
    t0 = p_lin * (z - zref_e)
    e = jnp.where(p != 0, jnp.exp(t0) if e_regular is None else e_regular, 1)
    series = (jnp.abs(t0) < _EXPM1_SERIES_RADIUS) | (p == 0)
    em1 = jnp.where(series, t0 * _expm1_over_t(jnp.where(series & (p != 0), t0, 0)), e - 1)
    e = jnp.where(jnp.isfinite(p), e, at_extreme_e)
    return e, em1


def _reference(layout, log_input, v, support, p, ids, exact_reference) -> _Reference:
    """The max of x for p >= 0 and the min of the non-zero x for p < 0, so that every exponent
    p (z - zref) <= 0. By default it comes from ``layout.bounds``: exact per group for dense
    arrays, per channel over all rows for segments (two plain reductions instead of a segment
    max; see ``_stats`` for when that is not enough). ``exact_reference`` takes it per segment as
    ``sign(p) * max(sign(p) * x)``. Either way it is an input value itself, so min, max and
    one-element groups come out exactly, without an exp(log x) round trip.
    """
    dtype = v.dtype
    floor = -jnp.inf if log_input else 0  # the input value whose log is -inf
    neutral = 0 if log_input else 1  # the input value whose log is 0
    to_log = (lambda a: a) if log_input else jnp.log
    clamp = -jnp.finfo(dtype).max if log_input else jnp.finfo(dtype).tiny  # a zero's stand-in
    hi, lo = layout.bounds(v, support, floor, clamp)
    if exact_reference:
        sign = jnp.where(p >= 0, 1, -1).astype(dtype)
        bound = sign * layout.max(jnp.where(support & ~((v == floor) & (p < 0)), sign * v, -jnp.inf), ids)
    else:
        bound = jnp.where(p >= 0, hi, lo)
    coarse = jnp.where(p >= 0, hi, lo)  # equal to bound unless exact_reference
    log_coarse = to_log(jnp.where(jnp.isfinite(coarse) & (coarse > floor), coarse, neutral))
    found = jnp.isfinite(bound) & (bound > floor)
    value = jnp.where(found, bound, neutral)
    log = to_log(value)
    return _Reference(value, log, found, bound, log_coarse, log_spread=to_log(hi) - to_log(lo))


def _weighted_term_sum(layout, log_input, v, z, w, support, p, regular, p_safe, ids, log_ref_e, use_log1p, series,
                       e_shared):
    """sum_i w_i q_i per group over the ``support`` (w > 0), with q = e - 1 (Taylor terms) where
    ``series`` (the log1p form, and p = 0 where it is z - zref) and q = e elsewhere (the log(S)
    form, and the arg-max / -min indicator for infinite p). ``regular``: p finite and non-zero;
    ``p_safe``: p there, else 1.

    The value alone takes the log inside each branch, where it fuses into the sum's terms. The
    JVP passes z and ``e_shared`` so that its coefficients need no second exp.
    """
    dtype = v.dtype
    floor = -jnp.inf if log_input else 0
    logs = (lambda: v if log_input else jnp.log(v)) if z is None else (lambda: z)

    def terms_sum(q):
        return layout.sum(jnp.where(support, w * q, 0), ids)

    def general():
        # Infinite p: the terms are the indicator of the arg-max (arg-min), and +inf for zeros when
        # p = -inf, so that the sum is inf and flags a mean of 0 exactly as for finite p < 0.
        z_ = logs()
        at_extreme = jnp.where((v == floor) & (p < 0), jnp.inf, (z_ == log_ref_e).astype(dtype))
        e, em1 = _element_terms(z_, p, log_ref_e, at_extreme, e_shared)
        return terms_sum(jnp.where(layout.expand(series, ids), em1, e))

    def plain():  # the common case: every p finite and non-zero, every sum in the log(S) form
        if layout.fused and e_shared is None and log_ref_e.shape[0] == 1:
            to_log = (lambda a: a) if log_input else jnp.log

            def terms(v_, w_, p_, zref_):  # zeros with p < 0 give inf, as below
                return jnp.where(w_ > 0, w_ * jnp.exp(p_ * (to_log(v_) - zref_)), 0)

            return layout.fused_sum(terms, (v, w), (p_safe, log_ref_e), (), ids)
        return terms_sum(jnp.exp(p_safe * (logs() - log_ref_e)) if e_shared is None else e_shared)

    # lax.cond runs one branch: the plain one skips the Taylor terms and selects, which cost as
    # much as the exp itself on XLA:CPU (scripts/bench_ga.py).
    return jax.lax.cond(jnp.all(regular & ~use_log1p), plain, general)


def _log_offset(averaged, p, finite, p_safe, use_log1p, found_ref):
    """log M - zref from ``averaged`` = sum wbar q: U in the log1p form, S in the log(S) form and
    mean(z - zref) at p = 0. +inf (a zero with p < 0) and 0 (all weight on zeros, p > 0) mean a
    mean of 0: -inf. ``finite``: p is finite; ``p_safe``: p where finite and non-zero, else 1."""
    log_s = jnp.where(use_log1p, jnp.log1p(averaged), jnp.log(jnp.where(averaged == 0, 1, averaged)))
    log_s = jnp.where((averaged == 0) & ~use_log1p, -jnp.inf, log_s)  # all weight on zeros, p > 0
    offset = jnp.where(p == 0, averaged, log_s / p_safe)  # a zero with p < 0 gives inf: -inf
    # Infinite p: inf (a zero, p = -inf) or 0 (only zeros, p = +inf) mean a mean of 0.
    offset = jnp.where(finite, offset, jnp.where((averaged == jnp.inf) | (averaged == 0), -jnp.inf, 0))
    return jnp.where(found_ref | (p > 0), offset, -jnp.inf)  # p < 0 and nothing but zeros


def _forward(layout, log_input, v, z, w, p, ids, exact_reference=False) -> _GroupStats:
    """Compute the mean and the per-group terms its derivatives need.

    ``v``: element values (x, or z when ``log_input``); ``z``: their logs (``v`` itself when
    ``log_input``) when the caller shares them with the JVP, or None to take them here; ``w``:
    weights broadcastable to ``v`` (same rank); ``p``: exponent broadcastable to the groups and
    elements (same rank).

    One sum per group, in one of two forms (docs/ga_math.md): log1p(U) with Taylor expm1 terms
    when |p| * spread < _LOG1P_SWITCH, where every |t| is that small and S > 1/2; else log(S) with
    exp terms.
    """
    dtype = v.dtype
    support = w > 0
    total_weight = layout.sum(w, ids)
    nonempty = total_weight > 0
    total_weight = jnp.where(nonempty, total_weight, 1)

    finite = jnp.isfinite(p)
    regular = finite & (p != 0)
    p_safe = jnp.where(regular, p, 1)
    ref = _reference(layout, log_input, v, support, p, ids, exact_reference)
    spread = ref.log_spread
    use_log1p = regular & (jnp.abs(p_safe) * jnp.where(spread >= 0, spread, jnp.inf) < _LOG1P_SWITCH)

    log_ref_e = layout.expand(ref.log, ids)
    series = use_log1p | (p == 0)
    # The JVP shares the exp terms with its coefficients; a fused sum recomputes them instead.
    e_shared = None if z is None or layout.fused else jnp.exp(p_safe * (z - log_ref_e))
    total = _weighted_term_sum(
        layout, log_input, v, z, w, support, p, regular, p_safe, ids, log_ref_e, use_log1p, series, e_shared
    )
    # Empty groups get the neutral sum (log S = 0) so that no Inf enters any derivative.
    averaged = jnp.where(nonempty, total / total_weight, jnp.where(series, 0, 1))
    term_mean = jnp.where(p == 0, 1, jnp.where(use_log1p, 1 + averaged, averaged))
    term_mean_minus_1 = jnp.where(p == 0, 0, jnp.where(use_log1p, averaged, averaged - 1))

    offset = _log_offset(averaged, p, finite, p_safe, use_log1p, ref.found)
    log_mean = jnp.where(nonempty, ref.log + offset, EMPTY_LOG_FILL)
    mean = jnp.where(nonempty, ref.value * jnp.exp(offset), 0)

    # Only for segments with a per-channel reference: a log(S)-form sum far below the channel's
    # reference may have underflowed (and for infinite p the indicator needs the exact extreme).
    # Per-channel bounds that are not finite (an infinite input without weight), or a p < 0 sum
    # that overflowed (an input below the clamped lower bound) send it down the exact path too.
    underflow_guard = 2.0 ** (_UNDERFLOW_GUARD_EXP32 if jnp.finfo(dtype).bits <= 32 else _UNDERFLOW_GUARD_EXP64)
    unreliable = nonempty & (
        (regular & ~use_log1p & (averaged < underflow_guard))
        | ~finite
        | ~jnp.isfinite(ref.bound)
        | ((p < 0) & (averaged == jnp.inf))
    )

    ok = nonempty & (log_mean > -jnp.inf)
    term_mean = jnp.where(ok & (term_mean > 0), term_mean, 1)
    group = lambda a: jnp.broadcast_to(a, log_mean.shape)  # noqa: E731  (same shapes in both cond branches)
    return _GroupStats(
        log_mean=log_mean,
        log_offset=jnp.where(ok, offset, 0),
        mean=mean,
        ok=ok,
        total_weight=total_weight,
        term_mean=term_mean,
        term_mean_minus_1=term_mean_minus_1,
        log_ref=group(ref.log),
        use_log1p=group(use_log1p),
        unreliable=unreliable,
        log_ref_coarse=ref.log_coarse,
        exact=jnp.asarray(exact_reference),
        terms=e_shared,
    )


def _stats(layout, log_input, v, z, w, p, ids) -> _GroupStats:
    """Dense arrays: the coarse reference is exact. Segments: the per-channel reference, unless
    some segment's sum underflowed or p is infinite; then the per-segment reference
    (``lax.cond`` runs only one branch, so the common case costs no segment max)."""
    st = _forward(layout, log_input, v, z, w, p, ids)
    if isinstance(layout, _Dense):
        return st
    return jax.lax.cond(
        jnp.any(st.unreliable), lambda: _forward(layout, log_input, v, z, w, p, ids, exact_reference=True), lambda: st
    )


def _kl_over_p2_terms(d, t, w, w_et, p_safe, regular):
    """Per-element terms of W KL(s || wbar) / p^2, given d = z - L, t = p d, the weights w and
    w_et = w e^t.

    With h(t) = (t - 1) e^t + 1 >= 0, KL(s || wbar) = sum_i wbar_i h(t_i). Near t = 0,
    h(t) = t^2 P(t) with the Taylor series P; we return w d^2 P(t) = w h / p^2 there, which stays
    exact as p -> 0 (it tends to w d^2 / 2, giving Var(z) / 2 for the geometric mean). Elsewhere
    w e^t comes in as ``w_et`` = w e / S, which the value already computed: no second exp. It is
    taken with w first: w_i e_i / S = W s_i <= W, while e^t alone reaches 1 / wbar_i, which
    overflows float32 when a tiny weight carries all of a group's mass (attention weights near
    1e-37, the rest on zeros).
    """
    small = jnp.abs(t) < _KL_TAYLOR_RADIUS
    ts = jnp.where(small, t, 0)
    n_terms = 9 if jnp.finfo(t.dtype).bits <= 32 else len(_KL_TAYLOR)  # truncation below rounding
    poly = _horner(_KL_TAYLOR[:n_terms], ts)
    ds = jnp.where(small, d, 0)
    w_h_big = (t - 1) * w_et + w  # t is clipped to +-_EXPONENT_CLIP, where e^t has long underflowed
    return jnp.where(regular, jnp.where(small, w * (ds * ds * poly), w_h_big / (p_safe * p_safe)), 0)


def _p_of(by_alpha, exponent):
    return p_from_alpha(exponent) if by_alpha else exponent


def _is_zero(t):
    return t is None or isinstance(t, SymbolicZero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _mean(layout, log_input, by_alpha, v, w, exponent, ids):
    """log M (``log_input``) or M of ``v``; ``exponent`` is alpha (``by_alpha``) or p."""
    st = _stats(layout, log_input, v, None, w, _p_of(by_alpha, exponent), ids)
    return st.log_mean if log_input else st.mean


@functools.partial(_mean.defjvp, symbolic_zeros=True)
def _mean_jvp(layout, log_input, by_alpha, primals, tangents):
    v, w, exponent, ids = primals
    dv, dw, dexponent, _ = tangents
    p = _p_of(by_alpha, exponent)
    # log x is shared by the value and the coefficients. The select changes nothing (log of a
    # negative is NaN either way) but makes it a loop fusion, which XLA:CPU splits over the
    # cores; a bare log it ran on one (5-10 % of a learned-alpha step, scripts/bench_ga.py).
    z = v if log_input else jnp.log(jnp.where(v >= 0, v, jnp.nan))
    st = _stats(layout, log_input, v, z, w, p, ids)
    wanted = (not _is_zero(dv), not _is_zero(dw), not _is_zero(dexponent))
    coefficients = functools.partial(_jvp_coefficients, layout, log_input, v, z, w, p, ids, st, wanted)
    if isinstance(layout, _Dense):
        c_v, g_w, kl_over_p2 = coefficients(st.log_ref)
    else:
        # One branch runs. With the per-channel reference (the common case) the element terms
        # need no E x F gather of it, and XLA fuses each branch on its own.
        c_v, g_w, kl_over_p2 = jax.lax.cond(
            st.exact, lambda: coefficients(layout.expand(st.log_ref, ids)), lambda: coefficients(st.log_ref_coarse)
        )

    d_log = jnp.zeros_like(st.log_mean)  # tangent of L from the exponent
    if wanted[2]:
        if by_alpha:
            # d L / d alpha = (pi / 2) (1 + p^2) KL / p^2. At p = +-inf, s is wbar restricted to the
            # arg-max (min): KL = -log S and KL / p^2 = 0.
            finite, regular = jnp.isfinite(p), jnp.isfinite(p) & (p != 0)
            dlog_dalpha = jnp.where(finite, (1 + jnp.where(regular, p * p, 0)) * kl_over_p2, -jnp.log(st.term_mean))
            d_log = d_log + (0.5 * jnp.pi) * jnp.where(st.ok, dlog_dalpha, 0) * dexponent
        else:
            d_log = d_log + kl_over_p2 * dexponent
    d_out = d_log if log_input else st.mean * d_log
    if wanted[1]:
        d_out = d_out + layout.sum(g_w * dw, ids)
    if wanted[0]:
        d_out = d_out + layout.sum(c_v * dv, ids)
    return (st.log_mean if log_input else st.mean), d_out.astype(v.dtype)


@jax.custom_jvp
def _undefined_gradient(x, undefined):
    """``x``, with NaN derivatives where ``undefined`` (a NaN or infinite mean)."""
    return x


@_undefined_gradient.defjvp
def _undefined_gradient_jvp(primals, tangents):
    x, undefined = primals
    return x, tangents[0] * jnp.where(undefined, jnp.nan, 1).astype(x.dtype)


def _varying_like(flags, *others):
    """Boolean ``flags`` or-ed with a False computed from each of ``others`` (a reduction over none
    of their elements, which XLA folds away). Inside ``shard_map`` this types ``flags`` as varying
    over the mesh axes that ``others`` vary over, as both branches of a ``lax.cond`` must be."""
    for other in others:
        if other is not None:
            flags = flags | jnp.any(jnp.ravel(other)[:0] != 0)
    return flags


def _checked_mean(layout, log_input, by_alpha, v, w, exponent, ids):
    """:func:`_mean` with the semantics of non-finite and invalid input (README, "Non-finite
    input"). Per group: NaN anywhere in the data, the weights or the exponent, a negative input,
    or a negative or infinite weight gives NaN; an input of +inf (z = +inf for log inputs) with
    weight gives +inf for p >= 0, and for p < 0 contributes x^p = 0 (the core handles that
    case itself) unless every weighted input is +inf, which gives +inf. Derivatives are NaN where
    the mean is NaN or infinite. Offending elements are replaced by a neutral value before the
    core runs, so that they cannot reach other groups (segments share per-channel bounds).
    """
    bad_v = jnp.isnan(v) if log_input else (jnp.isnan(v) | (v < 0))
    bad_w = jnp.isnan(w) | (w < 0) | (w == jnp.inf)
    group_shape = jax.eval_shape(lambda: layout.sum(v, ids)).shape

    def sanitize():
        p = _p_of(by_alpha, exponent)
        infinite = v == jnp.inf
        weighted = (w > 0) & ~bad_w
        # NaN where a group has an invalid element, else its number of weighted infinite inputs;
        # and its number of weighted finite inputs.
        flags = jnp.where(bad_v | bad_w, jnp.nan, jnp.where(infinite & weighted, 1, 0)).astype(v.dtype)
        flags = layout.sum(flags, ids)
        finite_weighted = layout.sum(jnp.where(weighted & ~infinite, 1, 0).astype(v.dtype), ids)
        invalid = jnp.isnan(flags) | jnp.isnan(p)
        infinite_mean = ~invalid & (flags > 0) & ((p >= 0) | (finite_weighted == 0))
        replaced = bad_v | (infinite & (p >= 0)) | jnp.isnan(p)
        nan_exponent = jnp.isnan(exponent)
        return (
            jnp.where(replaced, 0 if log_input else 1, _undefined_gradient(v, replaced)),
            jnp.where(bad_w, 0, _undefined_gradient(w, bad_w)),
            jnp.where(nan_exponent, 0, _undefined_gradient(exponent, nan_exponent)),
            jnp.broadcast_to(invalid, group_shape),
            jnp.broadcast_to(infinite_mean, group_shape),
        )

    def as_given():
        no = _varying_like(jnp.zeros(group_shape, bool), v, w, exponent, ids)
        return v, w, exponent, no, no

    # Valid finite input (the common case) costs one plain reduction: lax.cond runs one branch.
    anything_special = jnp.any(bad_v | (v == jnp.inf)) | jnp.any(bad_w) | jnp.any(jnp.isnan(exponent))
    v, w, exponent, invalid, infinite_mean = jax.lax.cond(anything_special, sanitize, as_given)
    out = _mean(layout, log_input, by_alpha, v, w, exponent, ids)
    # With +inf inputs replaced by 1 (p >= 0), out is 0 only for a geometric mean (p = 0) of a
    # zero and an infinity, which is undefined; with p < 0 it is 0 when every weighted input is +inf.
    zero = out == (-jnp.inf if log_input else 0)
    special = jnp.where(invalid | (zero & (_p_of(by_alpha, exponent) == 0)), jnp.nan, jnp.inf)
    undefined = invalid | infinite_mean
    return jnp.where(undefined, special, _undefined_gradient(out, undefined))


# The public functions call the mean through jit: eagerly, its few hundred small ops (and both
# branches of each lax.cond) would each be dispatched and compiled on their own, about 3x slower
# than one compiled program per shape; inside a caller's jit it is inlined.
_compiled_mean = jax.jit(_checked_mean, static_argnums=(0, 1, 2))


def _jvp_coefficients(layout, log_input, v, z, w, p, ids, st, wanted, zref_e):
    """The per-element factors of the JVP, given the group statistics ``st`` and the reference
    ``zref_e`` (broadcastable to the elements):

      c_v  with  d out = sum c_v dv    (d M / d x_i, or d L / d z_i for log inputs),
      g_w  with  d out = sum g_w dw    (d M / d w_i, or d L / d w_i for log inputs),
      kl_over_p2 = KL(s || wbar) / p^2 per group (d L / d p).

    Entries that are not ``wanted`` are None. Zero where the mean is not ok.
    """
    want_v, want_w, want_p = wanted
    expand = functools.partial(layout.expand, ids=ids)
    dtype = v.dtype
    finite = jnp.isfinite(p)
    regular = finite & (p != 0)
    p_safe = jnp.where(regular, p, 1)
    at_extreme = (z == zref_e).astype(dtype)  # for infinite p (only where ok: no zeros)
    e, em1 = _element_terms(z, p, zref_e, at_extreme, st.terms)
    # Softmax weights s_i = wbar_i exp(p (z_i - L)) = w_i e_i / (W S): d L / d z_i = s_i.
    # For x the chain rule adds M / x_i. The per-group factors, zero where the mean is not ok,
    # are folded into one gathered array (element-level masks gathered from the groups cost as
    # much as the exp on XLA:CPU). e <= 1 for every supported element of an ok group (its
    # exponent is <= 0); the clamp only touches zeros with p < 0 (e = inf, in a group that is not
    # ok) and elements without weight, so every term below stays finite and 0 * e is 0, not NaN.
    # w is multiplied last: w e alone can be subnormal (a weight near 1e-37), which XLA:CPU
    # flushes to zero, while e / (W S) stays a normal number.
    e_capped = jnp.minimum(e, 1)
    c_v = g_w = kl_over_p2 = None
    if want_v:
        ws_scale = jnp.where(st.ok, 1 / (st.total_weight * st.term_mean), 0)
        if log_input:
            c_v = w * (e_capped * expand(ws_scale))
        else:
            # d M / d x_i = M s_i / x_i. At x_i = 0 it is w_i / W for p = 1 and 0 for p > 1;
            # for p < 1 it is unbounded or depends on other zeros, and we return 0 (documented).
            x_safe = jnp.where(v > 0, v, 1)
            c_v = jnp.where(v > 0, w * (e_capped * expand(ws_scale * st.mean)) / x_safe, 0)
            at_zero = jnp.where((p == 1) & (st.ok | (st.total_weight > 0)), 1 / st.total_weight, 0)
            c_v = jnp.where(v == 0, w * expand(at_zero), c_v)
    if want_w:
        # d L / d w_i = ((x_i / M)^p - 1) / (p W), and (x_i / M)^p - 1 = e_i / S - 1 = (em1_i - U) / S.
        # In the expm1 branch em1_i and U are exact to relative eps: no cancellation as p -> 0.
        # In the log(S) branch e_i / S - 1 is taken as written: (e_i - 1) - (S - 1) lost every
        # digit when S << 1 (segments far below their channel's reference; float32 gave 0).
        # At p = 0 the limit is (z_i - L) / W.
        term_mean = expand(st.term_mean)
        ratio_m1 = jnp.where(expand(st.use_log1p), (em1 - expand(st.term_mean_minus_1)) / term_mean, e / term_mean - 1)
        g_reg = ratio_m1 / p_safe
        g_geo = z - expand(st.log_mean)
        g = jnp.where(p == 0, g_geo, jnp.where(finite, g_reg, 0))
        # d out / d w_i: times M for x inputs, folded in before the check below. A derivative
        # beyond the dtype's range is returned as 0: that of a weightless element far above the
        # reference (e_i = inf), or of any element when W is near the smallest normal (float32
        # attention weights after dropout, W ~ 1e-33 and g ~ 1e6). As inf it made NaN downstream
        # (0 * inf in the dropout mask that had zeroed the weight).
        g_w = g * expand(jnp.where(st.ok, (1 if log_input else st.mean) / st.total_weight, 0))
        g_w = jnp.where(jnp.isfinite(g_w), g_w, 0)
    if want_p:
        # d L / d p = KL(s || wbar) / p^2, one sum. Terms of groups that are not ok are dropped by
        # the group-level where; the clips keep them finite (d = -inf for a zero input), as the
        # double-where idiom needs.
        # d = (z - zref) - (L - zref): the reference element's d is then exactly -offset, where
        # z - L would cancel (float32, alpha = 1 - 1e-6: 8 % off in d/dalpha).
        def xla_sum():
            d = jnp.clip((z - zref_e) - expand(st.log_offset), -_LOG_DIFF_CLIP, _LOG_DIFF_CLIP)
            t = jnp.clip(jnp.where(regular, p_safe * d, 0), -_EXPONENT_CLIP, _EXPONENT_CLIP)
            w_et = w * e_capped / expand(st.term_mean)  # w e^t, for regular p
            return layout.sum(_kl_over_p2_terms(d, t, w, w_et, p_safe, regular | (p == 0)), ids)

        def fused_sum():  # every p regular, per-channel reference: the same terms in one pass
            def terms(z_, w_, p_, zref_, offset_, term_mean_):
                d = jnp.clip((z_ - zref_) - offset_, -_LOG_DIFF_CLIP, _LOG_DIFF_CLIP)
                t = jnp.clip(p_ * d, -_EXPONENT_CLIP, _EXPONENT_CLIP)
                w_et = w_ * jnp.minimum(jnp.exp(p_ * (z_ - zref_)), 1) / term_mean_
                return _kl_over_p2_terms(d, t, w_, w_et, p_, True)

            return layout.fused_sum(terms, (z, w), (p_safe, zref_e), (st.log_offset, st.term_mean), ids)

        if layout.fused and jnp.shape(zref_e)[0] == 1:
            total = jax.lax.cond(jnp.all(regular), fused_sum, xla_sum)
        else:
            total = xla_sum()
        kl_over_p2 = jnp.where(st.ok, total / st.total_weight, 0)
    return c_v, g_w, kl_over_p2


# ----------------------------------------------------------------------------------------------
# Argument handling.
# ----------------------------------------------------------------------------------------------
def _float_dtype(dtype):
    """Floating dtype for computation: bfloat16 / float16 compute in float32, ints as floats."""
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.bfloat16, jnp.float16):
        return jnp.dtype(jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.result_type(float))
    return dtype


def _out_dtype(dtype):
    dtype = jnp.dtype(dtype)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else _float_dtype(dtype)


def _check_nonnegative(name, x, mask=None):
    """Raise on negative entries when ``x`` is concrete; under jit they give NaN instead."""
    bad = x < 0
    if mask is not None:
        bad = bad & mask
    try:
        n_bad = int(jnp.sum(bad))
    except jax.errors.ConcretizationTypeError:
        return  # traced: cannot inspect values (documented: negative inputs give NaN)
    if n_bad:
        raise ValueError(
            f"{name}: inputs must be non-negative, but {n_bad} of {x.size} entries are negative "
            f"(smallest {float(jnp.min(jnp.where(bad, x, 0)))!r}). Use the log-domain "
            f"{'segment_log_ga' if name.startswith('segment') else 'log_ga'} for real-valued "
            "inputs, or make them positive first (for example with softplus)."
        )


def _exponent(name, p, alpha, group_shape, dtype):
    """Validate p / alpha and broadcast to ``group_shape``; returns (exponent, by_alpha)."""
    if (p is None) == (alpha is None):
        raise ValueError(f"{name}: give exactly one of `p` and `alpha` (got {'both' if p is not None else 'neither'}).")
    given, label = (p, "p") if p is not None else (alpha, "alpha")
    given = jnp.asarray(given, dtype)
    try:
        given = jnp.broadcast_to(given, group_shape)
    except ValueError:
        raise ValueError(
            f"{name}: `{label}` with shape {given.shape} does not broadcast against the reduced "
            f"shape {tuple(group_shape)}."
        ) from None
    if label == "alpha":
        try:
            if bool(jnp.any(jnp.abs(given) > 1)):
                raise ValueError(f"{name}: `alpha` must lie in [-1, 1]; got values up to {float(jnp.max(jnp.abs(given)))!r}.")
        except jax.errors.ConcretizationTypeError:
            pass
        return given, True
    return given, False


def _weights(name, weights, shape, dtype):
    if weights is None:
        return jnp.ones((1,) * len(shape), dtype)
    weights = jnp.asarray(weights, dtype)
    _check_nonnegative(f"{name} (weights)", weights)
    return weights


def _reduced_axes(axis, ndim):
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array with {ndim} dimensions")
    return tuple(sorted({int(a) % ndim for a in axes}))


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------
def _dense(name, log_input, values, p, alpha, axis, weights, where, keepdims):
    values = jnp.asarray(values)
    out_dtype = _out_dtype(values.dtype)
    dtype = _float_dtype(values.dtype)
    v = values.astype(dtype)
    axes = _reduced_axes(axis, v.ndim)
    if not log_input:
        _check_nonnegative(name, v, None if where is None else jnp.broadcast_to(where, v.shape))
    w = _weights(name, weights, v.shape, dtype)
    try:
        w = jnp.broadcast_to(w, v.shape)
    except ValueError:
        raise ValueError(f"{name}: weights with shape {w.shape} do not broadcast to x with shape {v.shape}.") from None
    if where is not None:
        mask = jnp.broadcast_to(jnp.asarray(where, bool), v.shape)
        v = jnp.where(mask, v, 0 if log_input else 1)  # masked entries: any finite value
        w = jnp.where(mask, w, 0)
    group_shape = tuple(1 if i in axes else n for i, n in enumerate(v.shape))
    reduced_shape = tuple(n for i, n in enumerate(v.shape) if i not in axes)
    exponent, by_alpha = _exponent(name, p, alpha, reduced_shape, dtype)
    out = _compiled_mean(_Dense(axes), log_input, by_alpha, v, w, exponent.reshape(group_shape), None)
    if not keepdims:
        out = out.reshape(reduced_shape)
    return out.astype(out_dtype)


def ga(x, p=None, *, alpha=None, axis=-1, weights=None, where=None, keepdims=False):
    """Weighted power mean ``(sum w x^p / sum w)^(1/p)`` of non-negative ``x`` along ``axis``.

    Args:
      x: non-negative array. Zeros are valid: the mean is 0 when p <= 0 and a zero has weight.
      p: exponent, scalar or array broadcasting against the reduced shape (per-channel
        exponents); may be +-inf (max / min) or 0 (geometric mean).
      alpha: the bounded alternative to ``p``, in [-1, 1]; ``p = tan(pi * alpha / 2)``.
        Give exactly one of ``p`` and ``alpha``.
      axis: int or tuple of ints to average over.
      weights: non-negative, broadcast to ``x``; normalised internally.
      where: boolean mask broadcast to ``x``; False entries are left out.
      keepdims: keep the reduced axes with size 1.

    Returns:
      The mean, with the reduced axes removed (or kept). An empty reduction (no entry with
      positive weight) gives 0 with zero gradient. bfloat16 / float16 inputs are computed in
      float32 and returned in their own dtype.

    Gradients with respect to ``x``, ``weights``, ``p`` and ``alpha`` are exact and finite
    everywhere (see ``docs/ga_math.md``), including alpha = +-1 and p = 0. Negative inputs raise
    a ``ValueError`` when ``x`` is concrete; under ``jit`` they cannot be seen and give NaN.
    NaN in ``x``, the weights or the exponent gives NaN; ``+inf`` in ``x`` gives ``+inf`` for
    p >= 0 and counts as ``x^p = 0`` for p < 0 (README, "Non-finite input").
    """
    return _dense("ga", False, x, p, alpha, axis, weights, where, keepdims)


def log_ga(z, p=None, *, alpha=None, axis=-1, weights=None, where=None, keepdims=False):
    """``log(ga(exp(z)))`` computed from logarithms: ``(1/p) log(sum wbar exp(p z))``.

    ``z`` may be any real number (or -inf, the log of 0), so this is also a soft
    min (p -> -inf) / mean (p -> 0) / max (p -> +inf) of real-valued features. Arguments as in
    :func:`ga`. An empty reduction gives :data:`EMPTY_LOG_FILL` (0.0) with zero gradient.
    """
    return _dense("log_ga", True, z, p, alpha, axis, weights, where, keepdims)


KERNELS = (None, "xla", "pallas")


def _segment(name, log_input, data, segment_ids, num_segments, p, alpha, weights, indices_are_sorted, kernel):
    if kernel not in KERNELS:
        raise ValueError(f"{name}: kernel={kernel!r} must be one of {KERNELS}.")
    if kernel == "pallas" and not indices_are_sorted:
        raise ValueError(f"{name}: kernel='pallas' needs segment_ids sorted (indices_are_sorted=True).")
    data = jnp.asarray(data)
    if data.ndim < 1:
        raise ValueError(f"{name}: data must have a leading edge axis, got a scalar.")
    segment_ids = jnp.asarray(segment_ids)
    if segment_ids.shape != data.shape[:1] or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(
            f"{name}: segment_ids must be an integer array of shape {data.shape[:1]} (one id per row "
            f"of data), got {segment_ids.dtype} with shape {segment_ids.shape}."
        )
    if not isinstance(num_segments, (int, np.integer)) or num_segments < 0:
        raise ValueError(f"{name}: num_segments must be a static non-negative int, got {num_segments!r}.")
    out_dtype = _out_dtype(data.dtype)
    dtype = _float_dtype(data.dtype)
    v = data.astype(dtype)
    if not log_input:
        _check_nonnegative(name, v)
    w = _weights(name, weights, v.shape, dtype)
    if w.ndim > v.ndim or w.shape[: min(w.ndim, 1)] not in ((), (1,), v.shape[:1]):
        raise ValueError(
            f"{name}: weights must have shape [E] or [E, ...] broadcasting against data {v.shape} "
            f"(trailing dims are appended), got {w.shape}."
        )
    w = w.reshape(w.shape + (1,) * (v.ndim - w.ndim))
    try:
        jnp.broadcast_shapes(w.shape, v.shape)
    except ValueError:
        raise ValueError(f"{name}: weights with shape {w.shape} do not broadcast against data {v.shape}.") from None
    exponent, by_alpha = _exponent(name, p, alpha, v.shape[1:], dtype)
    fused = kernel == "pallas" or (kernel is None and bool(indices_are_sorted) and kernels.kernel_available())
    layout = _Segments(int(num_segments), bool(indices_are_sorted), fused)
    out = _compiled_mean(layout, log_input, by_alpha, v, w, exponent[None], segment_ids)
    return out.astype(out_dtype)


def segment_ga(data, segment_ids, num_segments, p=None, *, alpha=None, weights=None, indices_are_sorted=False,
               kernel=None):
    """Power mean of the rows of ``data`` in each segment, like ``jax.ops.segment_sum``.

    Args:
      data: ``[E, ...]`` non-negative values.
      segment_ids: ``[E]`` integer segment of each row.
      num_segments: static int N; the output has shape ``[N, ...]``.
      p, alpha: exponent (exactly one), broadcasting against ``data.shape[1:]`` (per channel).
      weights: ``[E]`` or ``[E, ...]`` non-negative (trailing singleton dims are appended, so
        ``[E, H]`` attention weights work for ``[E, H, C]`` data); normalised per segment.
      indices_are_sorted: whether ``segment_ids`` is sorted (faster).
      kernel: how the common case's sums run: "pallas" (one fused pass, ``gaflax.kernels``; needs
        sorted ids; interpreted off GPUs, for tests), "xla", or None: pallas on a GPU when the ids
        are sorted, else xla. Both give the same values and gradients.

    Returns:
      ``[N, ...]``. An empty segment gives 0 with zero gradient.
    """
    return _segment("segment_ga", False, data, segment_ids, num_segments, p, alpha, weights, indices_are_sorted,
                    kernel)


def segment_log_ga(data, segment_ids, num_segments, p=None, *, alpha=None, weights=None, indices_are_sorted=False,
                   kernel=None):
    """Log-domain :func:`segment_ga`: ``(1/p) log(sum wbar exp(p z))`` per segment, any real z.

    An empty segment gives :data:`EMPTY_LOG_FILL` (0.0) with zero gradient.
    """
    return _segment("segment_log_ga", True, data, segment_ids, num_segments, p, alpha, weights, indices_are_sorted,
                    kernel)
