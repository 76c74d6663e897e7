"""Training and evaluation (library code: no Hydra, no W&B).

``train_and_evaluate(config, out_dir, writers)`` trains a GAT node classifier full-batch (or a
GraphGAT graph classifier on padded mini-batches, one of 10 stratified folds) with Adam and L2
weight decay, stops early on validation (patience, as in the GAT paper: stop when neither
the validation loss nor the validation accuracy improved for ``patience`` epochs), evaluates the
test set once, with the parameters of the best validation epoch, and writes the run directory:

    config.json      the resolved configuration
    versions.json    library versions and the device
    metrics.jsonl    one line per epoch (always written, whatever logger is on)
    results.json     test/accuracy, val/accuracy, best_epoch, alphas, seconds_per_epoch, ...

Seeds: init, dropout and data splits use separate keys derived from ``config.seed``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from gaflax import data as gdata
from gaflax import losses, metrics
from gaflax.config import Config
from gaflax.models import GAT, MLP, GraphGAT, add_self_loops, alphas_from_intermediates, sparse_features
from gaflax.pooling import USES_ALPHA


class JsonlWriter:
    """Writes one JSON object per ``log`` call to ``metrics.jsonl`` (a new file per run)."""

    def __init__(self, path):
        self.file = open(path, "w", buffering=1)

    def log(self, step: int, values: dict):
        self.file.write(json.dumps({"epoch": step, **values}) + "\n")

    def close(self):
        self.file.close()


def versions() -> dict:
    """Installed versions of the libraries a run depends on, and the device it ran on."""
    from importlib.metadata import version

    return {
        **{name: version(name) for name in ("gaflax", "jax", "jaxlib", "flax", "optax", "jraph", "numpy")},
        "python": platform.python_version(), "device": str(jax.devices()[0]), "platform": jax.default_backend(),
    }


def _layer_kwargs(config: Config) -> dict:
    """Keyword arguments shared by every GATLayer of a model."""
    m, p = config.model, config.pool
    return dict(v2=m.v2, attention=m.attention, aggregate_first=m.aggregate_first, aggregator=p.name,
                positive=p.positive, alpha=p.alpha, learn_alpha=p.learn, alpha_scope=p.scope, alpha_lr_mult=p.lr_mult,
                dropout=m.dropout, attention_dropout=m.attention_dropout)


def _model(config: Config, num_classes: int):
    m = config.model
    if m.name == "mlp":
        return MLP(num_classes=num_classes, hidden=m.hidden, num_layers=m.num_layers, dropout=m.dropout)
    return GAT(num_classes=num_classes, hidden=m.hidden, heads=m.heads, out_heads=m.out_heads,
               num_layers=m.num_layers, layer=_layer_kwargs(config))


def _optimizer(config: Config, params):
    # Coupled L2 (added to the gradient before Adam), on every weight except the GA exponents.
    mask = jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", "") != "alpha_theta", params)
    return optax.chain(optax.add_decayed_weights(config.optimizer.weight_decay, mask), optax.adam(config.optimizer.lr))


def make_steps(model, tx, loss=losses.cross_entropy):
    """Pure train / eval steps for masked classification: ``mask`` marks the nodes (full batch) or
    the real graphs (padded batches) that count, and ``loss(logits, labels, mask)`` is one of
    ``gaflax.losses``. ``eval_step`` takes a stack of masks and returns the logits, the loss under
    each mask and the sown intermediates (the alphas). ``alpha`` (optional, GAT only) is the value
    of the fixed GA exponents, passed as an input so that a grid can vmap over it."""

    def forward(params, graph, key, deterministic, alpha):
        extra = {} if alpha is None else {"alpha": alpha}
        logits, state = model.apply({"params": params}, graph, deterministic=deterministic, rngs={"dropout": key},
                                    mutable=["intermediates"], **extra)
        return logits, state.get("intermediates", {})

    def train_step(params, opt_state, graph, labels, mask, key, alpha=None):
        def objective(params):
            return loss(forward(params, graph, key, False, alpha)[0], labels, mask)

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def eval_step(params, graph, labels, masks, alpha=None):
        logits, intermediates = forward(params, graph, jax.random.key(0), True, alpha)
        return logits, jnp.stack([loss(logits, labels, m) for m in masks]), intermediates

    return train_step, eval_step


def _outputs(logits, ds) -> np.ndarray:
    """Class probabilities [n, C] for classification; the predicted values [n] for regression."""
    return np.asarray(logits[..., 0] if ds.task == "regression" else jax.nn.softmax(logits, -1))


def _loss(config: Config):
    c = config.loss
    return losses.make_loss(c.name, gamma=c.gamma, alpha=c.alpha, per_class=c.per_class)


#: Node features with fewer non-zeros than this fraction go to the model as ``SparseFeatures``.
SPARSE_BELOW = 0.1


def _node_inputs(config: Config, ds):
    """The node dataset's graph (with self-loops if the model wants them) and labels, on device.
    Sparse features (bag-of-words) stay sparse unless the layer aggregates them directly."""
    graph = ds.graph
    if np.count_nonzero(graph.nodes) < SPARSE_BELOW * graph.nodes.size and not config.model.aggregate_first:
        graph = graph._replace(nodes=sparse_features(graph.nodes))  # the dense matrix never goes to the device
    graph = jax.tree.map(jnp.asarray, graph)
    return add_self_loops(graph) if config.model.add_self_loops else graph, jnp.asarray(ds.labels)


def _balanced_train_mask(train_mask, labels, seed: int, epoch: int):
    """The class-balanced training subset for ``(seed, epoch)``: the same draw for a sequential
    run and for the grid member with that seed."""
    return jnp.asarray(gdata.balanced_node_mask(train_mask, labels, np.random.default_rng([seed, epoch])))


def _tabular_inputs(config: Config, ds, train_mask):
    """Features standardised with the training rows' statistics, and the (resampled) training rows."""
    train_x = ds.features[train_mask]
    mean, std = train_x.mean(0), train_x.std(0)
    x = ((ds.features - mean) / np.where(std > 0, std, 1)).astype(np.float32)
    x_train, y_train = gdata.resample(x[train_mask], ds.labels[train_mask], config.trainer.resample, config.seed)
    return jnp.asarray(x), jnp.asarray(ds.labels), jnp.asarray(x_train), jnp.asarray(y_train)


class _FullBatchTask:
    """Full-batch classification with fixed shapes and AOT-compiled steps: the nodes of one graph
    (the inputs are the graph) or the rows of a table (the inputs are the standardised features;
    the training rows may be resampled, so training gets its own inputs)."""

    def __init__(self, config: Config, ds, key_init, key_dropout):
        self.ds, self.key_dropout, self.seed = ds, key_dropout, config.seed
        self.masks_np = ds.split(config.seed)
        self.masks = jnp.stack([jnp.asarray(m) for m in self.masks_np])
        self.balanced = config.trainer.resample == "balanced"
        if isinstance(ds, gdata.TabularDataset):
            self.inputs, self.labels, self.train_inputs, self.train_labels = _tabular_inputs(config, ds, self.masks_np[0])
            self.train_mask = jnp.ones(self.train_labels.shape, bool)  # every (resampled) training row
        else:
            self.inputs, self.labels = _node_inputs(config, ds)
            self.train_inputs, self.train_labels, self.train_mask = self.inputs, self.labels, self.masks[0]
        model = _model(config, ds.num_classes)
        self.params = model.init({"params": key_init, "dropout": key_dropout}, self.inputs, deterministic=True)["params"]
        tx = _optimizer(config, self.params)
        self.opt_state = tx.init(self.params)
        train_step, eval_step = make_steps(model, tx, _loss(config))
        start = time.perf_counter()
        self.train_step = jax.jit(train_step).lower(self.params, self.opt_state, self.train_inputs, self.train_labels,
                                                    self.train_mask, key_dropout).compile()
        self.eval_step = jax.jit(eval_step).lower(self.params, self.inputs, self.labels, self.masks).compile()
        self.compile_seconds = time.perf_counter() - start

    def train_epoch(self, epoch):
        mask = self.train_mask
        if self.balanced:  # a fresh class-balanced subset of the training nodes
            mask = _balanced_train_mask(self.masks_np[0], self.ds.labels, self.seed, epoch)
        self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, self.train_inputs,
                                                            self.train_labels, mask,
                                                            jax.random.fold_in(self.key_dropout, epoch))
        return float(loss)

    def predict(self, params):
        """{split: (labels, class probabilities (regression: values), mean loss)} and the alphas,
        for train / val / test."""
        logits, losses, intermediates = self.eval_step(params, self.inputs, self.labels, self.masks)
        probs = _outputs(logits, self.ds)
        out = {split: (self.ds.labels[m], probs[m], float(loss))
               for split, m, loss in zip(("train", "val", "test"), self.masks_np, np.asarray(losses))}
        return out, alphas_from_intermediates(intermediates)


class _NodeGrid:
    """Many seeds (and fixed exponents) of one node-task run in one compiled program.

    Parameters, optimizer states, dropout keys, split masks and the fixed GA exponent get a leading
    member axis and the steps are ``vmap``ped over it, so member ``m`` computes what a sequential
    run with its seed and alpha computes (to float rounding: batched and unbatched matmuls may
    round differently, and the exponent is an input here, a constant there).
    """

    def __init__(self, configs: list[Config], ds):
        self.ds, self.num = ds, len(configs)
        self.seeds, self.balanced = [c.seed for c in configs], configs[0].trainer.resample == "balanced"
        keys = [jax.random.split(jax.random.key(c.seed), 3) for c in configs]
        keys_init = jnp.stack([k[0] for k in keys])
        self.keys_dropout = jnp.stack([k[1] for k in keys])
        self.masks_np = [ds.split(c.seed) for c in configs]  # per member: (train, val, test)
        self.masks = jnp.asarray(np.stack([np.stack(m) for m in self.masks_np]))  # [M, 3, N]
        config = configs[0]
        self.graph, self.labels = _node_inputs(config, ds)
        model = _model(config, ds.num_classes)

        def init(key_init, key_dropout):
            return model.init({"params": key_init, "dropout": key_dropout}, self.graph, deterministic=True)["params"]

        self.params = jax.jit(jax.vmap(init))(keys_init, self.keys_dropout)
        tx = _optimizer(config, jax.tree.map(lambda x: x[0], self.params))
        self.opt_state = jax.jit(jax.vmap(tx.init))(self.params)
        train_step, eval_step = make_steps(model, tx, _loss(config))
        fixed_alpha = config.pool.name in USES_ALPHA and not config.pool.learn
        self.alphas = jnp.asarray([c.pool.alpha for c in configs], jnp.float32) if fixed_alpha else None
        alpha_axis = 0 if fixed_alpha else None

        def train_members(params, opt_state, graph, labels, train_masks, keys, alphas, epoch):
            keys = jax.vmap(jax.random.fold_in, (0, None))(keys, epoch)
            return jax.vmap(train_step, (0, 0, None, None, 0, 0, alpha_axis))(
                params, opt_state, graph, labels, train_masks, keys, alphas)

        start = time.perf_counter()
        self.train_step = jax.jit(train_members).lower(self.params, self.opt_state, self.graph, self.labels,
                                                       self.masks[:, 0], self.keys_dropout, self.alphas, 0).compile()
        self.eval_step = jax.jit(jax.vmap(eval_step, (0, None, None, 0, alpha_axis))).lower(
            self.params, self.graph, self.labels, self.masks, self.alphas).compile()
        self.select = jax.jit(lambda new, old, take: jax.tree.map(
            lambda a, b: jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old))
        self.compile_seconds = time.perf_counter() - start

    def train_epoch(self, epoch) -> np.ndarray:
        train_masks = self.masks[:, 0]
        if self.balanced:
            train_masks = jnp.stack([_balanced_train_mask(masks[0], self.ds.labels, seed, epoch)
                                     for masks, seed in zip(self.masks_np, self.seeds)])
        self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, self.graph, self.labels,
                                                            train_masks, self.keys_dropout, self.alphas, epoch)
        return np.asarray(loss)

    def predict(self, params) -> list:
        """Per member, what ``_FullBatchTask.predict`` returns."""
        logits, losses, intermediates = self.eval_step(params, self.graph, self.labels, self.masks, self.alphas)
        probs, losses = _outputs(logits, self.ds), np.asarray(losses)
        out = []
        for m in range(self.num):
            splits = {split: (self.ds.labels[mask], probs[m][mask], float(loss))
                      for split, mask, loss in zip(("train", "val", "test"), self.masks_np[m], losses[m])}
            out.append((splits, alphas_from_intermediates(jax.tree.map(lambda x: x[m], intermediates))))
        return out


class _GraphTask:
    """Graph classification on padded mini-batches (at most three shapes, so three compiles)."""

    def __init__(self, config: Config, ds, key_init, key_dropout):
        self.ds, self.key_dropout, self.seed = ds, key_dropout, config.seed
        self.batch_size = config.trainer.batch_size
        self.indices = dict(zip(("train", "val", "test"), ds.folds(seed=config.seed)[config.trainer.fold]))
        self.budgets = gdata.budgets_for(ds, self.batch_size)
        m = config.model
        self.model = GraphGAT(num_classes=ds.num_classes, hidden=m.hidden, heads=m.heads, num_layers=m.num_layers,
                              readout=m.readout, readout_lr_mult=m.readout_lr_mult, mlp=tuple(m.mlp),
                              layer=_layer_kwargs(config))
        self.add_loops = m.add_self_loops
        first = self._device(next(gdata.iterate_batches(ds, self.indices["train"][: self.batch_size],
                                                         self.batch_size, self.budgets)))
        self.params = self.model.init({"params": key_init, "dropout": key_dropout}, first[0], deterministic=True)["params"]
        tx = _optimizer(config, self.params)
        self.opt_state = tx.init(self.params)
        train_step, eval_step = make_steps(self.model, tx, _loss(config))
        self.train_step, self.eval_step = jax.jit(train_step), jax.jit(eval_step)
        start = time.perf_counter()
        jax.block_until_ready(self.eval_step(self.params, first[0], first[1], first[2][None]))
        self.compile_seconds = time.perf_counter() - start  # one shape; others compile on first use

    def _device(self, batch):
        graph = jax.tree.map(jnp.asarray, batch.graph)
        graph = add_self_loops(graph) if self.add_loops else graph
        return graph, jnp.asarray(batch.labels), jnp.asarray(batch.graph_mask)

    def _batches(self, split, epoch=0):
        yield from gdata.iterate_batches(self.ds, self.indices[split], self.batch_size, self.budgets,
                                         shuffle=split == "train", seed=self.seed, epoch=epoch)

    def train_epoch(self, epoch):
        losses = []
        for i, batch in enumerate(self._batches("train", epoch)):
            key = jax.random.fold_in(jax.random.fold_in(self.key_dropout, epoch), i)
            self.params, self.opt_state, loss = self.train_step(self.params, self.opt_state, *self._device(batch), key)
            losses.append(float(loss))
        return float(np.mean(losses))

    def predict(self, params):
        out, alphas = {}, {}
        for split in ("train", "val", "test"):
            labels, probs, loss_sum = [], [], 0.0
            for batch in self._batches(split):
                graph, batch_labels, graph_mask = self._device(batch)
                logits, batch_loss, intermediates = self.eval_step(params, graph, batch_labels, graph_mask[None])
                keep = batch.graph_mask
                labels.append(batch.labels[keep])
                probs.append(_outputs(logits, self.ds)[keep])
                loss_sum += float(batch_loss[0]) * keep.sum()  # weighted by the batch's real graphs
                alphas = alphas_from_intermediates(intermediates)
            labels = np.concatenate(labels)
            out[split] = (labels, np.concatenate(probs), loss_sum / max(len(labels), 1))
        return out, alphas


def train_and_evaluate(config: Config, out_dir, writers=(), journal=None, on_duplicate: str = "skip") -> dict:
    """Train, early-stop on validation, test once; returns (and writes) the results dict.

    With a ``gaflax.journal.Journal``, the run is recorded there; an experiment the journal has
    already done is skipped (see ``on_duplicate``) and the earlier results are returned, with
    ``journal/duplicate_of`` set to the earlier run's id.
    """
    config.validate()
    ds = gdata.load(config.dataset.name, config.dataset.root, **_dataset_options(config))
    _check_fits(config, ds)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if journal is None:
        return _train(config, ds, out, writers, heartbeat=lambda: None)

    run_id, earlier = _claim(journal, config, ds, out, on_duplicate)
    if earlier is not None:
        return earlier
    try:
        results = _train(config, ds, out, writers, heartbeat=lambda: journal.heartbeat(run_id))
    except BaseException:
        journal.fail(run_id, traceback.format_exc())
        raise
    results["journal/run_id"] = run_id
    journal.finish(run_id, results)
    return results


def _check_fits(config: Config, ds):
    """Settings that are valid on their own but not for this kind of data: a clear error, early."""
    name, t = config.dataset.name, config.trainer
    if ds.task == "regression":
        wrong = {"loss.name": (config.loss.name, "mse"), "trainer.monitor": (t.monitor, "loss"),
                 "decision.threshold": (config.decision.threshold, "argmax"), "trainer.resample": (t.resample, "none")}
        for key, (value, needed) in wrong.items():
            if value != needed:
                raise ValueError(f"{key}={value!r} does not fit the regression dataset {name!r}; use {needed!r}")
    elif config.loss.name == "mse":
        raise ValueError(f"loss.name='mse' is for regression; {name!r} is a classification dataset")
    tabular = isinstance(ds, gdata.TabularDataset)
    kind, model = ("tabular", "mlp") if tabular else ("graph", "gat")
    if config.model.name != model:
        raise ValueError(f"model.name={config.model.name!r} does not fit the {kind} dataset {name!r}; use model={model}")
    allowed = (gdata.RESAMPLERS if tabular else ("none", "balanced") if isinstance(ds, gdata.NodeDataset)
               else ("none",))
    if t.resample not in allowed:
        raise ValueError(f"trainer.resample={t.resample!r} does not fit dataset {name!r}; choose one of {allowed}")
    if ds.num_classes != 2 and (t.monitor in ("roc_auc", "average_precision") or config.decision.threshold == "tuned"):
        raise ValueError(f"trainer.monitor={t.monitor!r} / decision.threshold={config.decision.threshold!r}: "
                         f"{name!r} has {ds.num_classes} classes; these need a binary task")


def _claim(journal, config: Config, ds, out: pathlib.Path, on_duplicate: str):
    """Ask the journal whether to train ``config``: ``(run_id, None)`` to train, or ``(None,
    earlier results)`` when it skips (a pointer to the earlier run goes to ``duplicate_of.json``)."""
    decision = journal.begin(config.to_dict(), ds.fingerprint, on_duplicate=on_duplicate,
                             hypothesis=config.hypothesis, device=str(jax.devices()[0]), run_dir=out)
    if decision.message:
        print(decision.message, flush=True)
    if decision.run:
        return decision.run_id, None
    earlier = decision.earlier
    (out / "duplicate_of.json").write_text(json.dumps({"journal": str(journal.path), "run_id": earlier["id"],
                                                       "run_dir": earlier["run_dir"]}, indent=2))
    return None, {**(earlier["results"] or {}), "journal/duplicate_of": earlier["id"]}


def grid_members(config: Config) -> list[tuple[str, Config]]:
    """The members of a vmapped grid, as (directory name, the sequential run's config):
    ``trainer.vmap=seeds`` gives ``num_members`` seeds (``seed``, ``seed + 1``, ...);
    ``trainer.vmap=alphas`` gives every fixed exponent in ``trainer.alphas`` times those seeds."""
    t = config.trainer
    single = dataclasses.replace(t, vmap="none", num_members=1, alphas=())
    seeds = range(config.seed, config.seed + t.num_members)
    if t.vmap == "seeds":
        return [(f"seed_{s}", dataclasses.replace(config, seed=s, trainer=single)) for s in seeds]
    return [(f"alpha_{a:g}_seed_{s}", dataclasses.replace(config, seed=s, trainer=single,
                                                          pool=dataclasses.replace(config.pool, alpha=float(a))))
            for a in t.alphas for s in seeds]


def train_grid(config: Config, out_dir, journal=None, on_duplicate: str = "skip") -> list[dict]:
    """Train the members of a grid (``grid_members``) of a node-task run as one vmapped program;
    early stopping is tracked per member.

    Each member writes ``<out_dir>/<member>/`` like a sequential run and is recorded in the journal
    as the sequential run with its seed and alpha (so the two count as the same experiment);
    members the journal already holds are not trained again. Returns the members' results, in
    ``grid_members`` order.
    """
    config.validate()
    ds = gdata.load(config.dataset.name, config.dataset.root, **_dataset_options(config))
    _check_fits(config, ds)
    if not isinstance(ds, gdata.NodeDataset):
        raise ValueError(f"trainer.vmap={config.trainer.vmap}: {config.dataset.name!r} is not a node dataset; "
                         "vmapped grids exist for node classification (and regression) only")
    members = grid_members(config)
    out = pathlib.Path(out_dir)
    results, todo = {}, []
    for i, (name, member) in enumerate(members):
        member_dir = out / name
        member_dir.mkdir(parents=True, exist_ok=True)
        run_id, earlier = _claim(journal, member, ds, member_dir, on_duplicate) if journal else (None, None)
        if earlier is not None:
            results[i] = earlier
        else:
            todo.append((i, member, member_dir, run_id))
    if todo:
        try:
            trained = _train_grid([m for _, m, _, _ in todo], ds, [d for _, _, d, _ in todo],
                                  heartbeat=lambda: [journal.heartbeat(r) for *_, r in todo] if journal else None)
        except BaseException:
            for *_, run_id in todo:
                if run_id is not None:
                    journal.fail(run_id, traceback.format_exc())
            raise
        for (i, _, _, run_id), member_results in zip(todo, trained):
            if run_id is not None:
                member_results["journal/run_id"] = run_id
                journal.finish(run_id, member_results)
            results[i] = member_results
    return [results[i] for i in range(len(members))]


def _train_grid(members: list[Config], ds, out_dirs, heartbeat) -> list[dict]:
    config, installed = members[0], versions()
    for member, out in zip(members, out_dirs):
        _write_run_files(out, member, installed)
    grid = _NodeGrid(members, ds)
    trackers = [_EarlyStopping(config.trainer.patience, config.trainer.monitor) for _ in members]
    best_params = grid.params
    jsonls = [JsonlWriter(out / "metrics.jsonl") for out in out_dirs]
    epoch_times = []
    bar = tqdm(range(config.trainer.max_epochs), disable=not config.trainer.progress,
               desc=f"{config.dataset.name} x{len(members)}")
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            train_losses = grid.train_epoch(epoch)
            predictions = grid.predict(grid.params)
            epoch_times.append(time.perf_counter() - t0)
            take = np.zeros(len(members), bool)
            for m, ((splits, alphas), tracker) in enumerate(zip(predictions, trackers)):
                if tracker.stopped:
                    continue
                row = _epoch_row(float(train_losses[m]), splits, alphas, epoch_times[-1], config.trainer.monitor)
                jsonls[m].log(epoch, row)
                take[m] = tracker.update(epoch, row, alphas)
            if take.any():
                best_params = grid.select(grid.params, best_params, jnp.asarray(take))
            heartbeat()
            bar.set_postfix(running=sum(not t.stopped for t in trackers))
            if all(t.stopped for t in trackers):
                break
    finally:
        bar.close()
        for jsonl in jsonls:
            jsonl.close()

    # Each member's test set is evaluated once, with its best validation epoch's parameters.
    out = []
    for member, tracker, (splits, _), out_dir in zip(members, trackers, grid.predict(best_params), out_dirs):
        results = _results(member, ds, tracker, splits, grid.compile_seconds, float(np.median(epoch_times)), out_dir)
        results["grid_members"] = len(members)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        out.append(results)
    return out


def _write_run_files(out: pathlib.Path, config: Config, installed: dict):
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    (out / "versions.json").write_text(json.dumps(installed, indent=2))


def _train(config: Config, ds, out: pathlib.Path, writers, heartbeat) -> dict:
    _write_run_files(out, config, versions())
    key_init, key_dropout, _ = jax.random.split(jax.random.key(config.seed), 3)
    task_cls = _GraphTask if isinstance(ds, gdata.GraphDataset) else _FullBatchTask
    task = task_cls(config, ds, key_init, key_dropout)

    jsonl = JsonlWriter(out / "metrics.jsonl")
    writers = [jsonl, *writers]
    tracker, best_params = _EarlyStopping(config.trainer.patience, config.trainer.monitor), task.params
    epoch_times = []
    bar = tqdm(range(config.trainer.max_epochs), disable=not config.trainer.progress, desc=config.dataset.name)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            train_loss = task.train_epoch(epoch)
            splits, alphas = task.predict(task.params)
            epoch_times.append(time.perf_counter() - t0)
            row = _epoch_row(train_loss, splits, alphas, epoch_times[-1], config.trainer.monitor)
            for writer in writers:
                writer.log(epoch, row)
            heartbeat()
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{row.get('val/accuracy', row['val/loss']):.3f}")
            if tracker.update(epoch, row, alphas):
                best_params = task.params
            if tracker.stopped:
                break
    finally:
        bar.close()
        jsonl.close()

    # The test set is evaluated once, with the parameters of the best validation epoch.
    splits, _ = task.predict(best_params)
    results = _results(config, ds, tracker, splits, task.compile_seconds, float(np.median(epoch_times)), out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


class _EarlyStopping:
    """The GAT paper's rule, for any monitored validation metric: stop when neither the metric
    nor the validation loss improved for ``patience`` epochs; the best epoch is the one with the
    best metric (ties broken by the lower loss). The paper monitors accuracy; ``loss`` monitors
    the loss alone, and ``roc_auc`` / ``average_precision`` suit imbalanced binary tasks."""

    def __init__(self, patience: int, monitor: str = "accuracy"):
        self.patience, self.monitor = patience, monitor
        self.epoch, self.score, self.val_loss, self.alphas = -1, -np.inf, np.inf, {}
        self.since_improvement, self.stopped, self.epochs = 0, False, 0

    def update(self, epoch, row: dict, alphas) -> bool:
        """Record one epoch's row; True when it is the new best (the caller keeps its parameters)."""
        if self.stopped:
            return False
        self.epochs = epoch + 1
        val_loss = row["val/loss"]
        score = -val_loss if self.monitor == "loss" else row[f"val/{self.monitor}"]
        score = -np.inf if np.isnan(score) else score  # e.g. ROC-AUC without positives
        improved_score, improved_loss = score > self.score, val_loss < self.val_loss
        new_best = improved_score or (score == self.score and improved_loss)
        if new_best:
            self.epoch, self.alphas = epoch, alphas
        if improved_score or improved_loss:
            self.score, self.val_loss = max(score, self.score), min(val_loss, self.val_loss)
            self.since_improvement = 0
        else:
            self.since_improvement += 1
            self.stopped = self.since_improvement >= self.patience
        return new_best


def _epoch_row(train_loss, splits, alphas, seconds, monitor: str = "accuracy") -> dict:
    val_labels, val_probs, val_loss = splits["val"]
    row = {"train/loss": train_loss, "val/loss": val_loss, "seconds": seconds, "alphas": alphas}
    if val_probs.ndim == 1:  # regression: the loss is the mean squared error
        return row
    row.update({"val/accuracy": metrics.accuracy(val_labels, val_probs.argmax(-1)),
                "train/accuracy": metrics.accuracy(splits["train"][0], splits["train"][1].argmax(-1))})
    if monitor in ("roc_auc", "average_precision"):
        row[f"val/{monitor}"] = getattr(metrics, monitor)(val_labels, val_probs[:, 1])
    return row


def _decisions(config: Config, ds, splits) -> tuple[dict, float | None]:
    """Predicted labels per split, and the threshold when ``decision.threshold`` is tuned: the one
    that maximises the decision's GA score on the validation set, applied to every split."""
    d = config.decision
    if ds.num_classes != 2 or d.threshold == "argmax":
        return {split: probs.argmax(-1) for split, (_, probs, _) in splits.items()}, None
    val_labels, val_probs, _ = splits["val"]
    threshold, _ = metrics.select_threshold(val_labels, val_probs[:, 1], p=d.p, weights=d.weights)
    return {split: (probs[:, 1] >= threshold).astype(np.int32) for split, (_, probs, _) in splits.items()}, threshold


def _results(config: Config, ds, tracker: _EarlyStopping, splits, compile_seconds, seconds_per_epoch,
             out: pathlib.Path) -> dict:
    if not config.trainer.evaluate_test:
        splits = {k: v for k, v in splits.items() if k != "test"}
    results = {"best_epoch": tracker.epoch, "epochs": tracker.epochs, "alphas": tracker.alphas,
               "compile_seconds": compile_seconds, "seconds_per_epoch": seconds_per_epoch,
               "device": str(jax.devices()[0])}
    if ds.task == "regression":
        for split, (targets, predicted, _) in splits.items():
            results.update({f"{split}/{k}": v for k, v in metrics.regression_summary(targets, predicted).items()})
        if "test" in splits:  # the trivial baseline: predict the training mean
            mean = np.full(len(splits["test"][0]), np.mean(splits["train"][0]))
            results["baselines"] = {"train_mean": metrics.regression_summary(splits["test"][0], mean)}
        return results
    predicted, threshold = _decisions(config, ds, splits)
    binary = ds.num_classes == 2
    if threshold is not None:
        results["decision/threshold"] = threshold
    for split, (labels, probs, _) in splits.items():
        scores = probs[:, 1] if binary else None
        for name, value in metrics.summary(labels, predicted[split], ds.num_classes, scores).items():
            results[f"{split}/{name}"] = value
        if binary:
            d = config.decision
            results[f"{split}/ga_score"] = float(metrics.ga_score(labels, predicted[split], p=d.p, weights=d.weights))
    if binary:  # the positive-class scores at the best epoch, for PR curves
        np.savez_compressed(out / "predictions.npz", **{
            f"{split}_{kind}": array for split, (labels, probs, _) in splits.items() if split != "train"
            for kind, array in (("labels", labels), ("scores", probs[:, 1].astype(np.float32)))})
    if "test" not in splits:
        return results
    # The trivial baselines on the same test set: a model should beat all three.
    test_labels = splits["test"][0]
    results["baselines"] = {
        name: metrics.summary(test_labels, pred, ds.num_classes, probs[:, 1] if binary else None)
        for name, (pred, probs) in metrics.trivial_baselines(splits["train"][0], test_labels, ds.num_classes,
                                                             config.seed).items()}
    return results


def _dataset_options(config: Config) -> dict:
    options = dict(config.dataset.options)
    if config.dataset.name in gdata.PLANETOID + gdata.SHCHUR:
        options.setdefault("normalize_features", config.dataset.normalize_features)
    return options
