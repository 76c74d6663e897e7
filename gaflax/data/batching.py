"""Padded mini-batches of graphs with a small, fixed set of shapes.

A jitted step compiles once per distinct input shape. We batch graphs with ``jraph.batch_np`` and
pad each batch (``jraph.pad_with_graphs``) to the smallest of a few fixed budgets, so a training
epoch compiles at most ``len(budgets)`` times, however the graph sizes vary. Masks mark the padding.
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


def budgets_for(dataset, batch_size: int, levels: int = 3) -> list[Budget]:
    """A ladder of ``levels`` budgets, the largest fitting any batch of ``batch_size`` graphs.

    The largest is the sum over the ``batch_size`` biggest graphs (+1 padding node / graph), so
    it fits every batch whatever the order; each smaller rung halves nodes and edges.
    """
    n_node = np.sort([int(g.n_node[0]) for g in dataset.graphs])[::-1]
    n_edge = np.sort([int(g.n_edge[0]) for g in dataset.graphs])[::-1]
    top_nodes, top_edges = int(n_node[:batch_size].sum()) + 1, int(n_edge[:batch_size].sum())
    out = []
    for k in range(levels):
        out.append(Budget(_round_up(max(top_nodes / 2**k, 2)), _round_up(max(top_edges / 2**k, 1)), batch_size + 1))
    return sorted(set(out), key=lambda b: (b.n_node, b.n_edge))


def pad_batch(graphs, labels, budgets: list[Budget]) -> Batch:
    """Batch ``graphs`` and pad to the smallest budget that fits."""
    batch = jraph.batch_np(graphs)
    nodes, edges = int(batch.n_node.sum()), int(batch.n_edge.sum())
    for budget in budgets:
        if budget.n_node >= nodes + 1 and budget.n_edge >= edges and budget.n_graph >= len(graphs) + 1:
            break
    else:
        raise ValueError(f"a batch of {len(graphs)} graphs ({nodes} nodes, {edges} edges) fits no budget {budgets}")
    padded = jraph.pad_with_graphs(batch, budget.n_node, budget.n_edge, budget.n_graph)
    graph_mask = np.asarray(jraph.get_graph_padding_mask(padded))
    node_mask = np.asarray(jraph.get_node_padding_mask(padded))
    padded_labels = np.zeros((budget.n_graph,) + np.shape(labels)[1:], np.asarray(labels).dtype)
    padded_labels[: len(graphs)] = labels
    return Batch(padded, padded_labels, graph_mask, node_mask)


def iterate_batches(dataset, indices, batch_size: int, budgets: list[Budget], *, shuffle: bool = False,
                    seed: int = 0, epoch: int = 0):
    """Yield padded ``Batch``es over ``indices``; the shuffling order follows from (seed, epoch)."""
    indices = np.asarray(indices)
    if shuffle:
        indices = np.random.default_rng([seed, epoch]).permutation(indices)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        yield pad_batch([dataset[i] for i in chunk], dataset.labels[chunk], budgets)
