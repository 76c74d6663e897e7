"""Training and evaluation (library code: no Hydra, no W&B).

``train_and_evaluate(config, out_dir, writers)`` trains a GAT node classifier full-batch with Adam
and L2 weight decay, stops early on validation (patience, as in the GAT paper: stop when neither
the validation loss nor the validation accuracy improved for ``patience`` epochs), evaluates the
test set once, with the parameters of the best validation epoch, and writes the run directory:

    config.json      the resolved configuration
    versions.json    library versions and the device
    metrics.jsonl    one line per epoch (always written, whatever logger is on)
    results.json     test/accuracy, val/accuracy, best_epoch, alphas, seconds_per_epoch, ...

Seeds: init, dropout and data splits use separate keys derived from ``config.seed``.
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import gaflax
from gaflax import data as gdata
from gaflax import metrics
from gaflax.config import Config
from gaflax.models import GAT, add_self_loops, alphas_from_intermediates


class JsonlWriter:
    """Appends one JSON object per ``log`` call to ``metrics.jsonl``."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)

    def log(self, step: int, values: dict):
        self.file.write(json.dumps({"epoch": step, **values}) + "\n")

    def close(self):
        self.file.close()


def versions() -> dict:
    import optax as _optax  # noqa: F401  (imported for its version)

    from gaflax.compat import jraph

    return {
        "gaflax": gaflax.__version__, "jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "flax": flax.__version__, "optax": optax.__version__, "jraph": getattr(jraph, "__version__", "0.0.6.dev0"),
        "numpy": np.__version__, "python": platform.python_version(), "device": str(jax.devices()[0]),
        "platform": jax.default_backend(),
    }


def _model(config: Config, num_classes: int) -> GAT:
    m, p = config.model, config.pool
    layer = dict(v2=m.v2, aggregator=p.name, positive=p.positive, alpha=p.alpha, learn_alpha=p.learn,
                 alpha_scope=p.scope, alpha_lr_mult=p.lr_mult, dropout=m.dropout, attention_dropout=m.attention_dropout)
    return GAT(num_classes=num_classes, hidden=m.hidden, heads=m.heads, out_heads=m.out_heads,
               num_layers=m.num_layers, layer=layer)


def _optimizer(config: Config, params):
    # Coupled L2 (added to the gradient before Adam), on every weight except the GA exponents.
    mask = jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", "") != "alpha_theta", params)
    return optax.chain(optax.add_decayed_weights(config.optimizer.weight_decay, mask), optax.adam(config.optimizer.lr))


def make_steps(model, tx):
    """Pure train / eval steps; jit them once per run (shapes never change in full-batch training)."""

    def loss_fn(params, graph, labels, mask, key, deterministic):
        logits, state = model.apply({"params": params}, graph, deterministic=deterministic, rngs={"dropout": key},
                                    mutable=["intermediates"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        loss = jnp.sum(jnp.where(mask, ce, 0)) / jnp.maximum(mask.sum(), 1)
        return loss, (logits, state.get("intermediates", {}))

    def train_step(params, opt_state, graph, labels, mask, key):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, graph, labels, mask, key, False)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def eval_step(params, graph, labels, masks):
        _, (logits, intermediates) = loss_fn(params, graph, labels, masks[0], jax.random.key(0), True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        losses = jnp.stack([jnp.sum(jnp.where(m, ce, 0)) / jnp.maximum(m.sum(), 1) for m in masks])
        return logits, losses, intermediates

    return train_step, eval_step


def train_and_evaluate(config: Config, out_dir, writers=()) -> dict:
    """Train, early-stop on validation, test once; returns (and writes) the results dict."""
    config.validate()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    (out / "versions.json").write_text(json.dumps(versions(), indent=2))

    ds = gdata.load(config.dataset.name, config.dataset.root, **_dataset_options(config))
    if not isinstance(ds, gdata.NodeDataset) or ds.task != "classification":
        raise ValueError(f"train_and_evaluate: {config.dataset.name!r} is not a node classification dataset; "
                         "graph-level training is not implemented yet")
    key_init, key_dropout, _ = jax.random.split(jax.random.key(config.seed), 3)
    train_mask, val_mask, test_mask = (jnp.asarray(m) for m in ds.split(config.seed))
    graph = jax.tree.map(jnp.asarray, ds.graph)
    if config.model.add_self_loops:
        graph = add_self_loops(graph)
    labels = jnp.asarray(ds.labels)

    model = _model(config, ds.num_classes)
    params = model.init({"params": key_init, "dropout": key_dropout}, graph, deterministic=True)["params"]
    tx = _optimizer(config, params)
    opt_state = tx.init(params)
    train_step, eval_step = make_steps(model, tx)
    masks = jnp.stack([train_mask, val_mask, test_mask])

    start = time.perf_counter()
    train_step = jax.jit(train_step).lower(params, opt_state, graph, labels, train_mask, key_dropout).compile()
    eval_step = jax.jit(eval_step).lower(params, graph, labels, masks).compile()
    compile_seconds = time.perf_counter() - start

    jsonl = JsonlWriter(out / "metrics.jsonl")
    writers = [jsonl, *writers]
    best = dict(epoch=-1, val_acc=-1.0, val_loss=np.inf, params=params, alphas={})
    since_improvement, epoch_times = 0, []
    bar = tqdm(range(config.trainer.max_epochs), disable=not config.trainer.progress, desc=config.dataset.name)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            params, opt_state, train_loss = train_step(params, opt_state, graph, labels, train_mask,
                                                       jax.random.fold_in(key_dropout, epoch))
            logits, losses, intermediates = eval_step(params, graph, labels, masks)
            pred = np.asarray(jnp.argmax(logits, -1))
            val_acc = metrics.accuracy(ds.labels[np.asarray(val_mask)], pred[np.asarray(val_mask)])
            losses = np.asarray(losses)
            epoch_times.append(time.perf_counter() - t0)
            alphas = alphas_from_intermediates(intermediates)
            row = {"train/loss": float(train_loss), "val/loss": float(losses[1]), "val/accuracy": val_acc,
                   "train/accuracy": metrics.accuracy(ds.labels[np.asarray(train_mask)], pred[np.asarray(train_mask)]),
                   "seconds": epoch_times[-1], "alphas": alphas}
            for writer in writers:
                writer.log(epoch, row)
            bar.set_postfix(loss=f"{float(train_loss):.3f}", val_acc=f"{val_acc:.3f}")
            improved_acc, improved_loss = val_acc > best["val_acc"], losses[1] < best["val_loss"]
            if improved_acc or (val_acc == best["val_acc"] and improved_loss):
                best.update(epoch=epoch, params=params, alphas=alphas)
            if improved_acc or improved_loss:
                best["val_acc"], best["val_loss"] = max(val_acc, best["val_acc"]), min(losses[1], best["val_loss"])
                since_improvement = 0
            else:
                since_improvement += 1
                if since_improvement >= config.trainer.patience:
                    break
    finally:
        bar.close()
        jsonl.close()

    # The test set is evaluated once, with the parameters of the best validation epoch.
    logits, losses, _ = eval_step(best["params"], graph, labels, masks)
    results = {"best_epoch": best["epoch"], "epochs": epoch + 1, "alphas": best["alphas"],
               "compile_seconds": compile_seconds,
               "seconds_per_epoch": float(np.median(epoch_times)), "device": str(jax.devices()[0])}
    pred = np.asarray(jnp.argmax(logits, -1))
    for split, mask in (("train", train_mask), ("val", val_mask), ("test", test_mask)):
        m = np.asarray(mask)
        results[f"{split}/accuracy"] = metrics.accuracy(ds.labels[m], pred[m])
        results[f"{split}/macro_f1"] = metrics.macro_f1(ds.labels[m], pred[m], ds.num_classes)
        if ds.num_classes == 2:
            auc = metrics.roc_auc(ds.labels[m], np.asarray(jax.nn.softmax(logits, -1))[m, 1])
            if np.isfinite(auc):
                results[f"{split}/roc_auc"] = auc
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _dataset_options(config: Config) -> dict:
    options = dict(config.dataset.options)
    if config.dataset.name in gdata.PLANETOID + gdata.SHCHUR:
        options.setdefault("normalize_features", config.dataset.normalize_features)
    return options
