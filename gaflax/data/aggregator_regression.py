"""GenAgg's aggregator-regression benchmark (Kortvelesy, Morad & Prorok, NeurIPS 2023; the
authors' ``run/regress_agg.py``): can a learnable aggregator become the aggregate that made the labels?

Every training step draws fresh graphs of ``nodes_per_graph`` nodes (8 in the paper): the
adjacency is ``U < sqrt(density)`` with U uniform, a zero diagonal and ``A AND A^T`` (density 0.3),
and a graph with an isolated node is drawn again. Node features are ``x ~ N(0, 1)`` with
``channels`` channels (6). Node i's target, per channel, is an aggregate (``TARGETS``) over its
neighbours only, not itself. The model is the aggregator alone (message = x_j), trained with MSE.

Graphs are generated on the device, inside the training program (``sample_graphs``), so nothing
here reads files. Evaluation uses fixed sets of graphs drawn from keys that no training step uses.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def _masked(adjacency, values, fill):
    """values_j of each neighbour j of node i, ``fill`` elsewhere: ``[B, n (i), n (j), C]``."""
    return jnp.where(adjacency[..., None], values[:, None, :, :], fill)


def _degree(adjacency):
    return jnp.sum(adjacency, axis=-1, dtype=jnp.float32)[..., None]  # [B, n, 1]


def _sum(adjacency, values):
    return jnp.sum(_masked(adjacency, values, 0.0), axis=2)


def _std(adjacency, x):
    """The population standard deviation (``np.std``, as the authors' targets)."""
    n = _degree(adjacency)
    mean = _sum(adjacency, x) / n
    return jnp.sqrt(jnp.maximum(_sum(adjacency, x * x) / n - mean * mean, 0.0))


def _log_sum_exp(adjacency, x):
    top = jnp.max(_masked(adjacency, x, -jnp.inf), axis=2)  # finite: every node has a neighbour
    shifted = jnp.exp(x[:, None, :, :] - top[:, :, None, :])  # [B, n, n, C]
    return top + jnp.log(jnp.sum(jnp.where(adjacency[..., None], shifted, 0.0), axis=2))


#: The 13 targets of the paper, ``fn(adjacency [B, n, n] bool, x [B, n, C]) -> [B, n, C]``, each
#: over the neighbours of node i (every node has at least one). ``_mag``: of the magnitudes |x_j|.
TARGETS = {
    "max": lambda a, x: jnp.max(_masked(a, x, -jnp.inf), axis=2),
    "min": lambda a, x: jnp.min(_masked(a, x, jnp.inf), axis=2),
    "max_mag": lambda a, x: jnp.max(_masked(a, jnp.abs(x), -jnp.inf), axis=2),
    "min_mag": lambda a, x: jnp.min(_masked(a, jnp.abs(x), jnp.inf), axis=2),
    "mean": lambda a, x: _sum(a, x) / _degree(a),
    "sum": _sum,
    "std": _std,
    "norm2": lambda a, x: jnp.sqrt(_sum(a, x * x)),
    "rms": lambda a, x: jnp.sqrt(_sum(a, x * x) / _degree(a)),
    "prod_mag": lambda a, x: jnp.exp(_sum(a, jnp.log(jnp.abs(x)))),
    "geomean_mag": lambda a, x: jnp.exp(_sum(a, jnp.log(jnp.abs(x))) / _degree(a)),
    "harmean_mag": lambda a, x: _degree(a) / _sum(a, 1 / jnp.abs(x)),
    "logsumexp": _log_sum_exp,
}


def _pair_index(n: int) -> np.ndarray:
    """``[n, n]``: the index of the unordered pair {i, j} among the n (n - 1) / 2 pairs, and
    n (n - 1) / 2 (a column that is always False) on the diagonal."""
    index = np.full((n, n), n * (n - 1) // 2)
    i, j = np.triu_indices(n, 1)
    index[i, j] = index[j, i] = np.arange(i.size)
    return index


def _symmetric(pairs, n: int, xp=jnp):
    """``[B, n (n - 1) / 2]`` bool, one per unordered pair -> ``[B, n, n]`` symmetric adjacencies
    without self-loops (``xp``: jax.numpy, or numpy)."""
    return xp.pad(pairs, ((0, 0), (0, 1)))[:, _pair_index(n)]


def sample_adjacency(key, num_graphs: int, nodes_per_graph: int, density: float):
    """``[num_graphs, n, n]`` bool symmetric adjacencies without self-loops or isolated nodes.

    The authors draw ``U < sqrt(density)``, clear the diagonal and take ``A AND A^T``: every
    unordered pair is then an edge with probability sqrt(density)^2 = density, independently of
    the others. We draw that Bernoulli once per unordered pair, which is the same distribution
    from fewer than half the random numbers. Every graph with an isolated node is drawn again,
    exactly as the authors' rejection loop, until none is left."""
    n = nodes_per_graph

    def draw(k):
        return _symmetric(jax.random.uniform(k, (num_graphs, n * (n - 1) // 2)) < density, n)

    def isolated(a):
        return jnp.any(~jnp.any(a, axis=2), axis=1)  # [B]

    def redraw(state):
        k, a = state
        k, sub = jax.random.split(k)
        return k, jnp.where(isolated(a)[:, None, None], draw(sub), a)

    key, sub = jax.random.split(key)
    return jax.lax.while_loop(lambda s: jnp.any(isolated(s[1])), redraw, (key, draw(sub)))[1]


def sample_graphs(key, target: str, num_graphs: int, nodes_per_graph: int, channels: int, density: float):
    """Fresh graphs: ``(x [B, n, C], adjacency [B, n, n], y [B, n, C])`` with y the ``target``
    aggregate of each node's neighbours."""
    key_adjacency, key_x = jax.random.split(key)
    adjacency = sample_adjacency(key_adjacency, num_graphs, nodes_per_graph, density)
    x = jax.random.normal(key_x, (num_graphs, nodes_per_graph, channels))
    return x, adjacency, TARGETS[target](adjacency, x)


def edge_slots(num_graphs: int, nodes_per_graph: int, density: float) -> int:
    """A fixed number of edge slots for ``num_graphs`` graphs, so that every batch compiles once
    while the aggregators see few padded slots (every ordered pair would be 3x the edges at the
    paper's density). The directed edge count of a graph (conditioned on no isolated node) is
    estimated from 20,000 graphs drawn with NumPy (a fixed seed: the same slots on every call);
    the slots are its mean times ``num_graphs`` plus 12 standard deviations of the total plus
    two graphs' worth of pairs, capped at every ordered pair. A batch with more edges is an
    error (``edge_lists`` counts them), never a silent truncation; at the paper's settings it
    is more than 12 standard deviations away."""
    pairs = nodes_per_graph * (nodes_per_graph - 1)
    stats = _edge_count_stats(nodes_per_graph, density)
    if stats is None:  # isolated nodes nearly always: no useful estimate
        return num_graphs * pairs
    mean, std = stats
    slots = math.ceil(num_graphs * mean + 12 * std * math.sqrt(num_graphs) + 2 * pairs)
    return min(slots, num_graphs * pairs)


@functools.lru_cache(maxsize=None)
def _edge_count_stats(n: int, density: float) -> tuple[float, float] | None:
    """Mean and std of a graph's directed edge count without isolated nodes, from 20,000 NumPy
    draws (seed 0); None when fewer than 100 of them have no isolated node. Drawn once per
    (n, density): a task asks for the slots of several batch sizes."""
    adjacency = _symmetric(np.random.default_rng(0).random((20_000, n * (n - 1) // 2)) < density, n, np)
    counts = adjacency.sum(axis=(1, 2))[adjacency.any(axis=2).all(axis=1)]
    return None if counts.size < 100 else (float(counts.mean()), float(counts.std()))


def edge_lists(adjacency, size: int | None = None):
    """The edges of a batch of graphs as a fixed-size list: ``(senders, receivers, num_edges)``
    with ``senders`` the flat index of node j, ``receivers`` that of node i (edge j -> i), in
    order of receiver, and ``num_edges`` the number of real edges. ``size`` slots (default every
    ordered pair i != j); unused slots have receiver ``B n``, a dummy segment the caller drops.
    Edges beyond ``size`` are cut off: the caller must check ``num_edges <= size``."""
    num_graphs, n, _ = adjacency.shape
    size = num_graphs * n * (n - 1) if size is None else size
    flat = adjacency.reshape(-1)
    (slot,) = jnp.nonzero(flat, size=size, fill_value=flat.size)
    graph, rest = jnp.divmod(slot, n * n)
    i, j = jnp.divmod(rest, n)
    used = slot < flat.size
    return (jnp.where(used, graph * n + j, 0), jnp.where(used, graph * n + i, num_graphs * n),
            jnp.sum(flat, dtype=jnp.int32))


@dataclasses.dataclass
class AggregatorRegression:
    """The benchmark's settings (no stored data: graphs are drawn while training). A "step" draws
    ``graphs_per_step`` graphs; an "epoch" is ``steps_per_epoch`` steps followed by an evaluation on
    ``eval_graphs`` fixed graphs per split."""

    target: str
    nodes_per_graph: int
    channels: int
    density: float
    graphs_per_step: int
    steps_per_epoch: int
    eval_graphs: int
    fingerprint: dict
    name: str = "aggregator_regression"
    task: str = "regression"
    num_classes: int = 1
    kind = "aggregator_regression"


def make_aggregator_regression(target: str = "max", *, nodes_per_graph: int = 8, channels: int = 6,
                               density: float = 0.3, num_nodes: int = 8192, steps_per_epoch: int = 100,
                               eval_graphs: int = 1024) -> AggregatorRegression:
    """The benchmark for one ``target`` (a name in ``TARGETS``). ``num_nodes``: nodes per training
    step, so ``num_nodes // nodes_per_graph`` graphs (8192: the paper's 1024 graphs of 8 nodes)."""
    if target not in TARGETS:
        raise ValueError(f"aggregator_regression: target={target!r} is not one of {sorted(TARGETS)} "
                         "(dataset.options.target)")
    for name, value, low in (("nodes_per_graph", nodes_per_graph, 2), ("channels", channels, 1),
                             ("num_nodes", num_nodes, nodes_per_graph), ("steps_per_epoch", steps_per_epoch, 1),
                             ("eval_graphs", eval_graphs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"aggregator_regression: {name}={value!r} must be an int >= {low} "
                             f"(dataset.options.{name})")
    if not 0 < density <= 1:
        raise ValueError(f"aggregator_regression: density={density!r} must lie in (0, 1] (dataset.options.density)")
    settings = dict(target=target, nodes_per_graph=nodes_per_graph, channels=channels, density=float(density),
                    graphs_per_step=num_nodes // nodes_per_graph, steps_per_epoch=steps_per_epoch,
                    eval_graphs=eval_graphs)
    return AggregatorRegression(**settings, fingerprint={"generator": dict(settings, version=2)})
