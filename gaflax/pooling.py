"""Pooling operators: one registry for neighbourhood aggregation and for graph readouts.

Every operator has the signature

    fn(messages, segment_ids, num_segments, weights=None, alpha=None, **options) -> pooled

with ``messages`` ``[E, H, C]`` (or ``[E, C]``), ``segment_ids`` ``[E]`` (the receivers, or the graph
of each node for a readout), ``weights`` ``[E, H]`` / ``[E]`` attention coefficients that sum to 1
per segment (or None: uniform), ``alpha`` the GA exponent broadcasting against ``[H, C]``, and
returns ``[num_segments, H, C]``. Empty segments give 0.

``AGGREGATORS`` is the registry: each ``Aggregator`` entry carries the function and what a model
needs to know about it. ``make(name, ...)`` binds an entry's options and returns the function a
layer calls plus the ``ExponentSpec`` of its exponent (None for operators without one), e.g.

    aggregate, exponent = pooling.make("ga", alpha=0.5, learn=True, scope="head", positive="elu1")
    GAT(num_classes=7, layer=LayerOptions(aggregate=aggregate, exponent=exponent))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from gaflax.config import PoolConfig
from gaflax.ga import p_from_alpha, segment_ga, segment_log_ga
from gaflax.registry import Registry

#: Transforms that make messages positive for ``ga``, each with the map back to the message domain
#: applied to the pooled value, so that GA is a generalized mean of the messages themselves:
#: ``inverse(GA(forward(m)))``. Without the map back, softplus adds an offset of log 2 that swamps
#: the small signals of early training (a Cora GAT then stalls near chance for hundreds of epochs).
#: For positive messages, relu_eps and elu1 at alpha = 0.5 reproduce weighted_sum exactly.
_TINY = 1e-30


def _softplus_inverse(y):
    y = jnp.maximum(y, _TINY)
    return y + jnp.log(-jnp.expm1(-y))  # log(exp(y) - 1), stable for small and large y


def _elu1_inverse(y):
    y = jnp.maximum(y, _TINY)
    return jnp.where(y >= 1, y - 1, jnp.log(y))


POSITIVE = {
    "softplus": (jax.nn.softplus, _softplus_inverse),
    "relu_eps": (lambda m: jax.nn.relu(m) + 1e-6, lambda y: y - 1e-6),
    "elu1": (lambda m: jax.nn.elu(m) + 1.0, _elu1_inverse),
}


def _expand(weights, messages):
    return weights.reshape(weights.shape + (1,) * (messages.ndim - weights.ndim))


def _sum(messages, segment_ids, num_segments):
    return jax.ops.segment_sum(messages, segment_ids, num_segments)


def weighted_sum(messages, segment_ids, num_segments, weights=None, alpha=None):
    """Standard GAT: sum of attention-weighted messages (the weighted arithmetic mean)."""
    if weights is not None:
        messages = messages * _expand(weights, messages)
    return _sum(messages, segment_ids, num_segments)


def mean(messages, segment_ids, num_segments, weights=None, alpha=None):
    """Unweighted mean of the messages (attention ignored)."""
    return _sum(messages, segment_ids, num_segments) / jnp.maximum(_count(messages, segment_ids, num_segments), 1)


def _extreme(reduce, messages, segment_ids, num_segments):
    out = reduce(messages, segment_ids, num_segments)
    return jnp.where(jnp.isfinite(out), out, 0)  # empty segments: 0, not -inf / inf


def maximum(messages, segment_ids, num_segments, weights=None, alpha=None):
    return _extreme(jax.ops.segment_max, messages, segment_ids, num_segments)


def minimum(messages, segment_ids, num_segments, weights=None, alpha=None):
    return _extreme(jax.ops.segment_min, messages, segment_ids, num_segments)


def ga(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus"):
    """Attention-weighted power mean of the messages, taken through a positive transform:
    ``inverse(segment_ga(forward(messages)))`` with (forward, inverse) = ``POSITIVE[positive]``."""
    forward, inverse = POSITIVE[positive]
    pooled = segment_ga(forward(messages), segment_ids, num_segments, alpha=alpha, weights=weights)
    # A segment without weight (no edges, or attention dropout dropped all of a low-degree node's
    # edges) pools to 0 like weighted_sum does, not to inverse(0) = log(1e-30) = -69.
    mass = _sum(jnp.ones(messages.shape[:1], messages.dtype) if weights is None else weights,
                segment_ids, num_segments)
    return jnp.where(_expand(mass > 0, pooled), inverse(pooled), 0)


def log_ga(messages, segment_ids, num_segments, weights=None, alpha=None):
    """Log-domain GA of the raw messages: soft min / mean / max (1/p) log sum w exp(p m)."""
    return segment_log_ga(messages, segment_ids, num_segments, alpha=alpha, weights=weights)


def softmax(messages, segment_ids, num_segments, weights=None, alpha=None):
    """DeeperGCN's SoftMax aggregation: sum_j softmax_j(beta m_j) m_j, with beta = p(alpha) >= 0
    per channel (beta = 0 is the mean, beta -> inf the max)."""
    beta = jnp.maximum(p_from_alpha(alpha), 0)
    beta = jnp.where(jnp.isfinite(beta), beta, 1e4)
    beta = beta.reshape((1,) * (messages.ndim - beta.ndim) + beta.shape)
    logits = beta * messages
    logits = logits - jax.ops.segment_max(logits, segment_ids, num_segments)[segment_ids]
    e = jnp.exp(logits)
    return _sum(e * messages, segment_ids, num_segments) / jnp.maximum(_sum(e, segment_ids, num_segments), 1e-30)


# ----------------------------------------------------------------------------------------------
# Learnable rivals of GA, with the peers' semantics (PyG 2.8's torch_geometric.nn.aggr)
# ----------------------------------------------------------------------------------------------
def _count(messages, segment_ids, num_segments):
    """[num_segments, 1, ...]: how many rows each segment has, broadcastable to the output."""
    count = _sum(jnp.ones(messages.shape[:1], messages.dtype), segment_ids, num_segments)
    return _expand(count, messages[:1])


def _flat(messages):
    """``[E, H, C]`` (or ``[E, F]``) as ``[E, H C]``: XLA's CPU gradients on the 3-D layout, with
    per-channel parameters broadcast against it, were several times slower."""
    return messages.reshape(messages.shape[0], math.prod(messages.shape[1:]))


def _per_channel(value, messages):
    """A parameter of the channel shape ``messages.shape[1:]``, broadcast against the rows."""
    return jnp.broadcast_to(value, messages.shape[1:])[None]


#: PowerMeanAggregation's clamps (PyG 2.8 defaults): inputs and the mean are clamped to this range.
POWERMEAN_CLAMP = (1e-4, 100.0)


def powermean(messages, segment_ids, num_segments, weights=None, alpha=None, params=None):
    """DeeperGCN's power mean as PyG implements it (``PowerMeanAggregation(learn=True,
    channels=C)``; Li et al., "DeeperGCN", 2020):

        clamp(mean_i clamp(x_i, 1e-4, 100)^p, 1e-4, 100)^(1/p),   p learned per channel (init 1).

    **The clamps are the peers' approach**, kept on purpose so that the tables compare GA with
    what people use: inputs below 1e-4 (every negative message) count as 1e-4, above 100 as 100,
    and the gradient there is zero. ``ga`` computes the same mean exactly, for any non-negative
    input and any p, through a positive transform. One difference from PyG: an empty segment
    gives 0 (PyG gives 1e-4^(1/p)). Attention weights are ignored, as in PyG.
    """
    lo, hi = POWERMEAN_CLAMP
    channels = messages.shape[1:]
    # p = 0 would divide by zero (PyG gives inf / NaN there); the learned p starts at 1.
    # On flat [E, H C] rows, with both powers as exp(p log x) on clamped (so positive) bases: XLA's
    # pow, and gradients on the [E, H, C] layout, were several times slower.
    flat = _flat(messages)
    p = _per_channel(params["p"], messages).reshape(1, -1)
    count = _count(flat, segment_ids, num_segments)
    powered = jnp.exp(p * jnp.log(jnp.clip(flat, lo, hi)))
    mean_p = _sum(powered, segment_ids, num_segments) / jnp.maximum(count, 1)
    out = jnp.exp(jnp.log(jnp.clip(mean_p, lo, hi)) / p)
    return jnp.where(count > 0, out, 0).reshape(num_segments, *channels)


def softmax_learned(messages, segment_ids, num_segments, weights=None, alpha=None, params=None):
    """DeeperGCN's softmax aggregation with a learned inverse temperature per channel, as PyG's
    ``SoftmaxAggregation(learn=True, channels=C)``:

        sum_i softmax_i(t x_i) x_i,   t learned per channel (init 1; t < 0 gives a soft minimum,
        t = 0 the mean, t -> inf the max).

    Unlike ``softmax`` (beta tied to GA's alpha and kept >= 0), t is a free parameter. Empty
    segments give 0. Attention weights are ignored, as in PyG.
    """
    channels = messages.shape[1:]
    flat = _flat(messages)
    t = _per_channel(params["t"], messages).reshape(1, -1)
    logits = t * flat
    top = jax.ops.segment_max(logits, segment_ids, num_segments)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))  # a shift: no effect on the value
    e = jnp.exp(logits - top[segment_ids])
    total = _sum(e, segment_ids, num_segments)
    out = _sum(e * flat, segment_ids, num_segments) / jnp.where(total > 0, total, 1)
    return out.reshape(num_segments, *channels)


def var(messages, segment_ids, num_segments, weights=None, alpha=None):
    """Per-channel variance, PyG's ``VarAggregation``: mean(x^2) - mean(x)^2 (not clamped; it
    can round below 0). Empty segments give 0. Attention weights are ignored."""
    count = jnp.maximum(_count(messages, segment_ids, num_segments), 1)
    mean_x = _sum(messages, segment_ids, num_segments) / count
    return _sum(messages * messages, segment_ids, num_segments) / count - mean_x * mean_x


#: StdAggregation's floor: variances below it give a standard deviation of 0 (and gradient 0).
STD_VAR_FLOOR = 1e-5


def std(messages, segment_ids, num_segments, weights=None, alpha=None):
    """Per-channel standard deviation, PyG's ``StdAggregation``: sqrt(max(var, 1e-5)), then 0
    wherever that is <= sqrt(1e-5), so that the gradient of sqrt at 0 never appears. Empty
    segments give 0. Attention weights are ignored."""
    v = jnp.maximum(var(messages, segment_ids, num_segments), STD_VAR_FLOOR)
    out = jnp.sqrt(v)
    return jnp.where(out <= STD_VAR_FLOOR ** 0.5, 0, out)


#: PNA's aggregators and degree scalers (Corso et al. 2020), in the order of the mixing map's input.
PNA_AGGREGATORS = ("mean", "min", "max", "std")
PNA_SCALERS = ("identity", "amplification", "attenuation")


def _with_heads(messages):
    """``[E, H, C]`` as is; ``[E, F]`` (a readout) as ``[E, 1, F]``."""
    return messages if messages.ndim == 3 else messages[:, None, :]


def pna(messages, segment_ids, num_segments, weights=None, alpha=None, params=None, delta=1.0):
    """Principal Neighbourhood Aggregation (Corso et al., NeurIPS 2020), as PyG's
    ``DegreeScalerAggregation`` with a linear map after it:

        out_i = W [S(d_i) (x) A(x_j, j in N(i))] + b,

    with the aggregators A = mean, min, max and std (std as ``std`` here: sqrt(max(var, 1e-5)))
    and the scalers S = identity, amplification log(d + 1) / delta and attenuation
    delta / log(d + 1), d the in-degree (at least 1, as in PyG) and ``delta`` the mean of
    log(d + 1) over the training graphs' nodes (``gaflax.tasks.degree_stats``). W ``[H, 12 C, C]``
    mixes the 12 results of each channel per head (``params["mix"]``, ``params["mix_bias"]``).
    Empty segments give 0. Attention weights are ignored.
    """
    x = _with_heads(messages)
    count = _count(x, segment_ids, num_segments)  # [N, 1, 1]
    parts = [mean(x, segment_ids, num_segments), minimum(x, segment_ids, num_segments),
             maximum(x, segment_ids, num_segments), std(x, segment_ids, num_segments)]
    stacked = jnp.concatenate(parts, axis=-1)  # [N, H, 4 C]
    log_degree = jnp.log(jnp.maximum(count, 1) + 1)
    # W [S (x) A] as the sum over scalers s of s(d) (W_s A): the scalers act on the mixed [N, H, C]
    # rather than on three copies of A, which was about 1.3x slower forward and backward.
    k = stacked.shape[-1]
    w = params["mix"]  # [H, 12 C, C]: identity, amplification, attenuation blocks of 4 C rows
    out = (jnp.einsum("nhk,hkc->nhc", stacked, w[:, :k])
           + (log_degree / delta) * jnp.einsum("nhk,hkc->nhc", stacked, w[:, k:2 * k])
           + (delta / log_degree) * jnp.einsum("nhk,hkc->nhc", stacked, w[:, 2 * k:])) + params["mix_bias"][None]
    out = jnp.where(count > 0, out, 0)
    return out if messages.ndim == 3 else out[:, 0, :]


#: LAF units per channel, and the clamp of LAF's inputs and sums (the reference implementation's eps).
LAF_UNITS = 4
LAF_EPS = 1e-7


def laf(messages, segment_ids, num_segments, weights=None, alpha=None, params=None):
    """Learning Aggregation Functions (Pellegrini et al., IJCAI 2021), LAF units with a linear
    layer after them, as the authors' ``LAFLayer``:

        LAF(x) = (alpha L_{a,b}(x) + beta L_{c,d}(1 - x)) / (gamma L_{e,f}(x) + delta L_{g,h}(1 - x)),
        L_{r,s}(x) = (sum_i x_i^s)^r,

    on ``x = clip(sigmoid(m), eps, 1 - eps)`` (LAF is defined on [0, 1]), with each sum clamped
    below at eps, the exponents a..h through a ReLU, and a denominator within eps of 0 replaced by
    +-eps. ``params["laf"]`` ``[12, H, C, U]`` holds (b, d, f, h, a, c, e, g, alpha, beta, gamma,
    delta) for ``U = LAF_UNITS`` units per channel, uniform on [0, 1] at the start (the layer's
    ``kernel_initializer='random_uniform'``, which public GIN-LAF code uses). The layer's default,
    a standard normal, gives coefficients of both signs, so a denominator starts near 0 and the
    first outputs reach 1e7: a GCN with it stayed at chance on Cora. ``params["mix"]``
    ``[H, C U, C]`` and ``params["mix_bias"]`` map the units back to the channels. Empty segments
    give 0. Attention weights are ignored.
    """
    x = _with_heads(messages)
    count = _count(x, segment_ids, num_segments)
    x = jnp.clip(jax.nn.sigmoid(x), LAF_EPS, 1 - LAF_EPS)  # [E, H, C]
    w = params["laf"]
    rows, units = x.shape[0], w.shape[-1]
    # The four sums at once, as base^s = exp(s log base) on one flat [E, 4 H C U] array: XLA's pow
    # and its gradient took 10x as long on the Cora shape, and the 4-D layout's gradient 8x.
    log_bases = jnp.stack([jnp.log(x), jnp.log1p(-x), jnp.log(x), jnp.log1p(-x)], axis=1)[..., None]
    flat = jnp.broadcast_to(log_bases, (rows, 4, *x.shape[1:], units)).reshape(rows, w[:4].size)
    powered = jnp.exp(jax.nn.relu(w[:4]).reshape(1, -1) * flat)
    totals = jnp.maximum(_sum(powered, segment_ids, num_segments), LAF_EPS)  # [N, 4 H C U]
    terms = jnp.exp(jax.nn.relu(w[4:8]).reshape(1, -1) * jnp.log(totals)) * w[8:].reshape(1, -1)
    k = terms.shape[1] // 4
    numerator, denominator = terms[:, :k] + terms[:, k:2 * k], terms[:, 2 * k:3 * k] + terms[:, 3 * k:]
    sign = jnp.where(denominator > 0, 1.0, -1.0)
    denominator = jnp.where(jnp.abs(denominator) < LAF_EPS, sign * LAF_EPS, denominator)
    units = (numerator / denominator).reshape(num_segments, x.shape[1], k // x.shape[1])  # [N, H, C U]
    out = jnp.einsum("nhk,hkc->nhc", units, params["mix"]) + params["mix_bias"][None]
    out = jnp.where(count > 0, out, 0)
    return out if messages.ndim == 3 else out[:, 0, :]


def extended_ga(messages, segment_ids, num_segments, weights=None, alpha=None, params=None):
    """GA with a degree scaling, a mean shift and a learned choice between its signed and
    magnitude forms (the GA family's answer to GenAgg's breadth; derivation in docs/ga_math.md §4):

        z_j   = x_j - b * mean_j x_j
        out_i = n_i^gamma * ((1 - s) * LGA_p(z) + s * GA_p(|z|)) + delta * log n_i,

    with LGA_p the log-domain GA ``(1/p) log sum wbar exp(p z)`` (signed: min, mean, max, soft
    versions between), GA_p the power mean of the magnitudes, n_i the segment's number of rows,
    p = tan(pi alpha / 2) from the layer's exponent, and per channel the learned b and s in
    [0, 1] (``unit_interval``: both ends are reached exactly), gamma and delta (start 0). The means
    use the attention weights when given (``wbar``). At s = 0 or 1 and alpha = +-1 every piece
    is exact, with the GA primitive's gradients. Empty segments give 0.

    It contains 12 of GenAgg's 13 regression targets exactly (``tests/test_aggregators.py``):
    max, min, mean (s = 0, p = inf, -inf, 0), sum (and gamma = 1), log-sum-exp (p = 1, delta = 1),
    max / min / geometric / harmonic mean of magnitudes (s = 1), rms (p = 2), 2-norm (and
    gamma = 1/2), std (p = 2, b = 1). Not the product of magnitudes (GA_0(|x|)^n).
    """
    b = _per_channel(unit_interval(params["b"]), messages)
    s = _per_channel(unit_interval(params["gate"]), messages)
    gamma, delta = _per_channel(params["gamma"], messages), _per_channel(params["delta"], messages)
    count = _count(messages, segment_ids, num_segments)
    n = jnp.maximum(count, 1)
    if weights is None:
        centre = mean(messages, segment_ids, num_segments)
    else:  # the attention-weighted mean, as LGA and GA weigh the rows
        w = _expand(weights, messages)
        mass = _sum(w, segment_ids, num_segments)
        centre = _sum(w * messages, segment_ids, num_segments) / jnp.where(mass > 0, mass, 1)
    z = messages - b * centre[segment_ids]
    signed = segment_log_ga(z, segment_ids, num_segments, alpha=alpha, weights=weights)
    magnitude = segment_ga(jnp.abs(z), segment_ids, num_segments, alpha=alpha, weights=weights)
    mixed = (1 - s) * signed + s * magnitude
    log_n = jnp.log(n)
    out = jnp.exp(gamma * log_n) * mixed + delta * log_n
    return jnp.where(count > 0, out, 0)


#: GenAgg's f: R -> R^4 and its learned inverse R^4 -> R, MLPs of these widths (the authors' default).
GENAGG_WIDTHS = (1, 2, 2, 4)


@jax.custom_jvp
def _mish(x):
    """Mish, x tanh(softplus(x)), as ``x n / (n + 2)`` with ``n = e^x (e^x + 2)``: one exp, and
    a hand-written derivative (the autodiff one through tanh and softplus dominated GenAgg's
    backward pass). Above x = 20 both equal x to rounding in float32 and float64."""
    e = jnp.exp(jnp.minimum(x, 20.0))
    n = e * (e + 2)
    return jnp.where(x > 20, x, x * n / (n + 2))


@_mish.defjvp
def _mish_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(jnp.minimum(x, 20.0))
    n = e * (e + 2)
    t = n / (n + 2)  # tanh(softplus(x)); d t/dx = 4 e (e + 1) / (n + 2)^2
    slope = jnp.where(x > 20, 1.0, t + x * 4 * e * (e + 1) / jnp.square(n + 2))
    return jnp.where(x > 20, x, x * t), slope.astype(dx.dtype) * dx


#: Batch normalisation's epsilon inside GenAgg's MLPs (PyTorch's BatchNorm1d default).
GENAGG_BN_EPS = 1e-5


def _plane_batch_norm(plane, scale, shift, kept):
    """BatchNorm1d (training mode, biased variance) of one unit of an MLP layer, ``plane [R, F]``:
    the statistics of every channel of the rows ``kept`` (``[R, 1]`` bool, or None for all), as
    the package normalises its input reshaped to ``[-1, width]``."""
    if kept is None:
        count = plane.size
        mean_x = jnp.sum(plane) / count
        var_x = jnp.sum(jnp.square(plane - mean_x)) / count
    else:
        count = jnp.maximum(jnp.sum(kept) * plane.shape[1], 1)
        mean_x = jnp.sum(jnp.where(kept, plane, 0)) / count
        var_x = jnp.sum(jnp.where(kept, jnp.square(plane - mean_x), 0)) / count
    return (plane - mean_x) * (jax.lax.rsqrt(var_x + GENAGG_BN_EPS) * scale) + shift


def _plane_mlp(params, prefix, planes, widths, kept=None):
    """GenAgg's MLP (Linear, BatchNorm1d, Mish) applied to every element: the input is a list of
    ``widths[0]`` planes ``[R, F]`` (one per input unit), the output a list of ``widths[-1]``.
    Keeping each unit as its own plane, with the tiny matmuls unrolled into scalar-weighted sums,
    avoids a trailing axis of 1 to 4 that XLA's CPU backward handled several times slower."""
    for i in range(len(widths) - 1):
        kernel, bias = params[f"{prefix}{i}_kernel"], params[f"{prefix}{i}_bias"]
        planes = [sum(plane * kernel[k, m] for k, plane in enumerate(planes)) + bias[m]
                  for m in range(widths[i + 1])]
        if i < len(widths) - 2:
            scale, shift = params[f"{prefix}{i}_scale"], params[f"{prefix}{i}_shift"]
            planes = [_mish(_plane_batch_norm(plane, scale[m], shift[m], kept)) for m, plane in enumerate(planes)]
    return planes


def genagg(messages, segment_ids, num_segments, weights=None, alpha=None, params=None, with_aux=False,
           inverse_loss=True):
    """GenAgg (Kortvelesy, Morad & Prorok, NeurIPS 2023), as the authors' ``genagg`` package:

        out_i = f^-1( n_i^a * mean_j f(x_j - b * mean_j x_j) ),

    with f: R -> R^4 an MLP (widths ``GENAGG_WIDTHS``; Linear, BatchNorm1d, Mish) applied to every
    channel of every message, f^-1 a second MLP (R^4 -> R) trained to invert it, and a, b learned
    in [0, 1] (``unit_interval``; both start at 0, where GenAgg is the f-mean). Weights start as
    the package's (He normal, PyTorch's bias default). The authors add the inverse-reconstruction
    loss ``mean((|x| - |f^-1(f(x))|)^2)`` to training; with ``with_aux=True`` this returns
    ``(out, loss)`` and the layers add the loss to the objective (``sow('losses')``).

    Differences from the package: batch normalisation always uses the statistics of the call's
    rows (the package's training mode; it keeps no running statistics, so the aggregator stays
    stateless, and padding rows count in them), except messages whose segment id is out of range
    (no segment takes them: ``gaflax.devices.pad_edges``); a and b are kept in [0, 1] as the
    paper states.
    Without the normalisation, f^-1 learned a constant on Cora's small GCN messages and 3 of 5
    seeds stayed at chance. Empty segments give 0. Attention weights are ignored.
    Shapes: messages ``[E, ...]`` -> ``[num_segments, ...]``.
    """
    a = unit_interval(params["a"])
    b = unit_interval(params["b"])
    flat = _flat(messages)  # [E, F]
    count = _count(flat, segment_ids, num_segments)  # [N, 1]
    x = flat - b * mean(flat, segment_ids, num_segments)[segment_ids]
    kept = (segment_ids < num_segments)[:, None]  # [E, 1]
    encoded = _plane_mlp(params, "f", [x], GENAGG_WIDTHS, kept)  # 4 planes [E, F]
    # n^a times the mean of the encodings: one segment sum of the 4 planes side by side.
    summed = _sum(jnp.concatenate(encoded, axis=1), segment_ids, num_segments)  # [N, 4 F]
    scaled = summed * jnp.maximum(count, 1) ** (a - 1)
    features = flat.shape[1]
    planes = [scaled[:, m * features:(m + 1) * features] for m in range(GENAGG_WIDTHS[-1])]
    out = _plane_mlp(params, "f_inverse", planes, GENAGG_WIDTHS[::-1])[0]
    out = jnp.where(count > 0, out, 0).reshape((num_segments,) + messages.shape[1:])
    if not with_aux:
        return out
    if not inverse_loss:
        return out, jnp.zeros((), out.dtype)
    reconstructed = _plane_mlp(params, "f_inverse", encoded, GENAGG_WIDTHS[::-1], kept)[0]
    squared = jnp.where(kept, (jnp.abs(x) - jnp.abs(reconstructed)) ** 2, 0)
    return out, jnp.sum(squared) / jnp.maximum(jnp.sum(kept) * features, 1)


def _uniform_fan_in(fan_in):
    """PyTorch's default bias initializer for a Linear layer: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in ** -0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


@jax.custom_vjp
def unit_interval(raw):
    """``clip(raw, 0, 1)`` whose gradient passes wherever a descent step would move ``raw`` into
    [0, 1] or keep it there, and is 0 where it would push ``raw`` further out. Plain ``clip`` has a
    zero gradient outside [0, 1], so a parameter that starts at the bound 0 (GenAgg's a and b) and
    takes one step below it would never move again."""
    return jnp.clip(raw, 0, 1)


def _unit_interval_forward(raw):
    return jnp.clip(raw, 0, 1), raw


def _unit_interval_backward(raw, cotangent):
    # A descent step moves raw by -cotangent: below 0 only a negative cotangent moves it up, above 1
    # only a positive one moves it down.
    outward = ((raw < 0) & (cotangent > 0)) | ((raw > 1) & (cotangent < 0))
    return (jnp.where(outward, 0, cotangent),)


unit_interval.defvjp(_unit_interval_forward, _unit_interval_backward)


def _genagg_specs():
    specs = [ParamSpec("a", 0.0, shape=lambda heads, channels: (), reported=unit_interval),
             ParamSpec("b", 0.0, shape=lambda heads, channels: (), reported=unit_interval)]
    for prefix, widths in (("f", GENAGG_WIDTHS), ("f_inverse", GENAGG_WIDTHS[::-1])):
        for i in range(len(widths) - 1):
            shape_in, shape_out = widths[i], widths[i + 1]
            specs.append(ParamSpec(f"{prefix}{i}_kernel", jax.nn.initializers.he_normal(),
                                   shape=lambda heads, channels, n=shape_in, m=shape_out: (n, m), decay=True, report=False))
            specs.append(ParamSpec(f"{prefix}{i}_bias", _uniform_fan_in(shape_in),
                                   shape=lambda heads, channels, m=shape_out: (m,), decay=True, report=False))
            if i < len(widths) - 2:  # BatchNorm1d's affine parameters, without weight decay
                for part, start in (("scale", 1.0), ("shift", 0.0)):
                    specs.append(ParamSpec(f"{prefix}{i}_{part}", start,
                                           shape=lambda heads, channels, m=shape_out: (m,), report=False))
    return tuple(specs)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """A learnable parameter of an aggregator. By default one value per channel (the messages'
    channel shape), starting at the float ``init``. ``shape(heads, channels)`` gives another
    shape (a readout's ``[F]`` counts as one head of F channels), and ``init`` may then be a flax
    initializer. ``decay``: it gets the optimizer's weight decay (a weight matrix); ``report``:
    its value is reported with the alphas (scalars per channel, not matrices), through ``reported``
    where the operator transforms it."""

    name: str
    init: float | Callable = 1.0
    shape: Callable | None = None
    decay: bool = False
    report: bool = True
    reported: Callable | None = None  # the value the operator uses (e.g. clipped), when it is not the raw one

    def shape_for(self, channel_shape: tuple) -> tuple:
        """The parameter's shape for messages with channel shape ``[H, C]`` (or ``[F]``)."""
        if self.shape is None:
            return tuple(channel_shape)
        heads, channels = (1, *channel_shape) if len(channel_shape) == 1 else channel_shape
        return self.shape(heads, channels)

    def initializer(self) -> Callable:
        """``init(key, shape, dtype)``: a constant for a float ``init``, else ``init`` itself."""
        return jax.nn.initializers.constant(self.init) if isinstance(self.init, (int, float)) else self.init


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """A registered pooling operator.

    ``fn`` has the signature above. ``takes_exponent``: it takes the GA exponent ``alpha`` (fixed,
    or learned, built by ``gaflax.models.Exponent`` from an ``ExponentSpec``). ``params``: its
    other learnable parameters, one value per channel each (``gaflax.models.AggregatorParams``
    creates them; ``fn`` gets them as ``params={name: value}``). ``uses_weights``: it uses the
    attention (or normalisation) coefficients; operators without it ignore them. ``options``: the
    config options bound to ``fn`` by ``make``.
    """

    fn: Callable
    takes_exponent: bool = False
    uses_weights: bool = False
    options: tuple[str, ...] = ()
    params: tuple[ParamSpec, ...] = ()
    aux_loss: bool = False  # fn(..., with_aux=True) -> (out, a loss the layers add to the objective)


@dataclasses.dataclass(frozen=True)
class Bound:
    """What ``make`` returns: the operator with its options bound, and the specs of its learnable
    parameters; called with the signature above (plus ``params`` when it has some)."""

    fn: Callable
    params: tuple[ParamSpec, ...] = ()
    aux_loss: bool = False

    def __call__(self, messages, segment_ids, num_segments, weights=None, alpha=None, params=None, with_aux=False):
        """``params``: {name: value}; None gives every parameter its initial value
        (``initial_params`` with key 0). ``with_aux``: also return the operator's auxiliary loss
        (0 for operators without one)."""
        if self.params and params is None:
            params = self.initial_params(jax.random.key(0), messages.shape[1:])
        extra = {"params": params} if self.params else {}
        if self.aux_loss:
            out = self.fn(messages, segment_ids, num_segments, weights=weights, alpha=alpha, with_aux=with_aux, **extra)
            return out
        if with_aux:
            return self.fn(messages, segment_ids, num_segments, weights=weights, alpha=alpha, **extra), 0.0
        return self.fn(messages, segment_ids, num_segments, weights=weights, alpha=alpha, **extra)

    def initial_params(self, key, channel_shape: tuple) -> dict:
        """The parameters' initial values for messages with channel shape ``[H, C]`` (or ``[F]``),
        as ``gaflax.models.AggregatorParams`` creates them."""
        return {spec.name: spec.initializer()(jax.random.fold_in(key, i), spec.shape_for(channel_shape), jnp.float32)
                for i, spec in enumerate(self.params)}


@dataclasses.dataclass(frozen=True)
class ExponentSpec:
    """How a layer gets its GA exponent: fixed at ``init``, or learned per ``scope`` (``layer``,
    ``head`` or ``channel``) as ``alpha = tanh(lr_mult * theta)`` starting from ``init``."""

    init: float = 0.5
    learn: bool = False
    scope: str = "layer"
    lr_mult: float = 1.0


AGGREGATORS: Registry[Aggregator] = Registry("pooling operator", {
    "weighted_sum": Aggregator(weighted_sum, uses_weights=True),
    "sum": Aggregator(weighted_sum, uses_weights=True),  # the same operator, under its readout name
    "mean": Aggregator(mean),
    "max": Aggregator(maximum),
    "min": Aggregator(minimum),
    "ga": Aggregator(ga, takes_exponent=True, uses_weights=True, options=("positive",)),
    "log_ga": Aggregator(log_ga, takes_exponent=True, uses_weights=True),
    "softmax": Aggregator(softmax, takes_exponent=True),
    "powermean": Aggregator(powermean, params=(ParamSpec("p", 1.0),)),
    "softmax_learned": Aggregator(softmax_learned, params=(ParamSpec("t", 1.0),)),
    "var": Aggregator(var),
    "std": Aggregator(std),
    "pna": Aggregator(pna, options=("delta",), params=(
        ParamSpec("mix", jax.nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                  shape=lambda heads, channels: (heads, len(PNA_AGGREGATORS) * len(PNA_SCALERS) * channels, channels),
                  decay=True, report=False),
        ParamSpec("mix_bias", 0.0, shape=lambda heads, channels: (heads, channels), decay=True, report=False))),
    "genagg": Aggregator(genagg, params=_genagg_specs(), aux_loss=True, options=("inverse_loss",)),
    "extended_ga": Aggregator(extended_ga, takes_exponent=True, uses_weights=True, params=(
        ParamSpec("b", 0.0, reported=unit_interval), ParamSpec("gate", 0.5, reported=unit_interval),
        ParamSpec("gamma", 0.0), ParamSpec("delta", 0.0))),
    "laf": Aggregator(laf, params=(
        ParamSpec("laf", jax.nn.initializers.uniform(1.0), shape=lambda heads, channels: (12, heads, channels, LAF_UNITS),
                  report=False),
        ParamSpec("mix", jax.nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                  shape=lambda heads, channels: (heads, LAF_UNITS * channels, channels), decay=True, report=False),
        ParamSpec("mix_bias", 0.0, shape=lambda heads, channels: (heads, channels), decay=True, report=False))),
})


def make(name: str, *, alpha: float = 0.5, learn: bool = False, scope: str = "layer", lr_mult: float = 1.0,
         key: str = "pool", **options) -> tuple[Bound, ExponentSpec | None]:
    """The function a layer calls for operator ``name`` (its ``options`` bound, e.g. ``positive``),
    and its ``ExponentSpec`` (None when the operator takes no exponent). ``key`` names the config
    section in errors. Options the operator does not take are ignored, so that one config schema
    serves every operator."""
    entry = AGGREGATORS.lookup(name, f"{key}.name")
    if "positive" in entry.options and options.get("positive") not in POSITIVE:
        raise ValueError(f"{key}.positive={options.get('positive')!r} must be one of {sorted(POSITIVE)}")
    bound = {k: options[k] for k in entry.options if k in options}
    fn = functools.partial(entry.fn, **bound) if bound else entry.fn
    exponent = ExponentSpec(init=alpha, learn=learn, scope=scope, lr_mult=lr_mult) if entry.takes_exponent else None
    return Bound(fn, entry.params, entry.aux_loss), exponent


def from_config(pool: PoolConfig, key: str, data_stats: dict | None = None) -> tuple[Bound, ExponentSpec | None]:
    """``make`` for a ``pool`` or ``readout`` config section (``key`` names it in errors).
    ``data_stats``: statistics of the training data that some operators take as options (PNA's
    ``delta``; see ``gaflax.tasks.degree_stats``)."""
    return make(pool.name, alpha=pool.alpha, learn=pool.learn, scope=pool.scope, lr_mult=pool.lr_mult,
                positive=pool.positive, inverse_loss=pool.inverse_loss, key=key, **(data_stats or {}))
