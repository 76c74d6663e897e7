"""Padded mini-batches of graphs with a small, fixed set of shapes.

A jitted step compiles once per distinct input shape. We batch graphs with ``jraph.batch_np`` and
pad each batch (``jraph.pad_with_graphs``) to the smallest of a few fixed budgets, so a training
epoch compiles at most ``len(budgets)`` times, however the graph sizes vary. Masks mark the padding,
and the model's outputs for the real graphs do not depend on it (to rounding in training).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from gaflax.compat import jraph


@dataclasses.dataclass(frozen=True)
class Budget:
    """Padded sizes of one batch: nodes, edges and graphs (each includes room for padding)."""

    n_node: int
    n_edge: int
    n_graph: int


@dataclasses.dataclass
class Batch:
    graph: jraph.GraphsTuple  # padded; the last graph(s) are padding
    labels: np.ndarray  # [n_graph] (0 for padding graphs)
    graph_mask: np.ndarray  # [n_graph] bool, True for real graphs
    node_mask: np.ndarray  # [n_node] bool, True for real nodes


def _round_up(n, multiple=32):
    return int(math.ceil(n / multiple) * multiple)


#: Quantiles of random batches' node and edge counts that set the budgets below the largest.
BUDGET_QUANTILES = (0.5, 0.9, 0.999)


def budgets_for(dataset, batch_size: int, quantiles=BUDGET_QUANTILES) -> list[Budget]:
    """Padded sizes for batches of ``batch_size`` graphs, smallest first.

    The largest fits any batch, whatever the order: the ``batch_size`` biggest graphs (+1 padding
    node and graph). The others are the ``quantiles`` of the node and of the edge counts of random
    batches (``_random_batch_sizes``: a fixed sample over the whole dataset, so every fold, seed and
    process gets the same budgets). A batch takes the smallest budget that fits it, so most pad by
    a few per cent, and an epoch compiles at most ``len(quantiles) + 1`` shapes. (Budgets halving
    from the largest, used before, padded typical ENZYMES batches to twice their size; README,
    "Datasets".)
    """
    n_node = np.asarray([int(g.n_node[0]) for g in dataset.graphs])
    n_edge = np.asarray([int(g.n_edge[0]) for g in dataset.graphs])
    top = Budget(_round_up(int(np.sort(n_node)[::-1][:batch_size].sum()) + 1),
                 _round_up(max(int(np.sort(n_edge)[::-1][:batch_size].sum()), 1)), batch_size + 1)
    nodes, edges = _random_batch_sizes(n_node, n_edge, batch_size)
    out = {top}
    for q in quantiles:
        out.add(Budget(min(_round_up(np.quantile(nodes, q) + 1), top.n_node),
                       min(_round_up(max(np.quantile(edges, q), 1)), top.n_edge), batch_size + 1))
    return sorted(out, key=lambda b: (b.n_node, b.n_edge))


def _random_batch_sizes(n_node, n_edge, batch_size: int, batches: int = 2000):
    """Total nodes and edges of about ``batches`` full batches of ``batch_size`` graphs drawn by
    shuffling the dataset with a fixed seed (the partial last batch of each shuffle left out)."""
    per_shuffle = max(len(n_node) // batch_size, 1)
    rng = np.random.default_rng(0)
    nodes, edges = [], []
    for _ in range(-(-batches // per_shuffle)):
        order = rng.permutation(len(n_node))[: per_shuffle * batch_size].reshape(per_shuffle, -1)
        nodes.append(n_node[order].sum(1))
        edges.append(n_edge[order].sum(1))
    return np.concatenate(nodes), np.concatenate(edges)


def _fitting_budget(budgets: list[Budget], sizes) -> Budget | None:
    """The smallest budget that fits every ``(nodes, edges, graphs)`` of ``sizes``, each with room
    for one padding graph (and its padding node); None if none does."""
    return next((b for b in budgets if all(b.n_node >= n + 1 and b.n_edge >= e and b.n_graph >= k + 1
                                           for n, e, k in sizes)), None)


def _sizes(graphs) -> tuple[int, int, int]:
    return sum(int(np.sum(g.n_node)) for g in graphs), sum(int(np.sum(g.n_edge)) for g in graphs), len(graphs)


def pad_batch(graphs, labels, budgets: list[Budget]) -> Batch:
    """Batch ``graphs`` and pad to the smallest budget that fits."""
    nodes, edges, count = _sizes(graphs)
    budget = _fitting_budget(budgets, [(nodes, edges, count)])
    if budget is None:
        raise ValueError(f"a batch of {count} graphs ({nodes} nodes, {edges} edges) fits no budget {budgets}")
    return _pad_to(graphs, labels, budget, graphs[0])


def _pad_to(graphs, labels, budget: Budget, template) -> Batch:
    """``graphs`` (possibly none: then ``template``, a graph with the features' shapes, stands in
    for an all-padding batch) padded to exactly ``budget``."""
    batch = jraph.batch_np(graphs if graphs else [_empty_like(template)])
    padded = jraph.pad_with_graphs(batch, budget.n_node, budget.n_edge, budget.n_graph)
    graph_mask = np.arange(budget.n_graph) < len(graphs)
    padded_labels = np.zeros((budget.n_graph,) + np.shape(labels)[1:], np.asarray(labels).dtype)
    padded_labels[: len(graphs)] = labels
    # pad_with_graphs appends the padding nodes after the real ones; numpy, not jraph's mask, which
    # runs jax ops and waits for the device's queued steps before the next batch can be built
    node_mask = np.arange(budget.n_node) < int(np.sum(batch.n_node))
    return Batch(padded, padded_labels, graph_mask, node_mask)


def _empty_like(graph):
    """A graph with no nodes and no edges and ``graph``'s feature shapes."""
    empty = lambda a: None if a is None else np.zeros((0,) + np.shape(a)[1:], np.asarray(a).dtype)
    return graph._replace(nodes=empty(graph.nodes), edges=empty(graph.edges), senders=np.zeros(0, np.int32),
                          receivers=np.zeros(0, np.int32), n_node=np.zeros(1, np.int32), n_edge=np.zeros(1, np.int32))


def pad_shards(graphs, labels, budgets: list[Budget], shards: int) -> Batch:
    """Data parallelism: ``graphs`` split into ``shards`` consecutive groups (sizes differ by at
    most one; a group may be empty), each padded to the smallest budget that fits every group,
    and stacked on a leading ``[shards]`` axis (every field of the ``Batch``)."""
    groups = np.array_split(np.arange(len(graphs)), shards)
    sizes = [_sizes([graphs[i] for i in g]) for g in groups]
    budget = _fitting_budget(budgets, sizes)
    if budget is None:
        raise ValueError(f"a group of graphs (nodes, edges, graphs: {max(sizes)}) fits no budget {budgets}")
    labels = np.asarray(labels)
    padded = [_pad_to([graphs[i] for i in g], labels[g], budget, graphs[0]) for g in groups]
    return Batch(_stack_graphs([b.graph for b in padded]), np.stack([b.labels for b in padded]),
                 np.stack([b.graph_mask for b in padded]), np.stack([b.node_mask for b in padded]))


def _stack_graphs(graphs):
    """``jraph.GraphsTuple``s of one shape -> one with a leading axis on every field (None stays None)."""
    stacked = {f: None if getattr(graphs[0], f) is None else np.stack([getattr(g, f) for g in graphs])
               for f in graphs[0]._fields}
    return graphs[0]._replace(**stacked)


def iterate_batches(dataset, indices, batch_size: int, budgets: list[Budget], *, shuffle: bool = False,
                    seed: int = 0, epoch: int = 0, shards: int = 1):
    """Yield padded ``Batch``es over ``indices``; the shuffling order follows from (seed, epoch).
    ``shards > 1``: each batch of ``batch_size`` graphs is split over that many devices
    (``pad_shards``; ``budgets`` then fit ``ceil(batch_size / shards)`` graphs)."""
    indices = np.asarray(indices)
    if shuffle:
        indices = np.random.default_rng([seed, epoch]).permutation(indices)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        graphs = [dataset[i] for i in chunk]
        if shards > 1:
            yield pad_shards(graphs, dataset.labels[chunk], budgets, shards)
        else:
            yield pad_batch(graphs, dataset.labels[chunk], budgets)
