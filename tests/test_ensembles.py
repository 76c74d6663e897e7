"""Tree ensembles for tabular tasks (gaflax.ensembles): XGBoost, LightGBM and bagging behind the
task interface, grown epoch by epoch, with early stopping choosing the number of trees."""

import numpy as np
import pytest

from gaflax.config import Config
from gaflax.tasks import check_fits, load_dataset, tabular_arrays

ENSEMBLES = {"xgboost": "xgboost", "lightgbm": "lightgbm", "bagging": "sklearn"}


def _config(name, **extra):
    raw = {"dataset": {"name": "keel_yeast4"}, "model": {"name": name, "rounds_per_epoch": 4},
           "trainer": {"max_epochs": 6, "patience": 6, "progress": False}}
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value}
    return Config.from_dict(raw)


def _reference(model, x, y, trees, seed, weights):
    """The library's own model with ``trees`` trees, trained at once (not grown epoch by epoch)."""
    if model == "xgboost":
        import xgboost

        booster = xgboost.train({"max_depth": 6, "eta": 0.1, "subsample": 1.0, "colsample_bytree": 1.0,
                                 "min_child_weight": 1.0, "reg_lambda": 1.0, "seed": seed, "nthread": 1,
                                 "tree_method": "hist", "objective": "binary:logistic"},
                                xgboost.DMatrix(x, label=y, weight=weights), num_boost_round=trees)
        return lambda z: booster.predict(xgboost.DMatrix(z))
    if model == "lightgbm":
        import lightgbm

        booster = lightgbm.train({"num_leaves": 31, "learning_rate": 0.1, "bagging_fraction": 1.0, "bagging_freq": 0,
                                  "feature_fraction": 1.0, "min_child_samples": 20, "lambda_l2": 0.0, "seed": seed,
                                  "deterministic": True, "force_row_wise": True, "num_threads": 1, "verbosity": -1,
                                  "objective": "binary"}, lightgbm.Dataset(x, label=y, weight=weights),
                                 num_boost_round=trees)
        return booster.predict
    from sklearn.ensemble import BaggingClassifier
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(class_weight="balanced" if weights is not None else None)
    bagging = BaggingClassifier(estimator=tree, n_estimators=trees, random_state=seed, n_jobs=1).fit(x, y)
    return lambda z: bagging.predict_proba(z)[:, 1]


@pytest.mark.parametrize("model", sorted(ENSEMBLES))
@pytest.mark.parametrize("loss", ["ce", "weighted_ce"])
def test_ensemble_grown_by_epochs_equals_the_library_trained_at_once(model, loss):
    """Three epochs of 4 trees, then predict with the first 8: the probabilities of the library's
    own model of 8 trees trained at once on the same (standardised) rows and weights, on every
    split; the reported loss is the log loss of those probabilities."""
    pytest.importorskip(ENSEMBLES[model], reason="needs the [experiments] extra")
    from gaflax.ensembles import EnsembleTask, class_weights

    config = _config(model, loss={"name": loss})
    ds = load_dataset(config)
    check_fits(config, ds)
    task = EnsembleTask(config, ds)
    losses = [float(task.train_epoch(epoch)[0]) for epoch in range(3)]
    assert task.params == 12 and losses[2] <= losses[0]
    (splits, alphas), = task.predict(8)
    assert alphas == {} and set(splits) == {"train", "val", "test"}
    masks = ds.split(config.seed)
    x, x_train, y_train = tabular_arrays(config, ds, masks[0])
    weights = class_weights(y_train, 2) if loss == "weighted_ce" else None
    if weights is not None:
        assert abs(weights.sum() - len(y_train)) < 1e-6
        assert np.allclose(np.bincount(y_train, weights=weights), len(y_train) / 2)  # classes weigh the same
    reference = _reference(model, x_train, y_train, 8, config.seed, weights)
    for (split, (labels, probs, split_loss)), mask in zip(splits.items(), masks):
        np.testing.assert_array_equal(labels, ds.labels[mask])
        np.testing.assert_allclose(probs[:, 1], reference(x[mask]), rtol=1e-5, atol=1e-6, err_msg=split)
        np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-6)
        assert np.isfinite(split_loss) and split_loss > 0


@pytest.mark.parametrize("model", sorted(ENSEMBLES))
def test_ensembles_train_end_to_end_and_keep_the_test_split_untouched(model, tmp_path):
    """Through gaflax.train: early stopping picks a number of trees, results and predictions are
    written; with trainer.evaluate_test=false the test rows are never predicted."""
    pytest.importorskip(ENSEMBLES[model], reason="needs the [experiments] extra")
    from gaflax.ensembles import EnsembleTask
    from gaflax.train import train_and_evaluate

    results = train_and_evaluate(_config(model, decision={"threshold": "tuned"}), tmp_path / "run")
    assert 0 <= results["best_epoch"] < 6 and 0 <= results["test/recall"] <= 1 and results["compile_seconds"] == 0
    assert (tmp_path / "run" / "predictions.npz").exists()
    config = _config(model, trainer={"evaluate_test": False})
    task = EnsembleTask(config, load_dataset(config))
    task.train_epoch(0)
    (splits, _), = task.predict(task.params)
    assert set(splits) == {"train", "val"}


@pytest.mark.parametrize("model", ["xgboost", "lightgbm"])
def test_boosters_run_one_thread(model):
    """The boosters get TREE_THREADS = 1 threads: on a shared CPU, two OpenMP threads spin-wait for
    cores that other jobs hold (9x slower for LightGBM under load here; scripts/bench_trees.py)."""
    pytest.importorskip(ENSEMBLES[model], reason="needs the [experiments] extra")
    from gaflax.ensembles import TREE_THREADS, EnsembleTask

    config = _config(model)
    task = EnsembleTask(config, load_dataset(config))
    assert TREE_THREADS == 1
    assert task.trees.params["nthread" if model == "xgboost" else "num_threads"] == TREE_THREADS


def test_bagging_predicts_each_tree_once_per_set_of_rows(monkeypatch):
    """Bagging's soft vote keeps running sums per set of rows: after growing, only the new trees
    predict, a repeated or smaller request calls no tree, and every answer equals the plain vote
    over the first n trees exactly."""
    pytest.importorskip("sklearn", reason="needs the [experiments] extra")
    from sklearn.tree import DecisionTreeClassifier

    from gaflax.ensembles import EnsembleTask

    calls = []
    original = DecisionTreeClassifier.predict_proba
    monkeypatch.setattr(DecisionTreeClassifier, "predict_proba", lambda self, x: calls.append(1) or original(self, x))
    config = _config("bagging")
    task = EnsembleTask(config, load_dataset(config))
    x = task.x_train[:50]

    def plain(n):
        total = np.zeros((len(x), 2))
        for tree, features in list(zip(task.trees.ensemble.estimators_, task.trees.ensemble.estimators_features_))[:n]:
            total[:, tree.classes_] += original(tree, x[:, features])
        return total / n

    task.trees.grow(4)
    calls.clear()
    np.testing.assert_array_equal(task.trees.probs(x, 4), plain(4))
    assert len(calls) == 4
    task.trees.grow(4)
    calls.clear()
    np.testing.assert_array_equal(task.trees.probs(x.copy(), 8), plain(8))  # same rows, another array
    assert len(calls) == 4  # only the new trees
    calls.clear()
    np.testing.assert_array_equal(task.trees.probs(x, 3), plain(3))
    np.testing.assert_array_equal(task.trees.probs(x, 8), plain(8))
    assert len(calls) == 0
    np.testing.assert_array_equal(task.trees.probs(x[:10], 8)[:10], plain(8)[:10])  # other rows: their own sums


def test_ensemble_settings_are_checked():
    ds = load_dataset(_config("xgboost"))
    with pytest.raises(ValueError, match="loss.name='focal' does not fit model.name='xgboost': tree ensembles"):
        check_fits(_config("xgboost", loss={"name": "focal"}), ds)
    with pytest.raises(ValueError, match="model.name='lightgbm' trains one run on the CPU"):
        check_fits(_config("lightgbm", trainer={"vmap": "seeds", "num_members": 2}), ds)
    with pytest.raises(ValueError, match=r"model.subsample=0.0 must lie in \(0, 1\]"):
        _config("bagging", model={"subsample": 0.0})
    with pytest.raises(ValueError, match="model.learning_rate=-0.1 must be positive and finite"):
        _config("xgboost", model={"learning_rate": -0.1})
    with pytest.raises(ValueError, match="model.name='xgboost' does not fit the node dataset"):
        config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 20,
                                                                                "task": "classification"}},
                                   "model": {"name": "xgboost"}})
        check_fits(config, load_dataset(config))
