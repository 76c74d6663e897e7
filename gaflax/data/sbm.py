"""A large synthetic node-classification graph: a stochastic block model (``dataset=sbm``).

``num_nodes`` nodes fall into ``num_classes`` equal blocks (the classes). Every node starts
``avg_degree / 2`` edges: with probability ``homophily`` to a uniformly drawn node of its own
block, else to a uniformly drawn node of any block. Edges are made symmetric (both directions
are listed, so a node's mean in-degree is about ``avg_degree``). Self-loops are dropped (models
add their own); a pair drawn twice stays twice (finding repeats would sort 10^7 keys, and at the
sizes this generator is for they are rare: about ``avg_degree * num_classes / num_nodes`` of the
edges). Node features are
class-dependent Gaussians: ``x = mu[class] + N(0, 1)``, with ``mu[c] ~ N(0, signal^2)`` per
feature, so neighbours' features are informative where the graph is homophilous. The split is
stratified: 10 % train, 10 % validation, 80 % test (drawn per seed).

It is built with vectorised NumPy in O(edges): 10^6 nodes and 10^7 directed edges take a few
seconds. Used for the big-graph measurements of the README (issue #20).
"""

from __future__ import annotations

import numpy as np

from gaflax.data.datasets import NodeDataset, one_graph, stratified_split


def make_sbm(*, num_nodes: int = 100_000, num_classes: int = 5, avg_degree: int = 10, homophily: float = 0.8,
             num_features: int = 32, signal: float = 0.3, seed: int = 0) -> NodeDataset:
    """The stochastic block model described in the module docstring."""
    sizes = {"num_nodes": (num_nodes, 2), "num_classes": (num_classes, 2), "avg_degree": (avg_degree, 2),
             "num_features": (num_features, 1)}
    for key, (value, smallest) in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < smallest:
            raise ValueError(f"sbm: dataset.options.{key}={value!r} must be an int >= {smallest}")
    if num_classes > num_nodes:
        raise ValueError(f"sbm: dataset.options.num_classes={num_classes} exceeds num_nodes={num_nodes}")
    for key, value, low, high in (("homophily", homophily, 0, 1), ("signal", signal, 0, float("inf"))):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high):
            raise ValueError(f"sbm: dataset.options.{key}={value!r} must be a number in [{low}, {high}]")
    params = dict(num_nodes=num_nodes, num_classes=num_classes, avg_degree=avg_degree, homophily=homophily,
                  num_features=num_features, signal=signal, seed=seed)
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_nodes) * num_classes // num_nodes).astype(np.int32)  # equal blocks, in order
    starts = np.searchsorted(labels, np.arange(num_classes))
    block_sizes = np.diff(np.append(starts, num_nodes))
    src = np.repeat(np.arange(num_nodes, dtype=np.int32), avg_degree // 2)
    same = rng.random(src.shape[0]) < homophily
    block = np.where(same, labels[src], rng.integers(0, num_classes, src.shape[0]))
    dst = (starts[block] + (rng.random(src.shape[0]) * block_sizes[block]).astype(np.int64)).astype(np.int32)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    senders, receivers = np.concatenate([src, dst]), np.concatenate([dst, src])
    mu = rng.normal(0, signal, (num_classes, num_features)).astype(np.float32)
    x = mu[labels] + rng.standard_normal((num_nodes, num_features), dtype=np.float32)
    return NodeDataset(name="sbm", graph=one_graph(x, senders, receivers), labels=labels, num_classes=num_classes,
                       fingerprint={"generator": params},
                       split_fn=lambda s: stratified_split(labels, (0.1, 0.1, 0.8), s))
