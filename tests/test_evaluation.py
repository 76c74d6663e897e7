"""Evaluation: early stopping (patience, ties, the monitored metric) and the pure metric functions."""

import numpy as np
import pytest

from gaflax import evaluation
from gaflax.config import Config


def _row(val_loss, accuracy=None, **extra):
    row = {"val/loss": val_loss, **extra}
    if accuracy is not None:
        row["val/accuracy"] = accuracy
    return row


def _run(stopping, rows):
    """Feed the rows; return (epochs at which a new best was reported, epoch stopped at or None)."""
    bests, stopped_at = [], None
    for epoch, row in enumerate(rows):
        if stopping.update(epoch, row, {"epoch": epoch}):
            bests.append(epoch)
        if stopping.stopped and stopped_at is None:
            stopped_at = epoch
    return bests, stopped_at


def test_patience_counts_epochs_where_neither_metric_nor_loss_improved():
    stopping = evaluation.EarlyStopping(patience=3)
    rows = [_row(1.0, 0.5), _row(0.9, 0.6), _row(0.95, 0.55), _row(0.91, 0.6), _row(0.92, 0.59), _row(0.5, 0.9)]
    bests, stopped_at = _run(stopping, rows)
    assert bests == [0, 1] and stopped_at == 4  # epochs 2, 3, 4 improve neither; epoch 5 is never seen
    assert stopping.epoch == 1 and stopping.epochs == 5 and stopping.alphas == {"epoch": 1}
    assert stopping.update(5, rows[5], {}) is False  # once stopped, nothing changes


def test_a_better_loss_alone_resets_patience_but_is_not_a_new_best():
    stopping = evaluation.EarlyStopping(patience=2)
    rows = [_row(1.0, 0.6), _row(0.9, 0.5), _row(0.8, 0.5), _row(0.7, 0.55), _row(0.75, 0.55), _row(0.76, 0.5)]
    bests, stopped_at = _run(stopping, rows)
    assert bests == [0] and stopped_at == 5  # the loss improved at epochs 1-3, so patience ran out only at 5


def test_ties_in_the_metric_go_to_the_lower_loss():
    stopping = evaluation.EarlyStopping(patience=5)
    bests, _ = _run(stopping, [_row(1.0, 0.7), _row(0.8, 0.7), _row(0.9, 0.7)])
    assert bests == [0, 1] and stopping.epoch == 1


@pytest.mark.parametrize("monitor, key", [("loss", None), ("roc_auc", "val/roc_auc")])
def test_the_monitored_metric(monitor, key):
    stopping = evaluation.EarlyStopping(patience=5, monitor=monitor)
    if monitor == "loss":  # lower is better; accuracy is ignored
        bests, _ = _run(stopping, [_row(1.0, 0.9), _row(0.8, 0.1), _row(0.9, 0.95)])
        assert bests == [0, 1]
    else:  # NaN (no positives in validation) never counts as an improvement
        bests, _ = _run(stopping, [_row(1.0, 0.5, **{key: np.nan}), _row(1.1, 0.5, **{key: 0.7}),
                                   _row(1.2, 0.9, **{key: 0.6})])
        assert bests == [0, 1] and stopping.score == 0.7


def test_results_drop_the_test_split_when_tuning():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    splits = {split: (labels, probs, 0.5) for split in ("train", "val", "test")}
    stopping = evaluation.EarlyStopping(patience=1)
    config = Config.from_dict({"trainer": {"evaluate_test": False}})
    out = evaluation.results(config, "classification", 2, stopping, splits)
    assert "val/accuracy" in out and not any(k.startswith("test/") for k in out) and "baselines" not in out
    assert set(evaluation.positive_scores(config, 2, splits)) == {"val_labels", "val_scores"}
    full = evaluation.results(Config(), "classification", 2, stopping, splits)
    assert full["test/accuracy"] == 0.5 and set(full["baselines"]) == {"uniform", "prior", "zero_rule"}


def test_sign_test():
    from gaflax.evaluation import sign_test

    # exact binomial tails: 5/0 -> 2/32, 3/1 -> 2*(1+4)/16; ties are dropped before the test
    assert sign_test(5, 0) == pytest.approx(2 / 32) and sign_test(0, 0) == 1.0
    assert sign_test(3, 1) == pytest.approx(2 * 5 / 16) and sign_test(2, 2) == 1.0
    from scipy.stats import binomtest  # scipy comes with jax

    for wins in range(13):
        for losses in range(13 - wins):
            if wins + losses:
                assert sign_test(wins, losses) == pytest.approx(binomtest(wins, wins + losses).pvalue, rel=1e-12)
