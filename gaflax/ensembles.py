"""Tree ensembles for tabular tasks, behind the task interface: gradient boosting (XGBoost,
LightGBM) and bagged decision trees (scikit-learn, or imbalanced-learn's balanced bagging).

They are what a practitioner would try first on an imbalanced table, so the imbalance study
tunes them beside the MLP, with the same resampling, the same class weighting, the same decision
thresholds (tuned on validation for the study's objective) and the same journal records. The
libraries are optional (the ``experiments`` extra); they are imported when a model is built.

The epoch loop of ``gaflax.train`` drives them as it drives a network: an "epoch" adds
``model.rounds_per_epoch`` trees (boosting rounds, or bagged trees), ``params`` is the number of
trees so far, and ``predict(n)`` uses the first ``n`` of them. So early stopping on the validation
metric chooses the number of trees, and the kept "best parameters" are that number. Losses:
``ce`` (log loss) or ``weighted_ce`` (each training row weighs ``N / (C * count of its class)``,
summing to the row count; bagging takes them as ``class_weight="balanced"``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from gaflax.config import Config
from gaflax.tasks import SPLITS, Task, tabular_arrays

#: Threads per XGBoost / LightGBM model. One: the study's tables are small (hundreds to thousands
#: of rows), and on a shared CPU their OpenMP threads spin-wait for cores that other jobs hold.
#: ``scripts/bench_trees.py`` (a study run on keel_yeast4, 2-core machine): with other jobs on the
#: cores, 2 threads took 9.0x (LightGBM) and 1.6x (XGBoost) the time of 1; on idle cores 2 threads
#: took 0.83x. The study always shares the cores here (and pytest runs 4 workers on 2). Bagging
#: already runs one job.
TREE_THREADS = 1

#: The losses a tree ensemble can train with (``loss.name``).
ENSEMBLE_LOSSES = ("ce", "weighted_ce")


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-row weights ``N / (C * count_c)``: every class weighs the same in total."""
    counts = np.bincount(labels, minlength=num_classes)
    return (len(labels) / (num_classes * np.maximum(counts[labels], 1))).astype(np.float64)


def log_loss(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean (or weighted mean) of ``-log p_y``, with p clipped to [1e-12, 1]."""
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(np.average(-np.log(picked), weights=weights))


class _Trees:
    """One library's ensemble that grows by ``grow(k)`` and predicts with its first ``n`` trees."""

    def __init__(self, model, x, y, weights, num_classes, seed):
        self.model, self.num_classes, self.seed = model, num_classes, seed
        self.x, self.y, self.weights = x, y, weights


class _XGBoost(_Trees):
    def __init__(self, *args):
        super().__init__(*args)
        import xgboost

        m = self.model
        self.xgboost, self.booster = xgboost, None
        self.train = xgboost.DMatrix(self.x, label=self.y, weight=self.weights)
        self.params = {"max_depth": m.max_depth, "eta": m.learning_rate, "subsample": m.subsample,
                       "colsample_bytree": m.colsample, "min_child_weight": m.min_child_weight,
                       "reg_lambda": m.l2, "seed": self.seed, "nthread": TREE_THREADS, "tree_method": "hist",
                       **({"objective": "binary:logistic"} if self.num_classes == 2 else
                          {"objective": "multi:softprob", "num_class": self.num_classes})}

    def grow(self, rounds: int):
        self.booster = self.xgboost.train(self.params, self.train, num_boost_round=rounds, xgb_model=self.booster)

    def probs(self, x, trees: int) -> np.ndarray:
        out = self.booster.predict(self.xgboost.DMatrix(x), iteration_range=(0, trees))
        return np.stack([1 - out, out], 1) if self.num_classes == 2 else out


class _LightGBM(_Trees):
    def __init__(self, *args):
        super().__init__(*args)
        import lightgbm

        m = self.model
        self.lightgbm, self.booster = lightgbm, None
        self.train = lightgbm.Dataset(self.x, label=self.y, weight=self.weights, free_raw_data=False)
        self.params = {"num_leaves": m.num_leaves, "learning_rate": m.learning_rate, "bagging_fraction": m.subsample,
                       "bagging_freq": 1 if m.subsample < 1 else 0, "feature_fraction": m.colsample,
                       "min_child_samples": m.min_child_samples, "lambda_l2": m.l2, "seed": self.seed,
                       "deterministic": True, "force_row_wise": True, "num_threads": TREE_THREADS, "verbosity": -1,
                       **({"objective": "binary"} if self.num_classes == 2 else
                          {"objective": "multiclass", "num_class": self.num_classes})}

    def grow(self, rounds: int):
        self.booster = self.lightgbm.train(self.params, self.train, num_boost_round=rounds, init_model=self.booster,
                                           keep_training_booster=True)

    def probs(self, x, trees: int) -> np.ndarray:
        out = self.booster.predict(x, num_iteration=trees)
        return np.stack([1 - out, out], 1) if self.num_classes == 2 else out


class _Bagging(_Trees):
    def __init__(self, *args):
        super().__init__(*args)
        from sklearn.tree import DecisionTreeClassifier

        m = self.model
        tree = DecisionTreeClassifier(max_depth=m.max_depth or None, class_weight="balanced" if self.weights is not None else None)
        if m.balanced:  # each bag is drawn class-balanced (Hido & Kashima's roughly balanced bagging)
            from imblearn.ensemble import BalancedBaggingClassifier as Bagging
        else:
            from sklearn.ensemble import BaggingClassifier as Bagging
        self.ensemble = Bagging(estimator=tree, n_estimators=0, max_samples=m.subsample, max_features=m.colsample,
                                warm_start=True, random_state=self.seed, n_jobs=1)
        self.sums = {}  # rows' digest -> [sum of the first k trees' probabilities, k = 0, 1, ...]

    def grow(self, rounds: int):
        self.ensemble.set_params(n_estimators=self.ensemble.n_estimators + rounds)
        self.ensemble.fit(self.x, self.y)

    def probs(self, x, trees: int) -> np.ndarray:
        """Soft voting over the first ``trees`` trees, as ``predict_proba``. Warm starts only append
        trees, so each tree predicts each set of rows once: the running sums are kept per set of
        rows (by content), and an epoch costs its new trees only (before, every epoch predicted
        with every tree again, one Python call per tree)."""
        x = np.ascontiguousarray(x)
        key = (x.shape, x.dtype.str, hashlib.blake2b(x.tobytes(), digest_size=16).digest())
        sums = self.sums.setdefault(key, [np.zeros((len(x), self.num_classes))])
        members = list(zip(self.ensemble.estimators_, self.ensemble.estimators_features_))[:trees]
        for estimator, features in members[len(sums) - 1:]:
            total = sums[-1].copy()
            total[:, estimator.classes_] += estimator.predict_proba(x[:, features])
            sums.append(total)
        return sums[len(members)] / max(len(members), 1)


#: ``model.name`` -> its ensemble.
ENSEMBLES = {"xgboost": _XGBoost, "lightgbm": _LightGBM, "bagging": _Bagging}


class EnsembleTask(Task):
    """A tree ensemble on a tabular dataset, with ``gaflax.tasks``' interface (one member).

    The rows are prepared as for the MLP (``gaflax.tasks.tabular_arrays``: standardised with the
    training rows' statistics, training rows resampled by ``trainer.resample``), so the two differ
    only in the model. Without ``trainer.evaluate_test`` the test rows are never predicted."""

    def __init__(self, config: Config, ds):
        self.ds, self.config = ds, config
        masks = ds.split(config.seed)
        x, x_train, y_train = tabular_arrays(config, ds, masks[0])
        self.splits = [(split, mask) for split, mask in zip(SPLITS, masks)
                       if split != "test" or config.trainer.evaluate_test]
        self.x, self.x_train, self.y_train = x, x_train, y_train
        self.weighted = config.loss.name == "weighted_ce"
        self.train_weights = class_weights(y_train, ds.num_classes) if self.weighted else None
        try:
            self.trees = ENSEMBLES[config.model.name](config.model, x_train, y_train, self.train_weights,
                                                      ds.num_classes, config.seed)
        except ImportError as err:
            raise ImportError(f"model.name={config.model.name!r} needs its library: "
                              'pip install -c constraints.txt -e ".[experiments]"') from err
        self.params = 0  # trees so far

    def train_epoch(self, epoch) -> np.ndarray:
        self.trees.grow(self.config.model.rounds_per_epoch)
        self.params += self.config.model.rounds_per_epoch
        probs = self.trees.probs(self.x_train, self.params)
        return np.asarray([log_loss(self.y_train, probs, self.train_weights)])

    def predict(self, params) -> list:
        splits = {}
        for split, mask in self.splits:
            labels = self.ds.labels[mask]
            probs = self.trees.probs(self.x[mask], params)
            weights = class_weights(labels, self.ds.num_classes) if self.weighted else None
            splits[split] = (labels, probs, log_loss(labels, probs, weights))
        return [(splits, {})]


def check_ensemble(config: Config, ds) -> None:
    """The settings a tree ensemble cannot take: a clear error before anything trains."""
    name = config.model.name
    if config.loss.name not in ENSEMBLE_LOSSES:
        raise ValueError(f"loss.name={config.loss.name!r} does not fit model.name={name!r}: tree ensembles train "
                         f"with {' or '.join(ENSEMBLE_LOSSES)}")
    if config.trainer.vmap != "none" or config.trainer.devices != 1:
        raise ValueError(f"model.name={name!r} trains one run on the CPU: trainer.vmap=none and trainer.devices=1")


__all__ = ["ENSEMBLES", "ENSEMBLE_LOSSES", "EnsembleTask", "check_ensemble", "class_weights", "log_loss"]
