"""Classification metrics in numpy: accuracy, macro-F1, binary ROC-AUC (no scikit-learn needed)."""

from __future__ import annotations

import numpy as np


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
