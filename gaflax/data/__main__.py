"""Print a dataset's statistics: ``python -m gaflax.data NAME [--root DIR]``."""

from __future__ import annotations

import argparse

import numpy as np

from gaflax.data import DatasetError, GraphDataset, load


def statistics(ds) -> dict:
    graphs = ds.graphs if isinstance(ds, GraphDataset) else [ds.graph]
    n_nodes = np.array([int(g.n_node[0]) for g in graphs])
    in_degree = np.concatenate([np.bincount(g.receivers, minlength=int(g.n_node[0])) for g in graphs])
    stats = {
        "name": ds.name,
        "graphs": len(graphs),
        "nodes": int(n_nodes.sum()),
        "directed edges": int(sum(int(g.n_edge[0]) for g in graphs)),
        "features": ds.num_features,
        "classes": ds.num_classes,
        "degree min / mean / max": f"{in_degree.min()} / {in_degree.mean():.2f} / {in_degree.max()}",
    }
    if isinstance(ds, GraphDataset):
        stats["nodes per graph min / mean / max"] = f"{n_nodes.min()} / {n_nodes.mean():.1f} / {n_nodes.max()}"
    if ds.task == "classification":
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        stats["class balance"] = " ".join(f"{c}:{n} ({n / counts.sum():.1%})" for c, n in enumerate(counts))
    if not isinstance(ds, GraphDataset):
        train, val, test = ds.split(0)
        stats["split (seed 0)"] = f"{train.sum()} / {val.sum()} / {test.sum()}"
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name")
    parser.add_argument("--root", default=None, help="data directory (default: $GAFLAX_DATA or ~/.cache/gaflax)")
    args = parser.parse_args(argv)
    try:
        ds = load(args.name, args.root)
    except DatasetError as err:
        parser.exit(2, f"error: {err}\n")
    for key, value in statistics(ds).items():
        print(f"{key:>32}: {value}")


if __name__ == "__main__":
    main()
