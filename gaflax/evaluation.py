"""Evaluation as pure functions: labels and scores in, metric dicts out (no files, no devices).

A task's ``predict`` gives, per split, ``(labels, outputs, mean loss)`` with ``outputs`` the class
probabilities ``[n, C]`` (classification) or the predicted values ``[n]`` (regression).

- ``EarlyStopping``: the GAT paper's rule, for any monitored validation metric.
- ``epoch_row``: the per-epoch metrics (``metrics.jsonl``, W&B).
- ``decisions``: predicted labels per split (argmax, or a threshold tuned on validation).
- ``results``: the final metrics of a run, with the trivial baselines on the same test set.
- ``positive_scores``: the positive-class scores of a binary task, for PR curves.
- ``sign_test``: the paired comparison of two methods over the same seeds or folds.
"""

from __future__ import annotations

import math

import numpy as np

from gaflax import metrics
from gaflax.config import Config


class EarlyStopping:
    """The GAT paper's rule, for any monitored validation metric: stop when neither the metric
    nor the validation loss improved for ``patience`` epochs; the best epoch is the one with the
    best metric (ties broken by the lower loss). The paper monitors accuracy; ``loss`` monitors
    the loss alone, and ``roc_auc`` / ``average_precision`` suit imbalanced binary tasks."""

    def __init__(self, patience: int, monitor: str = "accuracy"):
        self.patience, self.monitor = patience, monitor
        self.epoch, self.score, self.val_loss, self.alphas = -1, -np.inf, np.inf, {}
        self.since_improvement, self.stopped, self.epochs = 0, False, 0

    def update(self, epoch, row: dict, alphas) -> bool:
        """Record one epoch's row; True when it is the new best (the caller keeps its parameters)."""
        if self.stopped:
            return False
        self.epochs = epoch + 1
        val_loss = row["val/loss"]
        score = -val_loss if self.monitor == "loss" else row[f"val/{self.monitor}"]
        score = -np.inf if np.isnan(score) else score  # e.g. ROC-AUC without positives
        improved_score, improved_loss = score > self.score, val_loss < self.val_loss
        new_best = improved_score or (score == self.score and improved_loss)
        if new_best:
            self.epoch, self.alphas = epoch, alphas
        if improved_score or improved_loss:
            self.score, self.val_loss = max(score, self.score), min(val_loss, self.val_loss)
            self.since_improvement = 0
        else:
            self.since_improvement += 1
            self.stopped = self.since_improvement >= self.patience
        return new_best


def epoch_row(train_loss, splits, alphas, seconds, monitor: str = "accuracy") -> dict:
    """One epoch's metrics: losses, accuracies (classification), the monitored metric, alphas."""
    val_labels, val_probs, val_loss = splits["val"]
    row = {"train/loss": train_loss, "val/loss": val_loss, "seconds": seconds, "alphas": alphas}
    if val_probs.ndim == 1:  # regression: the loss is the mean squared error
        return row
    row.update({"val/accuracy": metrics.accuracy(val_labels, val_probs.argmax(-1)),
                "train/accuracy": metrics.accuracy(splits["train"][0], splits["train"][1].argmax(-1))})
    if monitor in ("roc_auc", "average_precision"):
        row[f"val/{monitor}"] = getattr(metrics, monitor)(val_labels, val_probs[:, 1])
    return row


def non_finite(row: dict) -> list[str]:
    """The keys of an epoch row whose losses or alphas are not finite (NaN or +-inf)."""
    bad = [key for key in ("train/loss", "val/loss") if not np.isfinite(row[key])]
    bad += [f"alphas/{name}" for name, value in (row.get("alphas") or {}).items()
            if not np.all(np.isfinite(np.asarray(value, dtype=float)))]
    return bad


def decisions(config: Config, num_classes: int, splits) -> tuple[dict, float | None]:
    """Predicted labels per split, and the threshold when ``decision.threshold`` is tuned: the one
    that maximises the decision's GA score on the validation set, applied to every split."""
    d = config.decision
    if num_classes != 2 or d.threshold == "argmax":
        return {split: probs.argmax(-1) for split, (_, probs, _) in splits.items()}, None
    val_labels, val_probs, _ = splits["val"]
    threshold, _ = metrics.select_threshold(val_labels, val_probs[:, 1], p=d.p, weights=d.weights)
    return {split: (probs[:, 1] >= threshold).astype(np.int32) for split, (_, probs, _) in splits.items()}, threshold


def results(config: Config, task: str, num_classes: int, stopping: EarlyStopping, splits) -> dict:
    """The run's metrics per split (``test/accuracy``, ``val/f1``, ..., or ``test/rmse`` for
    regression), the best epoch and its alphas, and the trivial baselines on the test set.
    Without ``trainer.evaluate_test`` the test split is dropped first, so nothing reads it."""
    if not config.trainer.evaluate_test:
        splits = {k: v for k, v in splits.items() if k != "test"}
    out = {"best_epoch": stopping.epoch, "epochs": stopping.epochs, "alphas": stopping.alphas}
    if task == "regression":
        for split, (targets, predicted, _) in splits.items():
            out.update({f"{split}/{k}": v for k, v in metrics.regression_summary(targets, predicted).items()})
        if "test" in splits:  # the trivial baseline: predict the training mean
            mean = np.full(len(splits["test"][0]), np.mean(splits["train"][0]))
            out["baselines"] = {"train_mean": metrics.regression_summary(splits["test"][0], mean)}
        return out
    predicted, threshold = decisions(config, num_classes, splits)
    binary = num_classes == 2
    if threshold is not None:
        out["decision/threshold"] = threshold
    for split, (labels, probs, _) in splits.items():
        scores = probs[:, 1] if binary else None
        for name, value in metrics.summary(labels, predicted[split], num_classes, scores).items():
            out[f"{split}/{name}"] = value
        if binary:
            d = config.decision
            out[f"{split}/ga_score"] = float(metrics.ga_score(labels, predicted[split], p=d.p, weights=d.weights))
    if "test" not in splits:
        return out
    # The trivial baselines on the same test set: a model should beat all three.
    test_labels = splits["test"][0]
    out["baselines"] = {
        name: metrics.summary(test_labels, pred, num_classes, probs[:, 1] if binary else None)
        for name, (pred, probs) in metrics.trivial_baselines(splits["train"][0], test_labels, num_classes,
                                                             config.seed).items()}
    return out


def positive_scores(config: Config, num_classes: int, splits) -> dict[str, np.ndarray]:
    """``{val_labels, val_scores, test_labels, test_scores}`` (the positive class's probability)
    of a binary task, for PR curves; empty otherwise. The test split only with ``evaluate_test``."""
    if num_classes != 2 or splits["val"][1].ndim == 1:
        return {}
    keep = ("val", "test") if config.trainer.evaluate_test else ("val",)
    return {f"{split}_{kind}": array for split, (labels, probs, _) in splits.items() if split in keep
            for kind, array in (("labels", labels), ("scores", probs[:, 1].astype(np.float32)))}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the probability of a split at least this uneven between wins
    and losses (ties dropped) if either side were equally likely."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
