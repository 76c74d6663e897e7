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

import jax
import jax.numpy as jnp


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


def sample_adjacency(key, num_graphs: int, nodes_per_graph: int, density: float):
    """``[num_graphs, n, n]`` bool symmetric adjacencies without self-loops or isolated nodes:
    each graph is ``U < sqrt(density)``, its diagonal cleared, ``A AND A^T``, drawn again (every
    graph with an isolated node, exactly as the authors' rejection loop) until none is left."""
    n = nodes_per_graph

    def draw(k):
        upper = jax.random.uniform(k, (num_graphs, n, n)) < jnp.sqrt(density)
        a = upper & ~jnp.eye(n, dtype=bool)[None]
        return a & jnp.swapaxes(a, 1, 2)

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


def edge_lists(adjacency):
    """Every ordered pair (i, j), i != j, of every graph as a fixed-size edge list, so that a
    batch of any density compiles once: ``senders`` (the flat index of node j), ``receivers``
    (of node i, or ``B n`` for pairs that are not edges: a dummy segment the caller drops)."""
    num_graphs, n, _ = adjacency.shape
    i, j = jnp.nonzero(~jnp.eye(n, dtype=bool), size=n * (n - 1))
    offsets = (jnp.arange(num_graphs) * n)[:, None]
    senders = (offsets + j[None]).reshape(-1)
    receivers = jnp.where(adjacency[:, i, j], offsets + i[None], num_graphs * n).reshape(-1)
    return senders, receivers


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
    return AggregatorRegression(**settings, fingerprint={"generator": dict(settings, version=1)})
