"""Tasks: what is trained on a kind of dataset, behind one small interface.

A task is built from a config and a dataset (``__init__``: data to the device, model, optimizer,
compiled steps) and then offers

    train_epoch(epoch) -> np.ndarray [M]         the training loss of each member
    predict(params) -> [(splits, alphas)] * M    splits: {split: (labels, outputs, mean loss)}
    select(new, old, take [M] bool) -> params    keep ``new`` for the members in ``take``

for ``M = num_members`` runs trained together: a sequential run is a grid of one, and ``NodeGrid``
wraps ``NodeTask``'s steps in ``vmap`` to train many seeds (or fixed exponents) as one program.
``TASKS`` maps a dataset's kind (``node``, ``graph``, ``tabular``, ``aggregator_regression``) to its task; ``gaflax.train``
holds the one epoch loop that drives them all.

Seeds: init, dropout and data splits use separate keys derived from ``config.seed``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gaflax import data as gdata
from gaflax import devices as gdevices
from gaflax import losses, programs
from gaflax.config import Config
from gaflax.models import MODELS, add_self_loops, alphas_from_intermediates, sparse_features
from gaflax.pooling import AGGREGATORS
from gaflax.pooling import from_config as pool_from_config
from gaflax.registry import Registry

#: Node features with fewer non-zeros than this fraction go to the model as ``SparseFeatures``.
SPARSE_BELOW = 0.1


def degree_stats(config: Config, ds, train_indices=None) -> dict:
    """Statistics of the training graphs that some aggregators take as options, per config section
    (``{"pool": {...}, "readout": {...}}``): PNA's ``delta``, the mean of log(d + 1) where d is a
    node's in-degree (self-loops counted when the model adds them) for ``pool``, and a graph's
    number of nodes for ``readout``. A node task's graph is its training graph (transductive); a
    graph task passes its training fold's ``train_indices``. Only computed for PNA."""
    if ds.kind not in ("node", "graph") or "pna" not in (config.pool.name, config.readout.name):
        return {}
    graphs = [ds.graph] if ds.kind == "node" else [ds[i] for i in (range(len(ds)) if train_indices is None
                                                                      else train_indices)]
    loops = 1 if getattr(config.model, "add_self_loops", False) else 0
    degrees = np.concatenate([np.bincount(np.asarray(g.receivers), minlength=g.nodes.shape[0]) + loops for g in graphs])
    sizes = np.array([g.nodes.shape[0] for g in graphs])
    return {"pool": {"delta": float(np.mean(np.log(degrees + 1)))},
            "readout": {"delta": float(np.mean(np.log(sizes + 1)))}}


def build_model(config: Config, ds, train_indices=None):
    """The flax module of ``config.model`` for this dataset (its kind and number of classes, and
    the training graphs' ``degree_stats``)."""
    stats = degree_stats(config, ds, train_indices)
    return MODELS.lookup(config.model.name, "model.name").build(config, ds.kind, ds.num_classes, stats)


#: Model state that gradients do not train (batch normalisation's running statistics) rides in the
#: parameter tree under this key, so that it is kept with the best epoch and vmapped with a grid's
#: members like the weights. The optimizer leaves it alone (zero gradient, no decay) and the train
#: step writes its new value (``make_steps``).
STATE = "batch_stats"

#: Parameters without weight decay: the GA exponents, the aggregators' own parameters (p, t) and
#: the model state.
UNDECAYED = ("alpha_theta", "aggregator_params", "readout_params", STATE)  # (aggregator_weights are decayed)


def as_params(variables) -> dict:
    """A flax variable dict -> the task's parameter tree: ``params``, with ``STATE`` if the model has it."""
    params = dict(variables.get("params", {}))
    if STATE in variables:
        params[STATE] = variables[STATE]
    return params


def as_variables(params) -> dict:
    """The task's parameter tree -> the flax variable dict ``model.apply`` takes."""
    variables = {"params": {k: v for k, v in params.items() if k != STATE}}
    if STATE in params:
        variables[STATE] = params[STATE]
    return variables


def make_optimizer(config: Config, params):
    # Coupled L2 (added to the gradient before Adam), on every weight except the UNDECAYED.
    def decayed(path, _):
        return not any(getattr(k, "key", "") in UNDECAYED for k in path)

    mask = jax.tree_util.tree_map_with_path(decayed, params)
    return optax.chain(optax.add_decayed_weights(config.optimizer.weight_decay, mask), optax.adam(config.optimizer.lr))


def auxiliary_loss(state) -> jax.Array:
    """The auxiliary losses the aggregators sowed during ``apply`` (GenAgg's inverse
    reconstruction, collection ``losses``), summed; 0 when there are none."""
    return sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(state.get("losses", {})))


def make_steps(model, tx, loss=losses.cross_entropy, mesh=None):
    """Pure train / eval steps for masked classification: ``mask`` marks the nodes (full batch) or
    the real graphs (padded batches) that count, and ``loss(logits, labels, mask)`` is one of
    ``gaflax.losses``. ``eval_step`` takes a stack of masks and returns the logits, the loss under
    each mask and the sown intermediates (the alphas). ``alpha`` (optional, GAT only) is the value
    of the fixed GA exponents, passed as an input so that a grid can vmap over it.

    ``mesh`` (data-parallel graph batches, ``gaflax.devices.data_mesh``): the graph, labels and
    masks carry a leading device axis (``gaflax.data.pad_shards``); each device runs the model on
    its group, and the loss is computed on every group's logits together, as on one device. The
    logits come back flattened to ``[devices * graphs per group, ...]``. Each device draws its own
    dropout (the key folded with its index), and auxiliary losses are averaged over the devices."""

    def apply(params, graph, key, deterministic, alpha):
        """(logits, intermediates, auxiliary loss, the new model state or None)."""
        extra = {} if alpha is None else {"alpha": alpha}
        mutable = ["intermediates", "losses"] + ([STATE] if STATE in params and not deterministic else [])
        logits, state = model.apply(as_variables(params), graph, deterministic=deterministic, rngs={"dropout": key},
                                    mutable=mutable, **extra)
        return logits, state.get("intermediates", {}), auxiliary_loss(state), state.get(STATE)

    if mesh is None:
        forward, flat = apply, lambda x: x
    else:
        from jax.sharding import PartitionSpec

        axis = gdevices.DATA_AXIS

        def forward(params, graph, key, deterministic, alpha):
            def local(params, graph, key, alpha):
                graph = jax.tree.map(lambda a: a[0], graph)  # this device's group
                key = jax.random.fold_in(key, jax.lax.axis_index(axis))
                return jax.tree.map(lambda a: jnp.asarray(a)[None], apply(params, graph, key, deterministic, alpha))

            outs = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(),
                                                             PartitionSpec()),
                                 out_specs=PartitionSpec(axis))(params, graph, key, alpha)
            logits, intermediates, auxiliary, state = outs
            first = lambda tree: jax.tree.map(lambda a: a[0], tree)  # the same on every device
            return flat(logits), first(intermediates), jnp.mean(auxiliary), first(state)

        def flat(x):
            """[devices, per group, ...] -> [devices * per group, ...]"""
            return x.reshape((-1,) + x.shape[2:])

    def train_step(params, opt_state, graph, labels, mask, key, alpha=None):
        labels, mask = flat(labels), flat(mask)

        def objective(params):
            logits, _, auxiliary, new_state = forward(params, graph, key, False, alpha)
            return loss(logits, labels, mask) + auxiliary, new_state

        (value, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if new_state is not None:  # the running statistics of this step's batch
            params = {**params, STATE: new_state}
        return params, opt_state, value

    def eval_step(params, graph, labels, masks, alpha=None):
        logits, intermediates, _, _ = forward(params, graph, jax.random.key(0), True, alpha)
        labels = flat(labels)
        return logits, jnp.stack([loss(logits, labels, flat(m)) for m in masks]), intermediates

    return train_step, eval_step


def init_params(model, key_init, key_dropout, inputs):
    """The model's initial parameters, computed by one compiled program: initialising eagerly
    dispatched each of the model's small ops on its own, a few seconds per run."""
    return jax.jit(lambda k_init, k_dropout, x: as_params(model.init({"params": k_init, "dropout": k_dropout}, x,
                                                                     deterministic=True)))(key_init, key_dropout, inputs)


def outputs(logits, ds) -> np.ndarray:
    """Class probabilities [n, C] for classification; the predicted values [n] for regression."""
    return np.asarray(logits[..., 0] if ds.task == "regression" else jax.nn.softmax(logits, -1))


def run_keys(seed: int):
    """(init, dropout) keys of a run: the same for a sequential run and its grid member."""
    key_init, key_dropout, _ = jax.random.split(jax.random.key(seed), 3)
    return key_init, key_dropout


SPLITS = ("train", "val", "test")


class Task:
    """The shared part of the interface: one member, whose best parameters are kept whole."""

    num_members = 1
    params = None
    compile_seconds = 0.0

    def select(self, new, old, take):
        return new if take[0] else old

    def stop_member(self, m: int):
        """Member ``m`` has stopped early (the epoch loop reads none of its results any more)."""

    def predict_running(self, params) -> list:
        """The epoch loop's evaluation: ``predict``, where members that have stopped may be None."""
        return self.predict(params)


class _FullBatch(Task):
    """Full-batch training with fixed shapes and AOT-compiled steps. Subclasses give the inputs
    (``_inputs``): what the model evaluates on, and what it trains on."""

    def __init__(self, config: Config, ds, compile: bool = True):
        """``compile=False`` leaves ``train_step`` / ``eval_step`` uncompiled; ``steps`` holds
        the pure functions (``NodeGrid`` vmaps them)."""
        self.ds, self.seed = ds, config.seed
        key_init, self.key_dropout = run_keys(config.seed)
        self.masks_np = ds.split(config.seed)
        self.masks = jnp.stack([jnp.asarray(m) for m in self.masks_np])
        self.inputs, self.labels, self.train_inputs, self.train_labels, self.train_mask = self._inputs(config)
        self.mesh = None
        if config.trainer.shard == "edges":  # gaflax.devices: the edges split, everything else replicated
            self.mesh = gdevices.edge_mesh(gdevices.resolve_devices(config.trainer.devices))
            graph = gdevices.shard_edges(gdevices.pad_edges(self.inputs, self.mesh.size), self.mesh)
            self.labels, self.masks, self.train_mask = gdevices.replicate((self.labels, self.masks, self.train_mask),
                                                                          self.mesh)
            self.inputs = self.train_inputs = graph
            self.train_labels = self.labels
        self.model = build_model(config, ds)
        self.params = init_params(self.model, key_init, self.key_dropout, self.inputs)
        if self.mesh is not None:
            self.params = gdevices.replicate(self.params, self.mesh)
        self.tx = make_optimizer(config, self.params)
        self.opt_state = self.tx.init(self.params)
        self.steps = make_steps(self.model, self.tx, losses.make_loss(config.loss))
        if compile:
            self._compile(config)

    def _compile(self, config: Config):
        train_step, eval_step = self.steps
        start = time.perf_counter()
        # What the steps close over besides their arguments (gaflax.programs): the seed only
        # reaches them through the arguments (keys, masks) and the data statistics.
        key = {"task": type(self).__name__, "config": {k: v for k, v in config.to_dict().items() if k != "seed"},
               "data": self.ds.fingerprint, "data_stats": degree_stats(config, self.ds)}
        train_args, eval_args = self.step_arguments()
        cache = self.mesh is None
        self.train_step = programs.compile_step(train_step, train_args, key | {"step": "train"}, cache)
        self.eval_step = programs.compile_step(eval_step, eval_args, key | {"step": "eval"}, cache)
        self.compile_seconds = time.perf_counter() - start

    def step_arguments(self) -> tuple[tuple, tuple]:
        """The arguments the train and eval steps are compiled for (those of the first epoch)."""
        return ((self.params, self.opt_state, self.train_inputs, self.train_labels, self.train_mask, self.key_dropout),
                (self.params, self.inputs, self.labels, self.masks))

    def _train_mask(self, epoch):
        return self.train_mask

    def train_epoch(self, epoch) -> np.ndarray:
        self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, self.train_inputs,
                                                            self.train_labels, self._train_mask(epoch),
                                                            jax.random.fold_in(self.key_dropout, epoch))
        return np.asarray(loss)[None]

    def predict(self, params) -> list:
        logits, split_losses, intermediates = self.eval_step(params, self.inputs, self.labels, self.masks)
        probs = outputs(logits, self.ds)
        splits = {split: (self.ds.labels[m], probs[m], float(loss))
                  for split, m, loss in zip(SPLITS, self.masks_np, np.asarray(split_losses))}
        return [(splits, alphas_from_intermediates(intermediates))]


def node_inputs(config: Config, ds):
    """The node dataset's graph (with self-loops if the model wants them) and labels, on device.
    Sparse features (bag-of-words) stay sparse unless the layer aggregates them directly."""
    graph = ds.graph
    aggregate_first = getattr(config.model, "aggregate_first", False)
    if np.count_nonzero(graph.nodes) < SPARSE_BELOW * graph.nodes.size and not aggregate_first:
        graph = graph._replace(nodes=sparse_features(graph.nodes))  # the dense matrix never goes to the device
    graph = jax.tree.map(jnp.asarray, graph)
    return add_self_loops(graph) if getattr(config.model, "add_self_loops", False) else graph, jnp.asarray(ds.labels)


def balanced_train_mask(train_mask, labels, seed: int, epoch: int):
    """The class-balanced training subset for ``(seed, epoch)``: the same draw for a sequential
    run and for the grid member with that seed."""
    return jnp.asarray(gdata.balanced_node_mask(train_mask, labels, np.random.default_rng([seed, epoch])))


class NodeTask(_FullBatch):
    """Node classification (or regression) on one graph, full batch; ``trainer.resample=balanced``
    trains on a fresh class-balanced subset of the training nodes each epoch."""

    def _inputs(self, config):
        self.balanced = config.trainer.resample == "balanced"
        graph, labels = node_inputs(config, self.ds)
        return graph, labels, graph, labels, self.masks[0]

    def _train_mask(self, epoch):
        if self.balanced:
            mask = balanced_train_mask(self.masks_np[0], self.ds.labels, self.seed, epoch)
            return mask if self.mesh is None else gdevices.replicate(mask, self.mesh)
        return self.train_mask


class TabularTask(_FullBatch):
    """Rows of a table, full batch: features standardised with the training rows' statistics;
    the training rows may be resampled (``trainer.resample``), so training gets its own inputs."""

    def _inputs(self, config):
        x, x_train, y_train = tabular_arrays(config, self.ds, self.masks_np[0])
        y_train = jnp.asarray(y_train)
        return jnp.asarray(x), jnp.asarray(self.ds.labels), jnp.asarray(x_train), y_train, jnp.ones(y_train.shape, bool)


def tabular_arrays(config: Config, ds, train_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x [N, F], x_train, y_train)``: every row standardised with the training rows' mean and
    std, and the training rows resampled by ``trainer.resample`` (the MLP's and the tree
    ensembles' inputs alike)."""
    train_x = ds.features[train_mask]
    mean, std = train_x.mean(0), train_x.std(0)
    x = ((ds.features - mean) / np.where(std > 0, std, 1)).astype(np.float32)
    x_train, y_train = gdata.resample(x[train_mask], ds.labels[train_mask], config.trainer.resample, config.seed)
    return x, x_train, y_train


def standardized(ds, train_indices):
    """``ds`` with every node feature column that is not binary (continuous attributes, not one-hot
    labels) shifted and scaled to mean 0 and std 1 over the nodes of the training graphs
    ``train_indices``; validation and test graphs take the same shift and scale. Columns without
    spread keep their scale. GIN's sum of ENZYMES' raw attributes (values up to 762) starts at a
    loss near 1000 without this."""
    x = np.concatenate([np.asarray(ds.graphs[i].nodes) for i in train_indices])
    binary = np.all((x == 0) | (x == 1), axis=0)
    std = x.std(axis=0)
    shift = np.where(binary, 0, x.mean(axis=0))
    scale = np.where(binary | (std == 0), 1, std)
    graphs = [g._replace(nodes=((np.asarray(g.nodes) - shift) / scale).astype(np.asarray(g.nodes).dtype))
              for g in ds.graphs]
    return dataclasses.replace(ds, graphs=graphs)


class GraphTask(Task):
    """Graph classification on padded mini-batches (at most three shapes, so three compiles),
    on one of 10 stratified outer folds (``trainer.fold``) with an inner holdout for validation.

    ``trainer.shard=data``: each batch is split over ``trainer.devices`` devices (one padded group
    of graphs each; ``make_steps``'s ``mesh``); the batches, their order and the loss are those of
    one device, so without dropout the run equals the single-device run to float rounding."""

    def __init__(self, config: Config, ds):
        self.ds, self.seed = ds, config.seed
        key_init, self.key_dropout = run_keys(config.seed)
        self._eval_cache = {}
        self.batch_size = config.trainer.batch_size
        self.indices = dict(zip(SPLITS, ds.folds(seed=config.seed)[config.trainer.fold]))
        # trainer.evaluate_test=false (model selection): the outer test fold is never batched
        self.splits = SPLITS if config.trainer.evaluate_test else tuple(s for s in SPLITS if s != "test")
        if config.dataset.standardize:
            self.ds = ds = standardized(ds, self.indices["train"])
        self.mesh = None
        if config.trainer.shard == "data":
            self.mesh = gdevices.data_mesh(gdevices.resolve_devices(config.trainer.devices))
        self.shards = 1 if self.mesh is None else self.mesh.size
        self.budgets = gdata.budgets_for(ds, -(-self.batch_size // self.shards))
        self.model = build_model(config, ds, self.indices["train"])
        self.add_loops = getattr(config.model, "add_self_loops", False)
        first = self._device(next(gdata.iterate_batches(ds, self.indices["train"][: self.batch_size],
                                                         self.batch_size, self.budgets, shards=self.shards)))
        example = first[0] if self.mesh is None else jax.tree.map(lambda a: a[0], first[0])
        self.params = init_params(self.model, key_init, self.key_dropout, example)
        if self.mesh is not None:
            self.params = gdevices.replicate(self.params, self.mesh)
        tx = make_optimizer(config, self.params)
        self.opt_state = tx.init(self.params)
        train_step, eval_step = make_steps(self.model, tx, losses.make_loss(config.loss), self.mesh)
        self.train_step, self.eval_step = jax.jit(train_step), jax.jit(eval_step)
        start = time.perf_counter()
        jax.block_until_ready(self.eval_step(self.params, first[0], first[1], first[2][None]))
        self.compile_seconds = time.perf_counter() - start  # one shape; others compile on first use

    def _device(self, batch):
        """(graph, labels, graph mask) on the device(s); data parallel: split over the mesh."""
        arrays = (batch.graph, batch.labels, batch.graph_mask)
        if self.mesh is None:
            (graph, labels, mask), loops = jax.tree.map(jnp.asarray, arrays), add_self_loops
        else:
            (graph, labels, mask), loops = gdevices.shard_batch(arrays, self.mesh), jax.vmap(add_self_loops)
        return (loops(graph) if self.add_loops else graph), labels, mask

    def _batches(self, split, epoch=0):
        yield from gdata.iterate_batches(self.ds, self.indices[split], self.batch_size, self.budgets,
                                         shuffle=split == "train", seed=self.seed, epoch=epoch, shards=self.shards)

    def train_epoch(self, epoch) -> np.ndarray:
        batch_losses = []
        for i, batch in enumerate(self._batches("train", epoch)):
            key = jax.random.fold_in(jax.random.fold_in(self.key_dropout, epoch), i)
            self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, *self._device(batch), key)
            batch_losses.append(loss)  # on the device: one transfer per epoch, not one per batch
        return np.asarray([np.mean(np.asarray(jax.device_get(batch_losses)))])

    def _eval_batches(self, split) -> list:
        """``split``'s batches in order, as (device arguments, labels, real-graph mask), built once:
        evaluation every epoch sees the same batches."""
        if split not in self._eval_cache:
            cached = []
            for batch in self._batches(split):
                labels, keep = batch.labels, batch.graph_mask
                if self.mesh is not None:  # the devices' groups, in order, as the logits come
                    labels, keep = labels.reshape((-1,) + labels.shape[2:]), keep.reshape(-1)
                cached.append((self._device(batch), labels[keep], keep))
            self._eval_cache[split] = cached
        return self._eval_cache[split]

    def predict(self, params) -> list:
        out, alphas = {}, {}
        for split in self.splits:
            batches = self._eval_batches(split)
            # Dispatch every batch before reading any back: the device never waits for the host.
            steps = [self.eval_step(params, graph, labels, mask[None]) for (graph, labels, mask), _, _ in batches]
            labels, probs, loss_sum = [], [], 0.0
            for (logits, batch_loss, intermediates), (_, batch_labels, keep) in zip(steps, batches):
                labels.append(batch_labels)
                probs.append(outputs(logits, self.ds)[keep])
                loss_sum += float(batch_loss[0]) * keep.sum()  # weighted by the batch's real graphs
                alphas = alphas_from_intermediates(intermediates)
            labels = np.concatenate(labels)
            out[split] = (labels, np.concatenate(probs), loss_sum / max(len(labels), 1))
        return [(out, alphas)]


@jax.jit
def _select_members(new, old, take):
    """Member m of ``new`` where ``take[m]``, else of ``old`` (a leading member axis)."""
    return jax.tree.map(lambda a, b: jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


class _Grid(Task):
    """A task whose parameters carry a leading member axis: each member keeps its own best epoch."""

    def select(self, new, old, take):
        return _select_members(new, old, jnp.asarray(take)) if np.any(take) else old

    def _member_mesh(self, devices):
        """The grid's ``trainer.devices``: None for one, else a mesh its members split over
        (gaflax.devices)."""
        return None if devices == 1 else gdevices.member_mesh(gdevices.resolve_devices(devices), self.num_members)


class NodeGrid(_Grid):
    """Many seeds (and fixed exponents) of one node-task run in one compiled program.

    It wraps an uncompiled ``NodeTask`` of the first member (its graph, model, optimizer and pure
    steps). Parameters, optimizer states, dropout keys, split masks and the fixed GA exponent get a
    leading member axis and the steps are ``vmap``ped over it, so member ``m`` computes what a
    sequential run with its seed and alpha computes (to float rounding: batched and unbatched
    matmuls may round differently, and the exponent is an input here, a constant there).
    """

    def __init__(self, configs: list[Config], ds, devices=1, grid_step="auto"):
        self.ds, self.num_members = ds, len(configs)
        self.seeds, self.balanced = [c.seed for c in configs], configs[0].trainer.resample == "balanced"
        keys = [run_keys(c.seed) for c in configs]
        keys_init = jnp.stack([k[0] for k in keys])
        self.keys_dropout = jnp.stack([k[1] for k in keys])
        self.masks_np = [ds.split(c.seed) for c in configs]  # per member: (train, val, test)
        self.masks = jnp.asarray(np.stack([np.stack(m) for m in self.masks_np]))  # [M, 3, N]
        config = configs[0]
        base = NodeTask(config, ds, compile=False)
        self.graph, self.labels, model, tx = base.inputs, base.labels, base.model, base.tx
        train_step, eval_step = base.steps

        def init(key_init, key_dropout):
            return as_params(model.init({"params": key_init, "dropout": key_dropout}, self.graph, deterministic=True))

        self.params = jax.jit(jax.vmap(init))(keys_init, self.keys_dropout)
        self.opt_state = jax.jit(jax.vmap(tx.init))(self.params)
        # A fixed exponent is an input of the program, one per member (vmap=alphas varies it).
        fixed_alpha = AGGREGATORS.lookup(config.pool.name, "pool.name").takes_exponent and not config.pool.learn
        self.alphas = jnp.asarray([c.pool.alpha for c in configs], jnp.float32) if fixed_alpha else None
        alpha_axis = 0 if fixed_alpha else None
        self.mesh = self._place(devices)

        def train_members(params, opt_state, graph, labels, train_masks, keys, alphas, epoch):
            keys = jax.vmap(jax.random.fold_in, (0, None))(keys, epoch)
            return jax.vmap(train_step, (0, 0, None, None, 0, 0, alpha_axis))(
                params, opt_state, graph, labels, train_masks, keys, alphas)

        self.loop = _grid_step(grid_step, devices) == "loop"
        self.running = np.ones(self.num_members, bool)  # loop: the members still training
        start = time.perf_counter()
        if self.loop:
            self._compile_member_steps(train_step, eval_step)
        else:
            self.train_step = jax.jit(train_members).lower(self.params, self.opt_state, self.graph, self.labels,
                                                           self.masks[:, 0], self.keys_dropout, self.alphas,
                                                           0).compile()
            self.eval_step = jax.jit(jax.vmap(eval_step, (0, None, None, 0, alpha_axis))).lower(
                self.params, self.graph, self.labels, self.masks, self.alphas).compile()
        self.compile_seconds = time.perf_counter() - start

    def _compile_member_steps(self, train_step, eval_step):
        """``trainer.grid_step=loop``: one compiled step for one member, given its index; it reads
        and writes that member's slice of the stacked parameters and optimizer state (donated, so
        updated in place). Member m computes what the vmapped grid's member m computes."""

        def pick(a, m):
            return None if a is None else jax.lax.dynamic_index_in_dim(a, m, keepdims=False)

        def put(stacked, member, m):
            return jax.tree.map(lambda a, x: jax.lax.dynamic_update_index_in_dim(a, x, m, 0), stacked, member)

        def train_member(params, opt_state, graph, labels, train_masks, keys, alphas, epoch, m):
            member = jax.tree.map(lambda a: pick(a, m), (params, opt_state))
            key = jax.random.fold_in(pick(keys, m), epoch)
            new_params, new_state, loss = train_step(*member, graph, labels, pick(train_masks, m), key,
                                                     pick(alphas, m))
            return put(params, new_params, m), put(opt_state, new_state, m), loss

        def eval_member(params, graph, labels, masks, alphas, m):
            return eval_step(jax.tree.map(lambda a: pick(a, m), params), graph, labels, pick(masks, m),
                             pick(alphas, m))

        m = jnp.int32(0)
        self.train_step = jax.jit(train_member, donate_argnums=(0, 1)).lower(
            self.params, self.opt_state, self.graph, self.labels, self.masks[:, 0], self.keys_dropout, self.alphas,
            0, m).compile()
        self.eval_step = jax.jit(eval_member).lower(self.params, self.graph, self.labels, self.masks,
                                                    self.alphas, m).compile()

    def stop_member(self, m: int):
        """Member ``m`` has stopped early: the loop step no longer trains or evaluates it."""
        self.running[m] = False

    def _place(self, devices):
        """The grid's ``trainer.devices`` > 1: the member axis split over a mesh of devices
        (gaflax.devices), the graph and labels on every device; None (one device) otherwise."""
        mesh = self._member_mesh(devices)
        if mesh is None:
            return None
        self.params, self.opt_state, self.keys_dropout, self.masks, self.alphas = gdevices.shard_members(
            (self.params, self.opt_state, self.keys_dropout, self.masks, self.alphas), mesh)
        self.graph, self.labels = gdevices.replicate((self.graph, self.labels), mesh)
        return mesh

    def _train_masks(self, epoch):
        train_masks = self.masks[:, 0]
        if self.balanced:
            train_masks = jnp.stack([balanced_train_mask(masks[0], self.ds.labels, seed, epoch)
                                     for masks, seed in zip(self.masks_np, self.seeds)])
            if self.mesh is not None:
                train_masks = gdevices.shard_members(train_masks, self.mesh)
        return train_masks

    def train_epoch(self, epoch) -> np.ndarray:
        train_masks = self._train_masks(epoch)
        if not self.loop:
            self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, self.graph,
                                                                self.labels, train_masks, self.keys_dropout,
                                                                self.alphas, epoch)
            return np.asarray(loss)
        losses = []
        for m in range(self.num_members):
            if self.running[m]:
                self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, self.graph,
                                                                    self.labels, train_masks, self.keys_dropout,
                                                                    self.alphas, epoch, jnp.int32(m))
            else:
                loss = jnp.float32(jnp.nan)  # stopped: fit no longer reads it
            losses.append(loss)
        return np.asarray(jnp.stack(losses))

    def predict_running(self, params) -> list:
        return self.predict(params, running_only=self.loop)

    def predict(self, params, running_only: bool = False) -> list:
        """Each member's splits and learned exponents; with ``running_only``, None for the members
        that have stopped (the loop step does not evaluate them)."""
        if self.loop:
            members = [m for m in range(self.num_members) if self.running[m] or not running_only]
            evaluated = [self.eval_step(params, self.graph, self.labels, self.masks, self.alphas, jnp.int32(m))
                         for m in members]
            logits, split_losses, intermediates = jax.tree.map(lambda *a: jnp.stack(a), *evaluated)
        else:
            members = range(self.num_members)
            logits, split_losses, intermediates = self.eval_step(params, self.graph, self.labels, self.masks,
                                                                 self.alphas)
        probs, split_losses = outputs(logits, self.ds), np.asarray(split_losses)
        out = [None] * self.num_members
        for i, m in enumerate(members):
            splits = {split: (self.ds.labels[mask], probs[i][mask], float(loss))
                      for split, mask, loss in zip(SPLITS, self.masks_np[m], split_losses[i])}
            out[m] = (splits, alphas_from_intermediates(jax.tree.map(lambda x: x[i], intermediates)))
        return out


def _grid_step(grid_step, devices) -> str:
    """``trainer.grid_step`` resolved: auto is loop on one CPU device, vmap otherwise."""
    if grid_step != "auto":
        return grid_step
    return "loop" if devices == 1 and jax.default_backend() == "cpu" else "vmap"


class AggregatorRegressionGrid(_Grid):
    """GenAgg's aggregator-regression benchmark (``gaflax.data.aggregator_regression``): the
    aggregator alone learns to be the target aggregate, on fresh graphs at every step. The seeds
    of a grid (a sequential run is a grid of one) train as one vmapped program; each "epoch" is
    ``steps_per_epoch`` steps in one ``lax.scan``, then an evaluation.

    Member m starts from ``run_keys(seed)[0]`` and draws its training graphs from
    ``run_keys(seed)[1]`` folded with the epoch and step. The splits are three fixed sets of
    ``eval_graphs`` graphs, drawn from keys no training step uses, the same for every member:
    ``train`` (reported only), ``val`` (early stopping and the best epoch) and ``test``. Its steps
    are tiny, so its members are always vmapped (``trainer.grid_step`` auto or vmap).
    """

    #: The keys of the fixed evaluation sets.
    EVAL_KEYS = {"train": 2**31 - 3, "val": 2**31 - 2, "test": 2**31 - 1}

    def __init__(self, configs: list[Config], ds, devices=1, grid_step="auto"):
        if grid_step == "loop":
            raise ValueError("trainer.grid_step=loop: the aggregator-regression grid always vmaps its members "
                             "(each step is tiny); use trainer.grid_step=auto or vmap")
        from gaflax.data.aggregator_regression import edge_lists, edge_slots, sample_graphs

        self.ds, self.num_members = ds, len(configs)
        config = configs[0]
        model = build_model(config, ds)
        loss = losses.make_loss(config.loss)
        n, channels = ds.nodes_per_graph, ds.channels
        slots = {b: edge_slots(b, n, ds.density) for b in (ds.graphs_per_step, ds.eval_graphs, 2)}
        self.train_slots = slots[ds.graphs_per_step]

        def draw(key, num_graphs):
            """(x_j per edge slot [S, C], receivers [S], y [B n, C], more edges than slots?)"""
            x, adjacency, y = sample_graphs(key, ds.target, num_graphs, n, channels, ds.density)
            senders, receivers, num_edges = edge_lists(adjacency, slots[num_graphs])
            return x.reshape(-1, channels)[senders], receivers, y.reshape(-1, channels), num_edges > slots[num_graphs]

        def forward(params, messages, receivers, num_nodes):
            """Predictions for the ``num_nodes`` nodes; the segment ``num_nodes`` collects the unused slots."""
            predicted, state = model.apply({"params": params}, messages, receivers, num_nodes + 1,
                                           mutable=["intermediates", "losses"])
            return predicted[:num_nodes], state.get("intermediates", {}), auxiliary_loss(state)

        def mse(predicted, y):
            return loss(predicted.reshape(-1, 1), y.reshape(-1))

        keys = [run_keys(c.seed) for c in configs]
        self.keys_data = jnp.stack([k[1] for k in keys])
        example = draw(jax.random.key(0), 2)[:2]
        self.params = jax.jit(jax.vmap(lambda k: model.init({"params": k}, *example, 2 * n + 1).get("params", {})))(
            jnp.stack([k[0] for k in keys]))
        tx = make_optimizer(config, self.params)
        # axis_size: the untrained floor (pool=mean) has no parameters to vmap over
        self.opt_state = jax.jit(jax.vmap(tx.init, axis_size=self.num_members))(self.params)

        def train_member(params, opt_state, key, epoch):
            key = jax.random.fold_in(key, epoch)

            def step(carry, index):
                params, opt_state = carry

                def objective(params):
                    messages, receivers, y, overflow = draw(jax.random.fold_in(key, index), ds.graphs_per_step)
                    predicted, _, auxiliary = forward(params, messages, receivers, y.shape[0])
                    return mse(predicted, y) + auxiliary, overflow

                (value, overflow), grads = jax.value_and_grad(objective, has_aux=True)(params)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), (value, overflow)

            (params, opt_state), (values, overflow) = jax.lax.scan(step, (params, opt_state),
                                                                   jnp.arange(ds.steps_per_epoch))
            return params, opt_state, jnp.mean(values), jnp.any(overflow)

        eval_sets = [draw(jax.random.key(self.EVAL_KEYS[split]), ds.eval_graphs) for split in SPLITS]
        self._check_slots(any(bool(overflow) for *_, overflow in eval_sets), "an evaluation set",
                          slots[ds.eval_graphs])
        self.eval_sets = [drawn[:3] for drawn in eval_sets]
        mesh = self._member_mesh(devices)
        if mesh is not None:
            self.params, self.opt_state, self.keys_data = gdevices.shard_members(
                (self.params, self.opt_state, self.keys_data), mesh)
            self.eval_sets = gdevices.replicate(self.eval_sets, mesh)

        def eval_member(params, eval_sets):
            outs = []
            for messages, receivers, y in eval_sets:
                predicted, intermediates, _ = forward(params, messages, receivers, y.shape[0])
                outs.append((predicted, mse(predicted, y)))
            return [o[0] for o in outs], jnp.stack([o[1] for o in outs]), intermediates

        start = time.perf_counter()
        self.train_step = jax.jit(jax.vmap(train_member, (0, 0, 0, None))).lower(
            self.params, self.opt_state, self.keys_data, 0).compile()
        self.eval_step = jax.jit(jax.vmap(eval_member, (0, None), axis_size=self.num_members)).lower(
            self.params, self.eval_sets).compile()
        self.compile_seconds = time.perf_counter() - start
        self.targets = [np.asarray(y).reshape(-1) for _, _, y in self.eval_sets]

    @staticmethod
    def _check_slots(overflow: bool, what: str, slots: int):
        if overflow:  # ~12 standard deviations above the mean edge count at the paper's settings
            raise RuntimeError(f"aggregator_regression: {what} had more edges than its {slots} edge slots "
                               "(gaflax.data.aggregator_regression.edge_slots); its edges would be cut off")

    def train_epoch(self, epoch) -> np.ndarray:
        self.params, self.opt_state, loss, overflow = self.train_step(self.params, self.opt_state, self.keys_data,
                                                                      epoch)
        self._check_slots(bool(np.any(overflow)), f"a training batch of epoch {epoch}", self.train_slots)
        return np.asarray(loss)

    def predict(self, params) -> list:
        predicted, split_losses, intermediates = self.eval_step(params, self.eval_sets)
        predicted, split_losses = [np.asarray(p) for p in predicted], np.asarray(split_losses)
        out = []
        for m in range(self.num_members):
            splits = {split: (targets, predicted[i][m].reshape(-1), float(split_losses[m, i]))
                      for i, (split, targets) in enumerate(zip(SPLITS, self.targets))}
            out.append((splits, alphas_from_intermediates(jax.tree.map(lambda x: x[m], intermediates))))
        return out


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """A dataset kind's task: ``single(config, ds)`` trains one run; ``grid(configs, ds)`` (None:
    not available) trains a vmapped grid of runs that differ only in seed and fixed exponent."""

    single: type
    grid: type | None = None


TASKS: Registry[TaskEntry] = Registry("task", {
    "node": TaskEntry(NodeTask, grid=NodeGrid),
    "graph": TaskEntry(GraphTask),
    "tabular": TaskEntry(TabularTask),
    "aggregator_regression": TaskEntry(lambda config, ds: AggregatorRegressionGrid([config], ds),
                                       grid=AggregatorRegressionGrid),
})


def grid_members(config: Config) -> list[tuple[str, Config]]:
    """The members of a vmapped grid, as (directory name, the sequential run's config):
    ``trainer.vmap=seeds`` gives ``num_members`` seeds (``seed``, ``seed + 1``, ...);
    ``trainer.vmap=alphas`` gives every fixed exponent in ``trainer.alphas`` times those seeds."""
    t = config.trainer
    single = dataclasses.replace(t, vmap="none", num_members=1, alphas=(), devices=1, grid_step="auto")
    seeds = range(config.seed, config.seed + t.num_members)
    if t.vmap == "seeds":
        return [(f"seed_{s}", dataclasses.replace(config, seed=s, trainer=single)) for s in seeds]
    return [(f"alpha_{a:g}_seed_{s}", dataclasses.replace(config, seed=s, trainer=single,
                                                          pool=dataclasses.replace(config.pool, alpha=float(a))))
            for a in t.alphas for s in seeds]


def load_dataset(config: Config):
    """The dataset of ``config.dataset``, with the ``dataset.*`` options its registry entry takes."""
    entry = gdata.lookup(config.dataset.name, "dataset.name")
    options = dict(config.dataset.options)
    for name in entry.config_options:
        options.setdefault(name, getattr(config.dataset, name))
    return gdata.load(config.dataset.name, config.dataset.root, **options)


def check_fits(config: Config, ds):
    """Look every component up in its registry (an unknown name raises, naming its key) and check
    the settings that are valid on their own but not for this kind of data: a clear error, before
    anything compiles."""
    name, t = config.dataset.name, config.trainer
    model = MODELS.lookup(config.model.name, "model.name")
    if model.task is not None:  # a tree ensemble (gaflax.ensembles)
        from gaflax.ensembles import check_ensemble

        check_ensemble(config, ds)
    loss = losses.LOSSES.lookup(config.loss.name, "loss.name")
    resampler = gdata.RESAMPLERS.lookup(t.resample, "trainer.resample")
    for key in ("pool", "readout"):
        pool_from_config(getattr(config, key), key)  # the name and its options
    if config.dataset.standardize and ds.kind != "graph":
        raise ValueError(f"dataset.standardize=true is for graph datasets (node feature columns standardised "
                         f"with the training fold's statistics); {name!r} is a {ds.kind} dataset")
    if ds.kind not in model.kinds:
        fitting = sorted(n for n, e in MODELS.items() if ds.kind in e.kinds)
        raise ValueError(f"model.name={config.model.name!r} does not fit the {ds.kind} dataset {name!r}; "
                         f"use model={' or model='.join(fitting)}")
    if ds.task == "regression":
        wrong = {"trainer.monitor": (t.monitor, "loss"), "decision.threshold": (config.decision.threshold, "argmax"),
                 "trainer.resample": (t.resample, "none")}
        for key, (value, needed) in wrong.items():
            if value != needed:
                raise ValueError(f"{key}={value!r} does not fit the regression dataset {name!r}; use {needed!r}")
    if loss.task != ds.task:
        fitting = sorted(n for n, e in losses.LOSSES.items() if e.task == ds.task)
        raise ValueError(f"loss.name={config.loss.name!r} does not fit the {ds.task} dataset {name!r}: it is for "
                         f"{loss.task}; use one of {fitting}")
    if ds.kind not in resampler.kinds:
        allowed = sorted(n for n, e in gdata.RESAMPLERS.items() if ds.kind in e.kinds)
        raise ValueError(f"trainer.resample={t.resample!r} does not fit dataset {name!r}; choose one of {allowed}")
    if ds.num_classes != 2 and (t.monitor in ("roc_auc", "average_precision") or config.decision.threshold == "tuned"):
        raise ValueError(f"trainer.monitor={t.monitor!r} / decision.threshold={config.decision.threshold!r}: "
                         f"{name!r} has {ds.num_classes} classes; these need a binary task")
    if t.shard == "edges" and ds.kind != "node":
        raise ValueError(f"trainer.shard=edges splits a graph's edges over devices (full-batch node tasks); {name!r} "
                         f"is a {ds.kind} dataset" + (" (use trainer.shard=data)" if ds.kind == "graph" else ""))
    if t.shard == "data" and ds.kind != "graph":
        raise ValueError(f"trainer.shard=data splits batches of graphs over devices; {name!r} is a {ds.kind} dataset "
                         "(full-batch tasks split a vmapped grid's members: trainer.shard=members)")
    if t.vmap != "none":
        if TASKS[ds.kind].grid is None:
            raise ValueError(f"trainer.vmap={t.vmap}: {name!r} is not a node dataset; "
                             "vmapped grids exist for node classification (and regression) only")
        if t.vmap == "alphas" and not AGGREGATORS[config.pool.name].takes_exponent:
            raise ValueError(f"trainer.vmap=alphas needs a pool that takes an exponent; pool.name={config.pool.name!r} "
                             f"does not (choose one of {sorted(n for n, a in AGGREGATORS.items() if a.takes_exponent)})")
