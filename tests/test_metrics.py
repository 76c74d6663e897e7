"""GA score, threshold selection and trivial baselines, against scikit-learn and imbalanced-learn."""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaflax import metrics

sk = pytest.importorskip("sklearn.metrics")
imblearn_metrics = pytest.importorskip("imblearn.metrics")


def _binary_cases():
    rng = np.random.default_rng(0)
    cases = []
    for n, rate in [(200, 0.03), (200, 0.3), (50, 0.5), (7, 0.5)]:
        y_true = (rng.random(n) < rate).astype(int)
        y_pred = np.where(rng.random(n) < 0.8, y_true, 1 - y_true)
        cases.append((y_true, y_pred))
    # Corner cases: all predictions zero, all one, no positives in y_true, nothing positive at all.
    y = np.array([0, 1, 0, 1, 1, 0])
    cases += [(y, np.zeros(6, int)), (y, np.ones(6, int)), (np.zeros(6, int), y), (np.zeros(6, int), np.zeros(6, int))]
    return cases


BINARY = _binary_cases()


@pytest.mark.parametrize("zero_division", [0.0, 1.0])
@pytest.mark.parametrize("case", range(len(BINARY)))
def test_precision_recall_special_points_match_sklearn(case, zero_division):
    y_true, y_pred = BINARY[case]
    prec = sk.precision_score(y_true, y_pred, zero_division=zero_division)
    rec = sk.recall_score(y_true, y_pred, zero_division=zero_division)

    def score(**kw):
        return float(metrics.ga_score(y_true, y_pred, zero_division=zero_division, **kw))

    np.testing.assert_allclose(score(p=-1.0), sk.f1_score(y_true, y_pred, zero_division=zero_division), atol=1e-6)
    for beta in (0.5, 2.0):
        np.testing.assert_allclose(score(p=-1.0, weights=metrics.fbeta_weights(beta)),
                                   sk.fbeta_score(y_true, y_pred, beta=beta, zero_division=zero_division), atol=1e-6)
    np.testing.assert_allclose(score(p=0.0), np.sqrt(prec * rec), atol=1e-6)
    np.testing.assert_allclose(score(alpha=-1.0), min(prec, rec), atol=1e-6)
    np.testing.assert_allclose(score(p=1.0), (prec + rec) / 2, atol=1e-6)
    assert np.isfinite(score(alpha=0.3))


def test_p0_is_the_fowlkes_mallows_index_over_sample_pairs():
    # sklearn's fowlkes_mallows_score compares two clusterings through the pairs of samples:
    # "same cluster in truth" is the label and "same cluster in prediction" the prediction. Its
    # value is sqrt(precision * recall) over those pairs, i.e. ga_score with p = 0.
    rng = np.random.default_rng(1)
    labels_true, labels_pred = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
    i, j = np.triu_indices(40, k=1)
    same_true, same_pred = labels_true[i] == labels_true[j], labels_pred[i] == labels_pred[j]
    np.testing.assert_allclose(float(metrics.ga_score(same_true, same_pred, p=0.0)),
                               sk.fowlkes_mallows_score(labels_true, labels_pred), rtol=1e-5)


def _multiclass_cases():
    rng = np.random.default_rng(2)
    out = []
    for n, priors in [(300, [0.9, 0.07, 0.03]), (100, [0.5, 0.5]), (60, [0.2, 0.3, 0.1, 0.4])]:
        y_true = rng.choice(len(priors), size=n, p=priors)
        y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, len(priors), n))
        out.append((y_true, y_pred))
    out.append((np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2])))  # perfect
    out.append((np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])))  # minority never predicted
    return out


@pytest.mark.parametrize("case", range(5))
def test_class_recall_special_points(case):
    y_true, y_pred = _multiclass_cases()[case]
    recalls = sk.recall_score(y_true, y_pred, average=None, labels=np.unique(y_true), zero_division=0.0)

    def score(**kw):
        return float(metrics.ga_score(y_true, y_pred, over="class_recall", **kw))

    np.testing.assert_allclose(score(p=1.0), sk.balanced_accuracy_score(y_true, y_pred), atol=1e-6)
    np.testing.assert_allclose(score(p=0.0), imblearn_metrics.geometric_mean_score(y_true, y_pred), atol=1e-6)
    np.testing.assert_allclose(score(alpha=-1.0), recalls.min(), atol=1e-6)


def test_class_absent_from_y_true_follows_zero_division():
    # Class 3 is predicted but never true: imbalanced-learn counts its recall as 0 (with a warning).
    y_true, y_pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 3, 1, 1, 2, 0])
    labels = np.union1d(y_true, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = imblearn_metrics.geometric_mean_score(y_true, y_pred)
        balanced = sk.balanced_accuracy_score(y_true, y_pred)  # drops the absent class
    assert float(metrics.ga_score(y_true, y_pred, p=0.0, over="class_recall", labels=labels)) == pytest.approx(expected)
    assert float(metrics.ga_score(y_true, y_pred, p=1.0, over="class_recall")) == pytest.approx(balanced)
    with_one = metrics.ga_score(y_true, y_pred, p=1.0, over="class_recall", labels=labels, zero_division=1.0)
    assert float(with_one) == pytest.approx((balanced * 3 + 1) / 4)  # three real recalls and a 1


def test_soft_predictions_match_hard_ones_and_are_differentiable():
    y_true, y_pred = BINARY[1]
    hard = metrics.ga_score(y_true, y_pred, p=-1.0)
    soft = metrics.ga_score(y_true, y_pred.astype(np.float32), p=-1.0)
    assert float(hard) == pytest.approx(float(soft))
    probs = jnp.asarray(np.random.default_rng(3).random(len(y_true)), jnp.float32)
    for kw in (dict(p=-1.0), dict(p=0.0), dict(alpha=-1.0), dict(alpha=1.0)):
        grad = jax.grad(lambda q: metrics.ga_score(y_true, q, **kw))(probs)
        assert bool(jnp.all(jnp.isfinite(grad))), kw
    y_mc, _ = _multiclass_cases()[0]
    class_probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (len(y_mc), 3)))
    grad = jax.grad(lambda q: metrics.ga_score(y_mc, q, p=0.0, over="class_recall"))(class_probs)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_works_under_jit_with_static_labels():
    y_true, y_pred = _multiclass_cases()[0]
    fn = jax.jit(lambda t, q: metrics.ga_score(t, q, p=0.0, over="class_recall", labels=np.arange(3)))
    assert float(fn(y_true, y_pred)) == pytest.approx(imblearn_metrics.geometric_mean_score(y_true, y_pred), abs=1e-6)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="over="):
        metrics.ga_score([0, 1], [0, 1], p=1.0, over="accuracy")
    with pytest.raises(ValueError, match="equal length"):
        metrics.ga_score([0, 1, 1], [0, 1], p=1.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        metrics.ga_score([0, 1], [0, 1], p=1.0, weights=[1, 2, 3])
    with pytest.raises(ValueError, match="exactly one"):
        metrics.ga_score([0, 1], [0, 1])
    with pytest.raises(ValueError, match="beta"):
        metrics.fbeta_weights(0.0)


def test_select_threshold_matches_brute_force():
    rng = np.random.default_rng(4)
    y_true = (rng.random(300) < 0.1).astype(int)
    scores = np.round(np.clip(0.3 * y_true + rng.normal(0.3, 0.2, 300), 0, 1), 2)  # with ties
    for kw, sk_score in [(dict(p=-1.0), lambda yp: sk.f1_score(y_true, yp, zero_division=0.0)),
                         (dict(p=-1.0, weights=metrics.fbeta_weights(0.5)),
                          lambda yp: sk.fbeta_score(y_true, yp, beta=0.5, zero_division=0.0))]:
        threshold, best = metrics.select_threshold(y_true, scores, **kw)
        brute = max(sk_score((scores >= t).astype(int)) for t in np.unique(scores))
        assert best == pytest.approx(brute, abs=1e-6)
        assert sk_score((scores >= threshold).astype(int)) == pytest.approx(brute, abs=1e-6)


def test_trivial_baselines():
    y_train = np.array([0] * 90 + [1] * 10)
    out = metrics.trivial_baselines(y_train, np.zeros(5000, int), num_classes=2, seed=0)
    assert set(out) == {"uniform", "prior", "zero_rule"}
    assert np.all(out["zero_rule"][0] == 0)
    assert np.mean(out["prior"][0] == 1) == pytest.approx(0.1, abs=0.02)
    assert np.mean(out["uniform"][0] == 1) == pytest.approx(0.5, abs=0.03)
    for labels, probs in out.values():
        assert labels.shape == (5000,) and probs.shape == (5000, 2)
        np.testing.assert_allclose(probs.sum(-1), 1)


def test_binary_counts():
    assert metrics.binary_counts([1, 0, 1, 0], [1, 1, 0, 0]) == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}


@pytest.mark.parametrize("case", range(3))  # the fourth random case has P = R = 0
def test_ga_score_runs_from_min_to_max_of_precision_and_recall(case):
    """GA is non-decreasing in alpha, from min(P, R) at alpha = -1 to max(P, R) at alpha = 1."""
    y_true, y_pred = BINARY[case]
    precision = sk.precision_score(y_true, y_pred, zero_division=0)
    recall = sk.recall_score(y_true, y_pred, zero_division=0)
    assert precision != recall  # otherwise the limits could not tell min from max
    alphas = np.linspace(-1, 1, 21)
    values = np.array([float(metrics.ga_score(y_true, y_pred, alpha=a)) for a in alphas])
    assert np.all(np.diff(values) >= -1e-6)
    np.testing.assert_allclose(values[0], min(precision, recall), rtol=1e-6)
    np.testing.assert_allclose(values[-1], max(precision, recall), rtol=1e-6)


def test_every_case_is_finite():
    for (y_true, y_pred), alpha, zd in itertools.product(BINARY, (-1.0, -0.5, 0.0, 0.5, 1.0), (0.0, 1.0)):
        assert np.isfinite(float(metrics.ga_score(y_true, y_pred, alpha=alpha, zero_division=zd)))


def test_average_precision_and_pr_curve_match_sklearn():
    rng = np.random.default_rng(5)
    for n, rate in [(200, 0.05), (500, 0.3), (50, 0.5)]:
        y_true = (rng.random(n) < rate).astype(int)
        y_true[0] = 1
        scores = np.round(rng.random(n) + 0.4 * y_true, 2)  # with ties
        assert metrics.average_precision(y_true, scores) == pytest.approx(
            sk.average_precision_score(y_true, scores), abs=1e-12)
        precision, recall, thresholds = metrics.pr_curve(y_true, scores)
        sk_p, sk_r, sk_t = sk.precision_recall_curve(y_true, scores)
        # sklearn lists increasing thresholds and appends the point (recall 0, precision 1).
        np.testing.assert_allclose(thresholds, sk_t[::-1])
        np.testing.assert_allclose(precision, sk_p[:-1][::-1])
        np.testing.assert_allclose(recall, sk_r[:-1][::-1])
    assert np.isnan(metrics.average_precision([0, 0, 0], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.pr_curve([0, 1], [0.1, np.nan])
    summary = metrics.summary([0, 1, 1, 0], [0, 1, 0, 0], 2, scores=[0.1, 0.9, 0.4, 0.3])
    assert summary["average_precision"] == pytest.approx(1.0) and summary["roc_auc"] == pytest.approx(1.0)


def test_regression_summary_matches_sklearn():
    rng = np.random.default_rng(2)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    out = metrics.regression_summary(y, pred)
    assert out["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(y, pred)))
    assert out["mae"] == pytest.approx(sk.mean_absolute_error(y, pred))
    assert out["r2"] == pytest.approx(sk.r2_score(y, pred))
    assert metrics.regression_summary(np.ones(3), np.ones(3))["r2"] == 0.0  # constant targets: finite
    with pytest.raises(ValueError, match="must be equal and 1-D"):
        metrics.regression_summary(y, pred[:3])
