"""Graph Attention Networks (flax linen, jraph) with a pluggable aggregation operator.

``GATLayer`` follows Velickovic et al. (2018): a shared linear projection, multi-head additive
attention with LeakyReLU(0.2), attention normalised per receiver with a segment softmax, dropout
on the inputs and on the attention coefficients, and concatenated or averaged heads. ``v2=True``
gives GATv2 (Brody et al. 2022): the nonlinearity comes before the attention vector.

The aggregation is a function with the ``gaflax.pooling`` signature, passed in (as jraph's layers
take ``aggregate_edges_for_nodes_fn``); ``pooling.weighted_sum`` is the standard GAT. Operators
that take an exponent get it from an ``ExponentSpec``: fixed, or learned per ``layer``, ``head`` or
``channel`` through
``alpha = tanh(lr_mult * theta)``: bounded in (-1, 1) by construction, and ``lr_mult`` scales how
fast Adam moves it (Adam's step in ``theta`` is about the learning rate, whatever the gradient's
size, so the reparameterisation is an effective per-parameter learning-rate multiplier).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gaflax import pooling
from gaflax.compat import jraph
from gaflax.config import Config
from gaflax.devices import DATA_AXIS
from gaflax.pooling import ExponentSpec
from gaflax.registry import Registry


class Exponent(nn.Module):
    """The GA exponent alpha, of shape [] (layer), [H, 1] (head) or [H, C] (channel)."""

    spec: ExponentSpec

    @nn.compact
    def __call__(self, heads: int, channels: int, fixed=None):
        """``fixed`` (a scalar, possibly traced) replaces the initial value of a fixed exponent: a
        vmapped grid passes each member's alpha this way."""
        spec = self.spec
        shape = {"layer": (), "head": (heads, 1), "channel": (heads, channels)}[spec.scope]
        if not spec.learn:
            value = spec.init if fixed is None else fixed
            return jnp.broadcast_to(jnp.asarray(value, jnp.float32), shape)
        # Start strictly inside (-1, 1) so that theta is finite.
        start = float(np.arctanh(np.clip(spec.init, -0.999, 0.999))) / spec.lr_mult
        theta = self.param("alpha_theta", nn.initializers.constant(start), shape, jnp.float32)
        return jnp.tanh(spec.lr_mult * theta)


class AggregatorParams(nn.Module):
    """An aggregator's learnable parameters (``pooling.ParamSpec``), each of the channel shape
    (``[H, C]`` in a layer, ``[F]`` for a readout), starting at its spec's ``init``. Sown into
    ``intermediates`` so that their values are reported with the alphas."""

    specs: tuple

    @nn.compact
    def __call__(self, channel_shape: tuple) -> dict:
        values = {}
        for spec in self.specs:
            values[spec.name] = self.param(spec.name, spec.initializer(), spec.shape_for(channel_shape), jnp.float32)
            if spec.report:
                self.sow("intermediates", spec.name,
                         spec.reported(values[spec.name]) if spec.reported else values[spec.name])
        return values


def aggregate_with_params(aggregate, module: nn.Module, messages, segment_ids, num_segments, *, weights=None,
                          alpha=None, name="aggregator_params"):
    """Call ``aggregate``, creating its learnable parameters (if its specs name some) in ``module``:
    those without weight decay under ``name``, weight matrices under ``name`` with ``weights``."""
    specs = getattr(aggregate, "params", ())
    if not specs:
        return aggregate(messages, segment_ids, num_segments, weights=weights, alpha=alpha)
    params = {}
    for decayed, module_name in ((False, name), (True, name.replace("params", "weights"))):
        chosen = tuple(spec for spec in specs if spec.decay == decayed)
        if chosen:
            params |= AggregatorParams(chosen, parent=module, name=module_name)(messages.shape[1:])
    if getattr(aggregate, "aux_loss", False):  # GenAgg's inverse-reconstruction loss joins the objective
        out, aux = aggregate(messages, segment_ids, num_segments, weights=weights, alpha=alpha, params=params,
                             with_aux=True)
        module.sow("losses", name.replace("params", "loss"), aux)
        return out
    return aggregate(messages, segment_ids, num_segments, weights=weights, alpha=alpha, params=params)


def gather_messages(h, senders, dtype: str):
    """``h[senders]``, the per-edge messages, stored in ``dtype`` (``trainer.dtype``): bfloat16
    halves the largest arrays of a layer, ``[E, H, C]``; ``aggregate_neighbours`` computes in
    float32, and the gradient sums the edges' cotangents into ``h`` in float32 as well."""
    if dtype == "float32":  # the default: messages as computed (float64 too, with x64 enabled)
        return h[senders]
    return _gather_narrow(h, senders, jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gather_narrow(h, senders, dtype):
    return h.astype(dtype)[senders]


def _gather_narrow_fwd(h, senders, dtype):
    # (residuals are arrays: an empty [N, 0] one carries h's row count and dtype)
    return _gather_narrow(h, senders, dtype), (senders, jnp.zeros((h.shape[0], 0), h.dtype))


def _gather_narrow_bwd(dtype, saved, cotangent):
    senders, like_h = saved
    grad_h = jax.ops.segment_sum(cotangent.astype(like_h.dtype), senders, like_h.shape[0])  # float32 sums
    return grad_h, np.zeros(senders.shape, jax.dtypes.float0)


_gather_narrow.defvjp(_gather_narrow_fwd, _gather_narrow_bwd)


def aggregate_neighbours(module: nn.Module, aggregate, exponent_spec, messages, receivers, num_nodes, weights, alpha=None):
    """What every backbone layer does with its messages ``[E, H, C]``: build the aggregator's GA
    exponent (from ``exponent_spec``; ``alpha`` replaces a fixed one's value) and its learnable
    parameters in ``module``, then aggregate per receiver with the layer's edge ``weights``
    ``[E, H]`` (attention, or GCN's normalisation). Returns ``[N, H, C]``, in float32: bfloat16
    messages (``trainer.dtype``) are widened as they are read, so sums accumulate in float32."""
    messages = messages.astype(jnp.promote_types(messages.dtype, jnp.float32))
    exponent = None
    if exponent_spec is not None:
        exponent = Exponent(exponent_spec, parent=module, name="exponent")(messages.shape[1], messages.shape[-1],
                                                                           fixed=alpha)
        module.sow("intermediates", "alpha", exponent)
    return aggregate_with_params(aggregate, module, messages, receivers, num_nodes, weights=weights, alpha=exponent)


def _fmix32(h):
    """murmur3's 32-bit finalizer: a bijective, well-mixing hash of uint32 values."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


@flax.struct.dataclass
class SparseFeatures:
    """A sparse ``[N, F]`` node-feature matrix as coordinates in row-major order.

    Bag-of-words features are ~1 % non-zero (Cora, CiteSeer, Coauthor CS), so the first layer's
    projection ``x @ W`` as a gather of W's rows and a segment sum over the non-zeros costs ~1 % of
    the dense matmul, which was the largest cost of a Cora epoch. Dropout hashes the same element
    indices as on the dense matrix, so both forms draw the same masks and compute the same values
    (to float rounding). ``sparse_features`` builds it from a dense array.
    """

    rows: jax.Array  # [nnz] int32, sorted
    cols: jax.Array  # [nnz] int32
    values: jax.Array  # [nnz]
    shape: tuple = flax.struct.field(pytree_node=False)

    @property
    def dtype(self):
        return self.values.dtype


def sparse_features(x) -> SparseFeatures:
    x = np.asarray(x)
    rows, cols = np.nonzero(x)  # row-major order
    return SparseFeatures(jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32), jnp.asarray(x[rows, cols]),
                          tuple(x.shape))


class Projection(nn.Module):
    """``x @ kernel (+ bias)`` for a dense array or ``SparseFeatures`` (same parameters as nn.Dense)."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.glorot_uniform(), (x.shape[-1], self.features))
        if isinstance(x, SparseFeatures):
            out = jax.ops.segment_sum(x.values[:, None] * kernel[x.cols], x.rows, x.shape[0], indices_are_sorted=True)
        else:
            out = x @ kernel
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (self.features,))[None]
        return out


class Dropout(nn.Module):
    """Inverted dropout whose mask is a counter-based hash of the element index and two random
    words drawn from the ``dropout`` rng (a new pair per call). ``SparseFeatures`` are dropped at
    the index each non-zero has in the dense matrix.

    ``jax.random.bernoulli`` draws a full PRNG output per element; on CPU that made the input
    dropout of a Cora GAT (2708 x 1433 features) cost ~50 ms per step against ~3 ms for the
    projection. The hash costs a few integer operations per element (~1 ms there), is
    deterministic given the rng, and keeps each element with probability ``1 - rate`` up to
    2^-32 (the same idea as counter-based generators such as Philox, with fewer rounds).
    """

    rate: float

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        if deterministic or self.rate == 0:
            return x
        seed = jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)
        sparse = isinstance(x, SparseFeatures)
        if sparse:  # each non-zero's index in the dense matrix
            values, index = x.values, x.rows.astype(jnp.uint32) * jnp.uint32(x.shape[1]) + x.cols.astype(jnp.uint32)
        else:
            values, index = x, jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
        keep = _fmix32(_fmix32(index ^ seed[0]) + seed[1]) < jnp.uint32(min(int((1 - self.rate) * 2**32), 2**32 - 1))
        dropped = jnp.where(keep, values / (1 - self.rate), 0)
        return x.replace(values=dropped) if sparse else dropped


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """What every GAT layer of a model shares: the aggregator (a ``gaflax.pooling`` function) and
    its exponent (None for operators without one), and the attention and dropout settings."""

    aggregate: Callable = pooling.weighted_sum
    exponent: ExponentSpec | None = None
    v2: bool = False
    dropout: float = 0.6
    attention_dropout: float = 0.6
    negative_slope: float = 0.2
    # False: every neighbour weighs 1 / in-degree (no attention parameters). Attention that tilts
    # towards large messages mimics a larger exponent, so this isolates what the GA itself does.
    attention: bool = True
    # True: aggregate the input features, then project them per head (x -> GA -> W); the default
    # projects first (x -> W -> GA, as GAT). The two agree for linear aggregators; for GA, the
    # first makes the exponent act on the features themselves, so a synthetic target built as a
    # GA of one feature is exactly representable.
    aggregate_first: bool = False
    # Dropout of the projected features h before aggregation (the GAT authors' code: 0.6).
    message_dropout: float = 0.0
    message_dtype: str = "float32"  # trainer.dtype: the per-edge messages' storage (see aggregate_neighbours)


class GATLayer(nn.Module):
    """One GAT / GATv2 layer on a jraph.GraphsTuple (``nodes`` [N, F]) -> new node features
    ``[N, heads * features]`` (``concat``) or ``[N, features]`` (heads averaged).

    Self-loops are expected to be in the graph already (``add_self_loops``).
    """

    features: int
    heads: int = 8
    concat: bool = True
    options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool, alpha=None) -> jnp.ndarray:
        """``alpha``: replaces a fixed exponent's value at call time (for vmapping over exponents)."""
        o = self.options
        x = Dropout(o.dropout)(graph.nodes, deterministic=deterministic)
        n = x.shape[0]
        H, C = self.heads, self.features
        glorot = nn.initializers.glorot_uniform()
        senders, receivers = graph.senders, graph.receivers
        if not o.attention:
            h = Projection(H * C, use_bias=False, name="proj")(x).reshape(n, H, C)
            messages = gather_messages(self._drop_messages(h, deterministic), senders, o.message_dtype)
            logits = jnp.zeros((len(receivers), H), x.dtype)  # equal logits: the softmax gives 1 / in-degree
        elif o.v2:
            h_src = Projection(H * C, name="proj_src")(x).reshape(n, H, C)
            h_dst = Projection(H * C, name="proj_dst")(x).reshape(n, H, C)
            att = self.param("att", glorot, (1, H, C))
            z = nn.leaky_relu(h_src[senders] + h_dst[receivers], o.negative_slope)
            logits = jnp.sum(z * att, axis=-1)  # [E, H]
            messages = gather_messages(self._drop_messages(h_src, deterministic), senders, o.message_dtype)
        else:
            h = Projection(H * C, use_bias=False, name="proj")(x).reshape(n, H, C)
            att_src = self.param("att_src", glorot, (1, H, C))
            att_dst = self.param("att_dst", glorot, (1, H, C))
            score_src = jnp.sum(h * att_src, axis=-1)  # [N, H]
            score_dst = jnp.sum(h * att_dst, axis=-1)
            logits = nn.leaky_relu(score_src[senders] + score_dst[receivers], o.negative_slope)
            messages = gather_messages(self._drop_messages(h, deterministic), senders, o.message_dtype)
        attention = jraph.segment_softmax(logits, receivers, n)  # [E, H], sums to 1 per receiver
        attention = Dropout(o.attention_dropout)(attention, deterministic=deterministic)

        if o.aggregate_first:  # the heads' messages are the input features themselves
            messages = jnp.broadcast_to(gather_messages(x, senders, o.message_dtype)[:, None, :],
                                        (len(senders), H, x.shape[-1]))
        # [N, H, C] ([N, H, F] aggregating first)
        out = aggregate_neighbours(self, o.aggregate, o.exponent, messages, receivers, n, attention, alpha)
        if o.aggregate_first:
            kernel = self.param("proj_after", glorot, (H, x.shape[-1], C))
            out = jnp.einsum("nhf,hfc->nhc", out, kernel)
        out = out.reshape(n, H * C) if self.concat else out.mean(axis=1)
        bias = self.param("bias", nn.initializers.zeros, (out.shape[-1],))
        return out + bias[None]

    def _drop_messages(self, h, deterministic):
        """``h`` [N, H, C] with ``options.message_dropout``: one mask per node, head and channel,
        drawn after the attention logits used ``h`` (as ``attn_head`` in the GAT authors' code)."""
        return Dropout(self.options.message_dropout, name="message_dropout")(h, deterministic=deterministic)


def add_self_loops(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """Append one self-loop per node (the GAT paper's attention includes the node itself)."""
    n = graph.nodes.shape[0]
    loops = jnp.arange(n, dtype=graph.senders.dtype)
    return graph._replace(
        senders=jnp.concatenate([graph.senders, loops]),
        receivers=jnp.concatenate([graph.receivers, loops]),
        edges=None,
        n_edge=graph.n_edge + graph.n_node,
    )


def in_degree(receivers, num_nodes, dtype=jnp.float32):
    return jax.ops.segment_sum(jnp.ones(receivers.shape, dtype), receivers, num_nodes)


class _BackboneLayer(nn.Module):
    """The fields every non-GAT layer has: its width, aggregator and the aggregator's exponent."""

    features: int
    aggregate: Callable = pooling.weighted_sum
    exponent: ExponentSpec | None = None
    # Dropout of the projected features h before aggregation (the GAT authors' code: 0.6).
    message_dropout: float = 0.0
    message_dtype: str = "float32"  # trainer.dtype (gather_messages)


def _neighbours(layer: _BackboneLayer, h, graph, edge_weights, alpha):
    """``agg_j h_j`` over each node's in-neighbours with the layer's ``edge_weights`` ``[E]``: ``[N, C]``."""
    messages = gather_messages(h, graph.senders, layer.message_dtype)[:, None, :]
    return aggregate_neighbours(layer, layer.aggregate, layer.exponent, messages, graph.receivers,
                                h.shape[0], edge_weights[:, None], alpha)[:, 0, :]


class GCNLayer(_BackboneLayer):
    """Kipf & Welling (2017): ``D^-1/2 (A + I) D^-1/2 X W + b``, with the aggregator in place of
    the normalised sum: messages ``(X W)_j`` weighted by ``1 / sqrt(d_i d_j)`` (self-loops are in
    the graph already). ``weighted_sum`` is the published layer; GA and the other operators that
    use weights normalise them per node."""

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True, alpha=None) -> jnp.ndarray:
        h = Projection(self.features, use_bias=False, name="proj")(graph.nodes)
        degree = in_degree(graph.receivers, h.shape[0], h.dtype)
        norm = jax.lax.rsqrt(jnp.maximum(degree[graph.senders] * degree[graph.receivers], 1))
        return _neighbours(self, h, graph, norm, alpha) + self.param("bias", nn.initializers.zeros, (self.features,))[None]


class SAGELayer(_BackboneLayer):
    """GraphSAGE (Hamilton et al. 2017) with the root weight: ``W_r x_i + W_n agg_j(x_j) + b``,
    mean aggregation by default: neighbours weigh ``1 / in-degree``, so ``weighted_sum`` is the
    mean. As in GAT, the features are projected before they are aggregated (``agg_j(W_n x_j)``),
    which equals the published layer for linear aggregators (sum, mean) and lets sparse features
    stay sparse. No self-loops."""

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True, alpha=None) -> jnp.ndarray:
        neighbours = Projection(self.features, use_bias=False, name="proj_neighbours")(graph.nodes)
        root = Projection(self.features, name="proj_root")(graph.nodes)
        weights = 1 / jnp.maximum(in_degree(graph.receivers, root.shape[0], root.dtype), 1)[graph.receivers]
        return root + _neighbours(self, neighbours, graph, weights, alpha)


class MaskedBatchNorm(nn.Module):
    """Batch normalisation over the rows of ``x`` [n, C] that ``mask`` [n, 1] marks (all rows when
    None), with flax ``nn.BatchNorm``'s parameters (``scale``, ``bias``), state (``batch_stats``:
    ``mean``, ``var``) and arithmetic: biased variance ``E[x^2] - E[x]^2`` (floored at 0), running
    averages ``momentum * old + (1 - momentum) * batch``.

    ``axis_name``: inside ``shard_map`` over that mesh axis (data-parallel graph batches), the
    statistics are those of the real rows of every device together: the sums and counts are
    ``psum``med before dividing. (``nn.BatchNorm(axis_name=...)`` averages the devices' means,
    which differs when the devices hold different numbers of real nodes.)"""

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            x32 = x.astype(jnp.float32)
            weight = jnp.ones((x.shape[0], 1), jnp.float32) if mask is None else mask.astype(jnp.float32)
            totals = (jnp.sum(weight * x32, 0), jnp.sum(weight * x32 * x32, 0), jnp.sum(weight))
            if self.axis_name is not None:
                totals = jax.lax.psum(totals, self.axis_name)
            first, second, count = totals
            count = jnp.maximum(count, 1)
            mean = first / count
            var = jnp.maximum(second / count - mean * mean, 0)
            if not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        y = (x - mean.astype(x.dtype)[None]) * jax.lax.rsqrt(var + self.epsilon).astype(x.dtype)[None]
        return y * scale.astype(x.dtype)[None] + bias.astype(x.dtype)[None]


class GINLayer(_BackboneLayer):
    """GIN (Xu et al. 2019): ``MLP((1 + eps) x_i + agg_j x_j)`` with a learned eps (from 0) and a
    two-layer ReLU MLP; sum aggregation by default (neighbours weigh 1). The MLP's first linear
    map is applied before the aggregation (exact for linear aggregators, as in SAGELayer). No
    self-loops.

    ``batch_norm``: batch normalisation after each of the MLP's linear maps, as Xu et al. and
    Errica et al. have it (Linear, BN, ReLU, Linear, BN; the model applies the last ReLU). It uses
    the batch's statistics while training and running averages (momentum 0.9, PyTorch's 0.1)
    when ``deterministic``; ``padded`` (graph batches) leaves the padding nodes out of the
    statistics, and ``batch_axis`` (data-parallel batches) takes them over every device."""

    train_eps: bool = True
    batch_norm: bool = False
    padded: bool = False
    batch_axis: str | None = None  # MaskedBatchNorm's axis_name (data-parallel graph batches)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True, alpha=None) -> jnp.ndarray:
        h = Projection(self.features, use_bias=False, name="proj")(graph.nodes)
        eps = self.param("eps", nn.initializers.zeros, ()) if self.train_eps else 0.0
        out = _neighbours(self, h, graph, jnp.ones(graph.senders.shape, h.dtype), alpha)
        z = (1 + eps) * h + out + self.param("bias", nn.initializers.zeros, (self.features,))[None]
        if not self.batch_norm:
            return nn.Dense(self.features, name="mlp_out")(nn.relu(z))
        mask = jraph.get_node_padding_mask(graph)[:, None] if self.padded else None
        norm = functools.partial(MaskedBatchNorm, use_running_average=deterministic, axis_name=self.batch_axis)
        z = norm(name="norm_hidden")(z, mask=mask)
        return norm(name="norm_out")(nn.Dense(self.features, name="mlp_out")(nn.relu(z)), mask=mask)


def _layer_name(layer) -> str:
    layer = getattr(layer, "func", layer)  # a functools.partial of a layer class
    return {GCNLayer: "gcn", SAGELayer: "sage", GINLayer: "gin"}[layer]


#: Backbones other than GAT: ``model.name`` -> layer class. Each takes (features, aggregate, exponent).
BACKBONE_LAYERS = {"gcn": GCNLayer, "sage": SAGELayer, "gin": GINLayer}


class GNN(nn.Module):
    """A node classifier of ``num_layers`` backbone layers (``layer``: GCNLayer, SAGELayer or
    GINLayer): dropout before each layer, ReLU between them, ``num_classes`` outputs."""

    layer: type
    num_classes: int
    hidden: int = 16
    num_layers: int = 2
    dropout: float = 0.5
    aggregate: Callable = pooling.weighted_sum
    exponent: ExponentSpec | None = None

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True, alpha=None) -> jnp.ndarray:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            graph = graph._replace(nodes=Dropout(self.dropout)(graph.nodes, deterministic=deterministic))
            layer = self.layer(self.num_classes if last else self.hidden, self.aggregate, self.exponent,
                               name=f"{_layer_name(self.layer)}_{i}")
            nodes = layer(graph, deterministic=deterministic, alpha=alpha)
            if last:
                return nodes
            graph = graph._replace(nodes=nn.relu(nodes))


class GraphGNN(GNN):
    """A graph classifier: backbone layers (ReLU, dropout), a readout (a ``gaflax.pooling``
    operator with its own ``ExponentSpec``), then an MLP; logits ``[G, num_classes]``."""

    readout: Callable = pooling.weighted_sum
    readout_exponent: ExponentSpec | None = None
    mlp: Sequence[int] = (64,)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True) -> jnp.ndarray:
        n_graph = graph.n_node.shape[0]
        node_graph = jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=graph.nodes.shape[0])
        name = _layer_name(self.layer)
        for i in range(self.num_layers):
            nodes = self.layer(self.hidden, self.aggregate, self.exponent, name=f"{name}_{i}")(graph, deterministic=deterministic)
            graph = graph._replace(nodes=Dropout(self.dropout, name=f"dropout_{i}")(nn.relu(nodes),
                                                                                   deterministic=deterministic))
        return _readout_and_mlp(self, graph.nodes, node_graph, n_graph, self.readout, self.readout_exponent, self.mlp,
                                self.dropout, self.num_classes, deterministic)


def _readout_and_mlp(module, nodes, node_graph, n_graph, readout, readout_exponent, mlp, dropout, num_classes,
                     deterministic):
    alpha = None
    if readout_exponent is not None:  # one "head" over the F pooled channels
        alpha = Exponent(readout_exponent, parent=module, name="readout_exponent")(1, nodes.shape[-1])
        alpha = alpha if alpha.ndim == 0 else alpha[0]
        module.sow("intermediates", "readout_alpha", alpha)
    pooled = aggregate_with_params(readout, module, nodes, node_graph, n_graph, alpha=alpha, name="readout_params")
    for i, width in enumerate(mlp):
        pooled = nn.elu(nn.Dense(width, parent=module, name=f"Dense_{i}")(pooled))
        pooled = Dropout(dropout, parent=module, name=f"Dropout_{i}")(pooled, deterministic=deterministic)
    return nn.Dense(num_classes, parent=module, name=f"Dense_{len(mlp)}")(pooled)


class GAT(nn.Module):
    """A GAT node classifier: hidden GAT layers (concat heads, ELU), then an output layer with
    ``out_heads`` averaged heads producing ``num_classes`` logits per node (Velickovic et al.)."""

    num_classes: int
    hidden: int = 8
    heads: int = 8
    out_heads: int = 1
    num_layers: int = 2
    layer: LayerOptions = LayerOptions()  # shared by every GATLayer (aggregator, dropout, ...)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True, alpha=None) -> jnp.ndarray:
        """``alpha``: the value of every layer's fixed exponent, given at call time (see GATLayer)."""
        for i in range(self.num_layers - 1):
            nodes = GATLayer(self.hidden, self.heads, concat=True, options=self.layer, name=f"gat_{i}")(
                graph, deterministic=deterministic, alpha=alpha)
            graph = graph._replace(nodes=nn.elu(nodes))
        return GATLayer(self.num_classes, self.out_heads, concat=False, options=self.layer,
                        name=f"gat_{self.num_layers - 1}")(graph, deterministic=deterministic, alpha=alpha)


class GraphGAT(nn.Module):
    """Graph classifier: GAT layers, a readout (a ``gaflax.pooling`` function, with its own
    ``ExponentSpec``), then an MLP. Returns logits ``[G, num_classes]``.

    Works on padded batches: ``node_graph`` maps nodes to graphs, padding graphs are masked later.
    """

    num_classes: int
    hidden: int = 32
    heads: int = 4
    num_layers: int = 3
    readout: Callable = pooling.weighted_sum
    readout_exponent: ExponentSpec | None = None
    mlp: Sequence[int] = (64,)
    layer: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *, deterministic: bool = True) -> jnp.ndarray:
        n_graph = graph.n_node.shape[0]
        node_graph = jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=graph.nodes.shape[0])
        for i in range(self.num_layers):
            nodes = GATLayer(self.hidden, self.heads, concat=True, options=self.layer, name=f"gat_{i}")(
                graph, deterministic=deterministic)
            graph = graph._replace(nodes=nn.elu(nodes))
        return _readout_and_mlp(self, graph.nodes, node_graph, n_graph, self.readout, self.readout_exponent, self.mlp,
                                self.layer.dropout, self.num_classes, deterministic)


class MLP(nn.Module):
    """A small classifier for tabular rows: ``num_layers`` hidden Dense layers of ``hidden`` units
    (ELU, then dropout), then ``num_classes`` logits. ``x`` is the feature matrix ``[n, F]``."""

    num_classes: int
    hidden: int = 64
    num_layers: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
        for _ in range(self.num_layers):
            x = Dropout(self.dropout)(nn.elu(nn.Dense(self.hidden)(x)), deterministic=deterministic)
        return nn.Dense(self.num_classes)(x)


class _AggregatorLayer(nn.Module):
    aggregate: Callable
    exponent: pooling.ExponentSpec | None

    @nn.compact
    def __call__(self, messages, receivers, num_segments):
        return aggregate_neighbours(self, self.aggregate, self.exponent, messages, receivers, num_segments, None)


class AggregatorOnly(nn.Module):
    """The aggregator alone (GenAgg's aggregator-regression benchmark): ``messages`` ``[E, C]``
    (x_j of each edge) pooled per receiver into ``[num_segments, C]``; its learnable parameters
    (and GA exponent) live in the submodule ``aggregator``."""

    aggregate: Callable
    exponent: pooling.ExponentSpec | None = None

    @nn.compact
    def __call__(self, messages, receivers, num_segments: int, *, deterministic: bool = True):
        pooled = _AggregatorLayer(self.aggregate, self.exponent, name="aggregator")(messages[:, None, :], receivers,
                                                                                    num_segments)
        return pooled[:, 0, :]


def alphas_from_intermediates(intermediates) -> dict:
    """{'gat_0': alpha, 'readout_alpha': alpha, ...} (nested lists) for every exponent a model
    ``sow``ed during apply: layer exponents are named by their layer."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        keys = [k for k in keys if not k.isdigit()]  # sow stores a tuple of values
        if keys and keys[-1].endswith("alpha"):
            out["/".join(keys[:-1] if keys[-1] == "alpha" else keys)] = np.asarray(leaf).tolist()
        elif len(keys) >= 2 and keys[-2] in ("aggregator_params", "readout_params"):
            # another learned aggregator parameter: 'gat_0/p', 'readout/t'
            owner = keys[:-2] if keys[-2] == "aggregator_params" else [*keys[:-2], "readout"]
            out["/".join([*owner, keys[-1]])] = np.asarray(leaf).tolist()
    return out


def checkpointed(aggregate: Callable) -> Callable:
    """``aggregate`` (same signature and attributes) whose intermediates are recomputed in the
    backward pass instead of stored (``jax.checkpoint``): for GA, several ``[E, H, C]`` arrays per
    layer fewer in memory, for one more forward pass of the aggregation (``trainer.remat``)."""

    @functools.wraps(aggregate)
    def recomputed(messages, segment_ids, num_segments, weights=None, alpha=None, params=None, with_aux=False):
        def call(messages, segment_ids, weights, alpha, params):
            extra = {} if params is None else {"params": params, **({"with_aux": True} if with_aux else {})}
            return aggregate(messages, segment_ids, num_segments, weights=weights, alpha=alpha, **extra)

        return jax.checkpoint(call)(messages, segment_ids, weights, alpha, params)

    return recomputed


def neighbourhood_aggregator(config: Config, data_stats: dict | None = None):
    """``(aggregate, exponent spec)`` of ``config.pool`` for the message-passing layers;
    ``trainer.remat`` recomputes the aggregation in the backward pass (``checkpointed``)."""
    aggregate, exponent = pooling.from_config(config.pool, "pool", (data_stats or {}).get("pool"))
    return (checkpointed(aggregate) if config.trainer.remat else aggregate), exponent


def layer_options(config: Config, data_stats: dict | None = None) -> LayerOptions:
    """The GAT layers' options from ``config.model`` (a GATConfig) and ``config.pool``."""
    m = config.model
    aggregate, exponent = neighbourhood_aggregator(config, data_stats)
    return LayerOptions(aggregate=aggregate, exponent=exponent, v2=m.v2, dropout=m.dropout,
                        message_dropout=m.message_dropout, message_dtype=config.trainer.dtype,
                        attention_dropout=m.attention_dropout, attention=m.attention,
                        aggregate_first=m.aggregate_first)


def _build_gat(config: Config, kind: str, num_classes: int, data_stats: dict | None = None) -> nn.Module:
    m = config.model
    if kind == "graph":
        readout, readout_exponent = pooling.from_config(config.readout, "readout", (data_stats or {}).get("readout"))
        return GraphGAT(num_classes=num_classes, hidden=m.hidden, heads=m.heads, num_layers=m.num_layers,
                        readout=readout, readout_exponent=readout_exponent, mlp=tuple(m.mlp),
                        layer=layer_options(config, data_stats))
    return GAT(num_classes=num_classes, hidden=m.hidden, heads=m.heads, out_heads=m.out_heads,
               num_layers=m.num_layers, layer=layer_options(config, data_stats))


def _build_backbone(config: Config, kind: str, num_classes: int, data_stats: dict | None = None) -> nn.Module:
    m = config.model
    layer = BACKBONE_LAYERS[m.name]
    if layer is GINLayer and (not m.train_eps or m.batch_norm):
        batch_axis = DATA_AXIS if kind == "graph" and config.trainer.shard == "data" else None
        layer = functools.partial(GINLayer, train_eps=m.train_eps, batch_norm=m.batch_norm, padded=kind == "graph",
                                  batch_axis=batch_axis)
    if config.trainer.dtype != "float32":
        layer = functools.partial(layer, message_dtype=config.trainer.dtype)
    aggregate, exponent = neighbourhood_aggregator(config, data_stats)
    common = dict(layer=layer, num_classes=num_classes, hidden=m.hidden, num_layers=m.num_layers, dropout=m.dropout,
                  aggregate=aggregate, exponent=exponent)
    if kind == "graph":
        readout, readout_exponent = pooling.from_config(config.readout, "readout", (data_stats or {}).get("readout"))
        return GraphGNN(**common, readout=readout, readout_exponent=readout_exponent, mlp=tuple(m.mlp))
    return GNN(**common)


def _build_mlp(config: Config, kind: str, num_classes: int, data_stats: dict | None = None) -> nn.Module:
    m = config.model
    return MLP(num_classes=num_classes, hidden=m.hidden, num_layers=m.num_layers, dropout=m.dropout)


def _build_aggregator(config: Config, kind: str, num_classes: int, data_stats: dict | None = None) -> nn.Module:
    aggregate, exponent = pooling.from_config(config.pool, "pool", (data_stats or {}).get("pool"))
    return AggregatorOnly(aggregate=aggregate, exponent=exponent)


def _ensemble_task(config: Config, ds):
    from gaflax.ensembles import EnsembleTask  # its libraries are optional

    return EnsembleTask(config, ds)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``build(config, kind, num_classes, data_stats)`` -> a flax module for a
    dataset of ``kind`` (one of ``kinds``); ``data_stats`` as ``gaflax.tasks.degree_stats``. A
    model that is not a flax module (a tree ensemble) names the ``task`` that trains it instead."""

    build: Callable[[Config, str, int], nn.Module] | None
    kinds: tuple[str, ...]
    task: Callable | None = None


#: ``model.name`` -> entry; the config class of each is the ``gaflax.config.ModelConfig`` subclass of that name.
MODELS: Registry[ModelEntry] = Registry("model", {
    "gat": ModelEntry(_build_gat, kinds=("node", "graph")),
    "gcn": ModelEntry(_build_backbone, kinds=("node", "graph")),
    "sage": ModelEntry(_build_backbone, kinds=("node", "graph")),
    "gin": ModelEntry(_build_backbone, kinds=("node", "graph")),
    "mlp": ModelEntry(_build_mlp, kinds=("tabular",)),
    "aggregator": ModelEntry(_build_aggregator, kinds=("aggregator_regression",)),
    **{name: ModelEntry(None, kinds=("tabular",), task=_ensemble_task) for name in ("xgboost", "lightgbm", "bagging")},
})
