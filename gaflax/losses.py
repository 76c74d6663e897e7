"""Losses for imbalanced classification: GA-reduced, class-weighted and focal cross-entropy.

All take logits ``[n, C]``, integer labels ``[n]`` and an optional 0/1 ``mask [n]`` (the examples
that count; padded or held-out ones are 0), and return a scalar.

- ``cross_entropy``: the mean of ``-log p_y``.
- ``class_weighted_cross_entropy``: class c weighs ``W_c = N / count_c`` (counts over the masked
  examples), normalised by the total weight, so every present class contributes equally.
- ``focal_loss``: ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017); gamma = 0 is cross-entropy.
- ``ga_loss``: the per-example losses are reduced with a generalized average instead of the mean.
  p = 1 is the mean; p > 1 puts weight on hard examples; p -> inf (alpha = 1) is the worst case.
  ``per_class=True`` takes the GA of the class-mean losses instead (p = 1: class-balanced CE).
  Gradients are the primitive's, finite everywhere.
- ``mean_squared_error`` (``mse``): for regression targets (outputs ``[n, 1]``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gaflax.config import LossConfig
from gaflax.ga import ga
from gaflax.registry import Registry


def _mask(labels, mask):
    return jnp.ones(labels.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)


def _masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1)


def _class_totals(values, labels, mask, num_classes):
    """Per-class sums of ``values`` and counts over the masked examples."""
    onehot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
    return onehot.T @ values, jnp.sum(onehot, 0)


def cross_entropy(logits, labels, mask=None):
    return _masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), _mask(labels, mask))


def class_weighted_cross_entropy(logits, labels, mask=None):
    mask = _mask(labels, mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    _, counts = _class_totals(ce, labels, mask, logits.shape[-1])
    class_weight = jnp.where(counts > 0, jnp.sum(counts) / jnp.maximum(counts, 1), 0.0)  # W_c = N / count_c
    w = class_weight[labels] * mask
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)


def focal_loss(logits, labels, mask=None, *, gamma: float = 2.0):
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
    log_pt = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]
    # 1 - p_t = -expm1(log p_t) keeps its digits when p_t is near 1; (.)^gamma is written as
    # exp(gamma * log(.)) with the log clamped so that p_t -> 1 gives 0, with a finite gradient.
    one_minus_pt = -jnp.expm1(log_pt)
    modulation = jnp.exp(gamma * jnp.log(jnp.maximum(one_minus_pt, 1e-30))) if gamma else 1.0
    return _masked_mean(-modulation * log_pt, _mask(labels, mask))


def ga_loss(logits, labels, mask=None, *, p=None, alpha=None, per_class: bool = False):
    """GA of the per-example cross-entropies (or, with ``per_class``, of the class-mean ones)."""
    mask = _mask(labels, mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if not per_class:
        return ga(ce, p, alpha=alpha, weights=mask)
    sums, counts = _class_totals(ce, labels, mask, logits.shape[-1])
    present = (counts > 0).astype(ce.dtype)  # an absent class carries no weight
    return ga(sums / jnp.maximum(counts, 1), p, alpha=alpha, weights=present)


def mean_squared_error(outputs, targets, mask=None):
    """Regression: the masked mean of ``(outputs[:, 0] - targets)^2`` (``outputs`` is ``[n, 1]``)."""
    return _masked_mean(jnp.square(outputs[:, 0] - targets), _mask(targets, mask))


@dataclasses.dataclass(frozen=True)
class Loss:
    """A registered loss: ``bind(LossConfig) -> loss(outputs, labels, mask)`` with the config's
    options bound, and the task it fits (``classification`` or ``regression``)."""

    bind: Callable[[LossConfig], Callable]
    task: str = "classification"


LOSSES: Registry[Loss] = Registry("loss", {
    "ce": Loss(lambda c: cross_entropy),
    "weighted_ce": Loss(lambda c: class_weighted_cross_entropy),
    "focal": Loss(lambda c: lambda logits, labels, mask=None: focal_loss(logits, labels, mask, gamma=c.gamma)),
    "ga": Loss(lambda c: lambda logits, labels, mask=None: ga_loss(logits, labels, mask, alpha=c.alpha,
                                                                  per_class=c.per_class)),
    "mse": Loss(lambda c: mean_squared_error, task="regression"),
})


def make_loss(config: LossConfig):
    """``loss(outputs, labels, mask)`` for ``config.name`` (a name in ``LOSSES``), options bound."""
    return LOSSES.lookup(config.name, "loss.name").bind(config)
