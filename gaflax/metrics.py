"""Classification metrics: accuracy, macro-F1, binary ROC-AUC, and the GA score for imbalanced,
error-asymmetric problems.

``ga_score`` is the generalized average (:func:`gaflax.ga`) of either (precision, recall) or the
per-class recalls. One operator holds the usual imbalanced-data metrics as special cases:

=====================  ===========================  =========================================
over                   exponent / weights           is
=====================  ===========================  =========================================
precision_recall       p = -1, equal weights        F1
precision_recall       p = -1, (1, beta^2)/(1+b^2)  F-beta
precision_recall       p = 0                        Fowlkes-Mallows index sqrt(P R)
precision_recall       p = -inf (alpha = -1)        min(P, R)
class_recall           p = 1                        balanced accuracy
class_recall           p = 0                        G-mean (imbalanced-learn)
class_recall           p = -inf (alpha = -1)        worst-class recall
=====================  ===========================  =========================================

The weights say which error matters more (a larger precision weight punishes false positives);
the exponent says how strictly the weaker of the two is punished (p -> -inf: only the weaker
counts). ``ga_score`` and ``select_threshold`` take numpy or jax arrays and work under ``jit``
(pass ``labels`` there); predictions may be soft (probabilities), which makes the score
differentiable.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gaflax.ga import ga

OVER = ("precision_recall", "class_recall")


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Mean over classes of F1; a class with no true and no predicted members counts as 0."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        denom = np.sum(y_pred == c) + np.sum(y_true == c)
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve for binary labels (Mann-Whitney U, ties counted half)."""
    y_true, scores = np.asarray(y_true).astype(bool), np.asarray(scores, np.float64)
    n_pos, n_neg = y_true.sum(), (~y_true).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_counts(y_true, y_pred) -> dict:
    """True / false positives and negatives (ints) of binary labels and binary predictions."""
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    return {"tp": int(np.sum(y_true & y_pred)), "fp": int(np.sum(~y_true & y_pred)),
            "fn": int(np.sum(y_true & ~y_pred)), "tn": int(np.sum(~y_true & ~y_pred))}


def _ratio(numerator, denominator, zero_division):
    """numerator / denominator, and ``zero_division`` where the denominator is 0 (never NaN)."""
    undefined = denominator == 0
    return jnp.where(undefined, zero_division, numerator / jnp.where(undefined, 1, denominator))


def precision_recall(y_true, y_pred, *, zero_division=0.0):
    """(precision, recall) of binary labels; ``y_pred`` holds 0/1 predictions or probabilities of
    the positive class (soft counts). Either one is ``zero_division`` where it is undefined:
    precision with no predicted positives, recall with no true positives in ``y_true``."""
    y_true = jnp.asarray(y_true).astype(jnp.float32)
    y_pred = jnp.asarray(y_pred).astype(jnp.float32)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"precision_recall: y_true and y_pred must be 1-D with equal length; "
                         f"got shapes {y_true.shape} and {y_pred.shape}")
    tp = jnp.sum(y_true * y_pred)
    return _ratio(tp, jnp.sum(y_pred), zero_division), _ratio(tp, jnp.sum(y_true), zero_division)


def class_recalls(y_true, y_pred, labels=None, *, zero_division=0.0):
    """Recall of each class in ``labels`` (default: the classes present in ``y_true``).

    ``y_pred`` holds predicted labels ``[n]`` or class probabilities ``[n, len(labels)]`` (soft
    counts). A class of ``labels`` absent from ``y_true`` has recall ``zero_division``.
    """
    y_true = jnp.asarray(y_true)
    if labels is None:
        labels = np.unique(np.asarray(y_true))
    labels = jnp.asarray(labels)
    truth = (y_true[:, None] == labels[None, :]).astype(jnp.float32)  # [n, C]
    y_pred = jnp.asarray(y_pred)
    if y_pred.ndim == 1:
        if y_pred.shape != y_true.shape:
            raise ValueError(f"class_recalls: y_pred has shape {y_pred.shape}, y_true {y_true.shape}")
        predicted = (y_pred[:, None] == labels[None, :]).astype(jnp.float32)
    elif y_pred.shape == truth.shape:
        predicted = y_pred.astype(jnp.float32)
    else:
        raise ValueError(f"class_recalls: y_pred must be labels [n] or probabilities [n, {len(labels)}]; "
                         f"got shape {y_pred.shape}")
    return _ratio(jnp.sum(truth * predicted, 0), jnp.sum(truth, 0), zero_division)


def ga_score(y_true, y_pred, *, p=None, alpha=None, weights=None, over="precision_recall", labels=None,
             zero_division=0.0):
    """The generalized average of (precision, recall) or of the per-class recalls.

    Give exactly one of ``p`` and ``alpha`` (see the module table for the special cases).
    ``weights`` are (w_precision, w_recall) for ``over="precision_recall"`` and one weight per
    class in ``labels`` for ``over="class_recall"``; they are normalised. Undefined precisions or
    recalls are ``zero_division`` (as in scikit-learn); a zero among the averaged values gives 0
    for p <= 0. The result is a jax scalar in [0, 1]; ``float()`` it for numpy code.
    """
    if over == "precision_recall":
        values = jnp.stack(precision_recall(y_true, y_pred, zero_division=zero_division))
    elif over == "class_recall":
        values = class_recalls(y_true, y_pred, labels, zero_division=zero_division)
    else:
        raise ValueError(f"ga_score: over={over!r} must be one of {OVER}")
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        if weights.shape != values.shape:
            raise ValueError(f"ga_score: weights must have shape {values.shape} for over={over!r}; "
                             f"got {weights.shape}")
    return ga(values, p, alpha=alpha, weights=weights)


def fbeta_weights(beta: float):
    """(w_precision, w_recall) that make ``ga_score(p=-1)`` the F-beta score; beta > 1 favours
    recall, beta < 1 precision."""
    if not beta > 0:
        raise ValueError(f"fbeta_weights: beta must be positive, got {beta}")
    b2 = beta * beta
    return (1 / (1 + b2), b2 / (1 + b2))


def pr_curve(y_true, scores, *, zero_division=0.0):
    """Precision and recall of "positive if score >= t" at every distinct score t, from the
    highest threshold down. Returns ``(precision, recall, thresholds)`` as float64 arrays; the
    first point predicts only the top-scored tie group positive, the last predicts everything
    positive. Recall is ``zero_division`` when ``y_true`` has no positives."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, np.float64)
    if y_true.shape != scores.shape or y_true.ndim != 1 or not len(y_true):
        raise ValueError(f"pr_curve: y_true and scores must be non-empty 1-D arrays of equal "
                         f"length; got shapes {y_true.shape} and {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("pr_curve: scores hold NaN or Inf")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # predicting the first k+1 positive
    tp = np.cumsum(t)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / t.sum() if t.sum() else np.full(len(tp), float(zero_division))
    return precision, recall, s[last_of_tie]


def average_precision(y_true, scores) -> float:
    """Area under the precision-recall curve as the step sum ``sum_n (R_n - R_{n-1}) P_n`` (as
    scikit-learn's ``average_precision_score``); NaN when ``y_true`` has no positives."""
    y_true = np.asarray(y_true).astype(bool)
    if not y_true.any():
        return float("nan")
    precision, recall, _ = pr_curve(y_true, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def select_threshold(y_true, scores, **score_kwargs):
    """The decision threshold that maximises ``ga_score(over="precision_recall", ...)``.

    Every distinct score is a candidate; predicting "positive if score >= threshold". Returns
    ``(threshold, best_score)`` as floats. Ties go to the highest threshold (fewest positives).
    """
    if score_kwargs.get("over", "precision_recall") != "precision_recall":
        raise ValueError("select_threshold: only over='precision_recall' depends on a threshold")
    score_kwargs.pop("over", None)
    precision, recall, thresholds = pr_curve(y_true, scores, zero_division=score_kwargs.pop("zero_division", 0.0))
    values = ga(jnp.asarray(np.stack([precision, recall], -1), jnp.float32), score_kwargs.pop("p", None),
                **score_kwargs)
    values = np.asarray(values)
    best = int(np.flatnonzero(values == values.max())[0])
    return float(thresholds[best]), float(values[best])


def trivial_baselines(y_train, y_test, num_classes: int, seed: int = 0) -> dict:
    """Predictions of the three trivial baselines on the test labels' length:

    - ``uniform``: a class drawn uniformly at random;
    - ``prior``: a class drawn from the training class frequencies;
    - ``zero_rule``: always the most common training class.

    Returns ``{name: (predicted labels, probabilities [n, num_classes])}``.
    """
    y_train = np.asarray(y_train)
    n = len(np.asarray(y_test))
    rng = np.random.default_rng(seed)
    prior = np.bincount(y_train, minlength=num_classes) / max(len(y_train), 1)
    uniform = np.full(num_classes, 1 / num_classes)
    majority = int(np.argmax(prior))
    return {
        "uniform": (rng.integers(num_classes, size=n), np.tile(uniform, (n, 1))),
        "prior": (rng.choice(num_classes, size=n, p=prior), np.tile(prior, (n, 1))),
        "zero_rule": (np.full(n, majority), np.tile(np.eye(num_classes)[majority], (n, 1))),
    }


def regression_summary(y_true, y_pred) -> dict:
    """MSE, RMSE, MAE, the coefficient of determination R^2 (0 for constant targets predicted
    exactly) and Pearson's r (0 when either side is constant)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"regression_summary: shapes {y_true.shape} and {y_pred.shape} must be equal and 1-D")
    if not len(y_true):
        return {}
    error = y_pred - y_true
    total = np.sum((y_true - y_true.mean()) ** 2)
    r2 = 1 - np.sum(error**2) / total if total > 0 else 0.0
    spread = np.std(y_true) * np.std(y_pred)
    pearson = np.mean((y_true - y_true.mean()) * (y_pred - y_pred.mean())) / spread if spread > 0 else 0.0
    return {"mse": float(np.mean(error**2)), "rmse": float(np.sqrt(np.mean(error**2))),
            "mae": float(np.mean(np.abs(error))), "r2": float(r2), "pearson_r": float(pearson)}


def summary(y_true, y_pred, num_classes: int, scores=None) -> dict:
    """The metrics a run reports: accuracy, macro-F1 and balanced accuracy; for binary tasks also
    precision, recall, F1, the false-positive and false-negative counts and (given positive-class
    ``scores``, when both classes occur) ROC-AUC and average precision."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, num_classes)}
    if len(y_true):
        out["balanced_accuracy"] = float(ga_score(y_true, y_pred, p=1.0, over="class_recall"))
    if num_classes == 2:
        precision, recall = precision_recall(y_true, y_pred)
        counts = binary_counts(y_true, y_pred)
        out.update(precision=float(precision), recall=float(recall),
                   f1=float(ga_score(y_true, y_pred, p=-1.0)), fp=counts["fp"], fn=counts["fn"])
        if scores is not None:
            auc, ap = roc_auc(y_true, scores), average_precision(y_true, scores)
            if np.isfinite(auc):
                out["roc_auc"], out["average_precision"] = auc, ap
    return out
