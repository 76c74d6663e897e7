"""Pooling operators: one registry for neighbourhood aggregation and for graph readouts.

Every operator has the signature

    fn(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus") -> pooled

with ``messages`` ``[E, H, C]`` (or ``[E, C]``), ``segment_ids`` ``[E]`` (the receivers, or the graph
of each node for a readout), ``weights`` ``[E, H]`` / ``[E]`` attention coefficients that sum to 1
per segment (or None: uniform), ``alpha`` the GA exponent broadcasting against ``[H, C]``, and
returns ``[num_segments, H, C]``. Empty segments give 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gaflax.ga import p_from_alpha, segment_ga, segment_log_ga

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


def weighted_sum(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus"):
    """Standard GAT: sum of attention-weighted messages (the weighted arithmetic mean)."""
    if weights is not None:
        messages = messages * _expand(weights, messages)
    return _sum(messages, segment_ids, num_segments)


def mean(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus"):
    """Unweighted mean of the messages (attention ignored)."""
    count = _sum(jnp.ones(messages.shape[:1], messages.dtype), segment_ids, num_segments)
    return _sum(messages, segment_ids, num_segments) / _expand(jnp.maximum(count, 1), messages)


def _extreme(reduce, messages, segment_ids, num_segments):
    out = reduce(messages, segment_ids, num_segments)
    return jnp.where(jnp.isfinite(out), out, 0)  # empty segments: 0, not -inf / inf


def maximum(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus"):
    return _extreme(jax.ops.segment_max, messages, segment_ids, num_segments)


def minimum(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus"):
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


def log_ga(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus"):
    """Log-domain GA of the raw messages: soft min / mean / max (1/p) log sum w exp(p m)."""
    return segment_log_ga(messages, segment_ids, num_segments, alpha=alpha, weights=weights)


def softmax(messages, segment_ids, num_segments, weights=None, alpha=None, positive="softplus"):
    """DeeperGCN's SoftMax aggregation: sum_j softmax_j(beta m_j) m_j, with beta = p(alpha) >= 0
    per channel (beta = 0 is the mean, beta -> inf the max)."""
    beta = jnp.maximum(p_from_alpha(alpha), 0)
    beta = jnp.where(jnp.isfinite(beta), beta, 1e4)
    beta = beta.reshape((1,) * (messages.ndim - beta.ndim) + beta.shape)
    logits = beta * messages
    logits = logits - jax.ops.segment_max(logits, segment_ids, num_segments)[segment_ids]
    e = jnp.exp(logits)
    return _sum(e * messages, segment_ids, num_segments) / jnp.maximum(_sum(e, segment_ids, num_segments), 1e-30)


AGGREGATORS = {
    "weighted_sum": weighted_sum,
    "sum": weighted_sum,
    "mean": mean,
    "max": maximum,
    "min": minimum,
    "ga": ga,
    "log_ga": log_ga,
    "softmax": softmax,
}
#: Operators that take the exponent ``alpha`` (fixed or learned).
USES_ALPHA = frozenset({"ga", "log_ga", "softmax"})


def get(name: str):
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown pooling operator {name!r}; choose one of {sorted(AGGREGATORS)}") from None
