"""Imbalanced-classification losses: closed forms, special cases of the GA loss, finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from gaflax import losses
from gaflax.config import LossConfig
from gaflax.ga import alpha_from_p


@pytest.fixture
def batch():
    logits = jax.random.normal(jax.random.key(1), (40, 3)) * 2
    labels = jnp.asarray(np.r_[np.zeros(30, int), np.ones(7, int), np.full(3, 2)])
    mask = jnp.asarray(np.random.default_rng(0).random(40) < 0.8, jnp.float32)
    return logits, labels, mask


def _ce(logits, labels):
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def test_cross_entropy_is_the_masked_mean(batch):
    logits, labels, mask = batch
    ce, m = _ce(logits, labels), np.asarray(mask, bool)
    assert float(losses.cross_entropy(logits, labels, mask)) == pytest.approx(ce[m].mean(), rel=1e-6)
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(ce.mean(), rel=1e-6)


def test_class_weighted_ce_uses_n_over_count(batch):
    logits, labels, mask = batch
    ce, m, y = _ce(logits, labels), np.asarray(mask, bool), np.asarray(labels)
    counts = np.bincount(y[m], minlength=3)
    w = (m.sum() / counts)[y] * m
    expected = np.sum(w * ce) / np.sum(w)
    assert float(losses.class_weighted_cross_entropy(logits, labels, mask)) == pytest.approx(expected, rel=1e-5)
    # ... which is the mean over classes of each class's mean loss.
    class_means = [ce[m & (y == c)].mean() for c in range(3)]
    assert expected == pytest.approx(np.mean(class_means), rel=1e-6)


def test_focal_loss_closed_form_and_gamma_zero(batch):
    logits, labels, mask = batch
    ce = _ce(logits, labels)
    pt = np.exp(-ce.astype(np.float64))
    m = np.asarray(mask, bool)
    for gamma in (0.5, 1.0, 2.0, 5.0):
        expected = np.mean(((1 - pt) ** gamma * ce)[m])
        assert float(losses.focal_loss(logits, labels, mask, gamma=gamma)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.focal_loss(logits, labels, mask, gamma=0.0)) == pytest.approx(ce[m].mean(), rel=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        losses.focal_loss(logits, labels, gamma=-1.0)


def test_ga_loss_special_points(batch):
    logits, labels, mask = batch
    ce, m = _ce(logits, labels), np.asarray(mask, bool)
    assert float(losses.ga_loss(logits, labels, mask, alpha=0.5)) == pytest.approx(ce[m].mean(), rel=1e-5)
    assert float(losses.ga_loss(logits, labels, mask, alpha=1.0)) == pytest.approx(ce[m].max(), rel=1e-6)
    assert float(losses.ga_loss(logits, labels, mask, p=2.0)) == pytest.approx(np.sqrt(np.mean(ce[m] ** 2)), rel=1e-5)
    # Per class with p = 1 is the class-balanced cross-entropy.
    assert float(losses.ga_loss(logits, labels, mask, p=1.0, per_class=True)) == pytest.approx(
        float(losses.class_weighted_cross_entropy(logits, labels, mask)), rel=1e-5)
    worst = max(ce[m & (np.asarray(labels) == c)].mean() for c in range(3))
    assert float(losses.ga_loss(logits, labels, mask, alpha=1.0, per_class=True)) == pytest.approx(worst, rel=1e-5)


def test_absent_class_carries_no_weight():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = jnp.array([0, 1])  # class 2 absent
    ce = _ce(logits, labels)
    assert float(losses.ga_loss(logits, labels, p=1.0, per_class=True)) == pytest.approx(ce.mean(), rel=1e-6)
    assert float(losses.class_weighted_cross_entropy(logits, labels)) == pytest.approx(ce.mean(), rel=1e-6)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_gradients_are_finite_at_saturation(name):
    # Confident right and confident wrong predictions: CE is exactly 0 for some rows in float32.
    logits = jnp.array([[100.0, 0.0], [0.0, 100.0], [-50.0, 50.0], [0.3, -0.2]])
    labels = jnp.array([0, 1, 0, 1])
    for alpha in (-1.0, 0.0, 0.5, 1.0):
        fn = losses.make_loss(LossConfig(name=name, alpha=alpha, per_class=alpha > 0))
        value, grad = jax.value_and_grad(fn)(logits, labels, jnp.ones(4))
        assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad))), (name, alpha)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_check_grads(name, x64, batch):
    logits, labels, mask = batch
    fn = losses.make_loss(LossConfig(name=name, gamma=2.0, alpha=float(alpha_from_p(3.0))))
    check_grads(lambda l: fn(l, labels, mask), (logits.astype(jnp.float64),), order=1, modes=["rev"])


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match=r"loss.name='hinge' is not a registered loss; choose one of \['ce',"):
        losses.make_loss(LossConfig(name="hinge"))


def test_mean_squared_error_is_the_masked_mean_of_squares():
    outputs = jnp.array([[1.0], [2.0], [4.0]])
    targets = jnp.array([0.0, 2.0, 1.0])
    assert float(losses.make_loss(LossConfig(name="mse"))(outputs, targets)) == pytest.approx((1 + 0 + 9) / 3)
    assert float(losses.mean_squared_error(outputs, targets, jnp.array([1, 0, 1]))) == pytest.approx(5.0)
