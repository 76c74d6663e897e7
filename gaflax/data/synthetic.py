"""A synthetic aggregator benchmark whose labels come from a *known* generalized average.

Node level: a random graph; node i's target is the GA, at the chosen ``alpha``, of its
neighbours' first feature. Graph level: many small random graphs; a graph's target is the GA of
all its nodes' first feature. The other features are distractors. A GNN whose aggregator (or
readout) is GA with a learnable alpha should recover ``alpha``: the cleanest test of the idea.

Targets are regression values (``task="regression"``), or their quantile bins
(``task="classification"``), with multiplicative noise ``y * exp(noise * N(0, 1))``. Everything is
drawn from ``seed``; generation takes well under a second at the default sizes.
"""

from __future__ import annotations

import math

import numpy as np

from gaflax.data.datasets import GraphDataset, NodeDataset, one_graph, stratified_split


def _power_mean(values, segment_ids, num_segments, alpha):
    """float64 numpy power mean per segment (the reference labels; no JAX needed)."""
    p = np.tan(np.pi * alpha / 2) if abs(alpha) < 1 else np.sign(alpha) * np.inf
    out = np.zeros(num_segments)
    if np.isinf(p):
        fill = -np.inf if p > 0 else np.inf
        out[:] = fill
        (np.maximum if p > 0 else np.minimum).at(out, segment_ids, values)
        return out
    count = np.bincount(segment_ids, minlength=num_segments).astype(float)
    logs = np.log(values)
    if p == 0:
        return np.exp(np.bincount(segment_ids, logs, num_segments) / np.maximum(count, 1))
    ref = np.full(num_segments, -np.inf)
    np.maximum.at(ref, segment_ids, p * logs)  # shift so that no term overflows
    ref[~np.isfinite(ref)] = 0
    s = np.bincount(segment_ids, np.exp(p * logs - ref[segment_ids]), num_segments) / np.maximum(count, 1)
    return np.exp((np.log(np.where(s > 0, s, 1)) + ref) / p)


def _targets(y, task, num_classes, noise, rng):
    y = y * np.exp(noise * rng.standard_normal(len(y)))
    if task == "regression":
        return y.astype(np.float32), 1
    if task != "classification":
        raise ValueError(f"synthetic: task must be 'regression' or 'classification', got {task!r}")
    edges = np.quantile(y, np.linspace(0, 1, num_classes + 1)[1:-1])
    return np.searchsorted(edges, y).astype(np.int32), num_classes


def make_synthetic(level="node", alpha=0.0, *, num_nodes=1000, avg_degree=6, num_graphs=500,
                   nodes_per_graph=(8, 24), num_features=8, noise=0.0, task="regression",
                   num_classes=2, seed=0):
    """Generate the benchmark. ``level`` is ``"node"`` or ``"graph"``; ``alpha`` in [-1, 1]."""
    if level not in ("node", "graph"):
        raise ValueError(f"synthetic: level must be 'node' or 'graph', got {level!r}")
    if not -1 <= alpha <= 1:
        raise ValueError(f"synthetic: alpha must lie in [-1, 1], got {alpha!r}")
    lo_hi = tuple(nodes_per_graph) if isinstance(nodes_per_graph, (list, tuple)) else ()
    sizes = {  # option: (value, smallest that works)
        "num_nodes": (num_nodes, 2),  # every node needs a neighbour other than itself
        "avg_degree": (avg_degree, 1),
        "num_graphs": (num_graphs, 1),
        "num_features": (num_features, 1),
        "num_classes": (num_classes, 2),
    }
    for key, (value, smallest) in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < smallest:
            raise ValueError(f"synthetic: dataset.options.{key}={value!r} must be an int >= {smallest}")
    if len(lo_hi) != 2 or not all(isinstance(n, (int, np.integer)) for n in lo_hi) or not 2 <= lo_hi[0] <= lo_hi[1]:
        raise ValueError(f"synthetic: dataset.options.nodes_per_graph={nodes_per_graph!r} must be [lo, hi] "
                         "with 2 <= lo <= hi")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"synthetic: dataset.options.noise={noise!r} must be a finite number >= 0")
    params = dict(level=level, alpha=alpha, num_nodes=num_nodes, avg_degree=avg_degree, num_graphs=num_graphs,
                  nodes_per_graph=list(nodes_per_graph), num_features=num_features, noise=noise, task=task,
                  num_classes=num_classes, seed=seed)
    rng = np.random.default_rng(seed)
    name = f"synthetic_{level}"

    if level == "node":
        x = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (num_nodes, num_features)))
        # Each node draws avg_degree / 2 partners; edges are made symmetric and deduplicated.
        k = max(1, avg_degree // 2)
        src = np.repeat(np.arange(num_nodes), k)
        dst = (src + rng.integers(1, num_nodes, len(src))) % num_nodes
        key = np.unique(np.concatenate([dst * num_nodes + src, src * num_nodes + dst]))
        senders, receivers = key % num_nodes, key // num_nodes
        y = _power_mean(x[senders, 0], receivers, num_nodes, alpha)
        labels, n_cls = _targets(y, task, num_classes, noise, rng)
        split_labels = labels if task == "classification" else np.zeros(num_nodes, np.int32)
        return NodeDataset(
            name=name, graph=one_graph(x, senders, receivers), labels=labels, num_classes=n_cls,
            fingerprint={"generator": params}, task=task,
            split_fn=lambda s: stratified_split(split_labels, (0.6, 0.2, 0.2), s),
        )

    lo, hi = nodes_per_graph
    graphs, y = [], np.empty(num_graphs)
    for g in range(num_graphs):
        n = int(rng.integers(lo, hi + 1))
        x = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (n, num_features)))
        src = np.repeat(np.arange(n), 2)
        dst = (src + rng.integers(1, n, len(src))) % n
        key = np.unique(np.concatenate([dst * n + src, src * n + dst]))
        graphs.append(one_graph(x, key % n, key // n))
        y[g] = _power_mean(x[:, 0], np.zeros(n, np.int64), 1, alpha)[0]
    labels, n_cls = _targets(y, task, num_classes, noise, rng)
    return GraphDataset(name=name, graphs=graphs, labels=labels, num_classes=n_cls,
                        fingerprint={"generator": params}, task=task)
