"""Grid members over several devices (gaflax.devices): four forced host devices on the CPU give
what one device gives. JAX fixes its device count at start-up, so each case runs in a fresh
process with XLA_FLAGS=--xla_force_host_platform_device_count=4."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from gaflax.config import Config
from gaflax.pooling import AGGREGATORS
from gaflax.tasks import build_model, init_params, load_dataset, node_inputs, run_keys

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile
import jax, numpy as np
from gaflax.config import Config
from gaflax.tasks import TASKS, grid_members, load_dataset
from gaflax.train import train_grid
out = {"devices": len(jax.devices())}
for name, raw in json.loads(sys.argv[1]).items():
    many = raw.pop("devices")
    for devices in (1, many):
        config = Config.from_dict({**raw, "trainer": {**raw["trainer"], "devices": devices}})
        with tempfile.TemporaryDirectory() as tmp:
            members = train_grid(config, tmp)
        out[f"{name}/{devices}"] = [{k: m[k] for k in ("best_epoch", "epochs", "val/accuracy", "test/accuracy", "alphas")
                                     if k in m} for m in members]
    ds = load_dataset(config)  # the grid's arrays stay split over the devices, before and after an epoch
    task = TASKS[ds.kind].grid([c for _, c in grid_members(config)], ds, devices=many)
    placed = {len(x.sharding.device_set) for x in jax.tree.leaves(task.params)}
    task.train_epoch(0)
    out[f"{name}/placed"] = sorted(placed | {len(x.sharding.device_set) for x in jax.tree.leaves(task.params)})
print("RESULT " + json.dumps(out))
"""


def _run_child(cases: dict, child: str = CHILD) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", child, json.dumps(cases)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _flat(value):
    return [x for v in value for x in _flat(v)] if isinstance(value, list) else [float(value)]


def _assert_same(one, many):
    """Each member's best epoch, epochs, accuracies and learned exponents agree (the exponents to
    float rounding: the devices may reduce in another order)."""
    assert len(one) == len(many)
    for a, b in zip(one, many):
        assert (a["best_epoch"], a["epochs"], a["val/accuracy"]) == (b["best_epoch"], b["epochs"], b["val/accuracy"])
        assert a["test/accuracy"] == b["test/accuracy"]
        assert a.get("alphas", {}).keys() == b.get("alphas", {}).keys()
        for name in a.get("alphas", {}):
            x, y = _flat(a["alphas"][name]), _flat(b["alphas"][name])
            assert len(x) == len(y) and max(abs(u - v) for u, v in zip(x, y)) < 1e-4, name


@pytest.mark.slow
def test_grids_over_several_devices_equal_one_device():
    """On 4 forced host devices: four seeds of a learned-alpha GA inside a GCN split over 4
    devices, and two fixed alphas with balanced resampling over 2, each against the same grid on
    one device."""
    data = {"name": "synthetic", "options": {"num_nodes": 120, "task": "classification", "num_classes": 3}}
    cases = {
        "seeds": {"dataset": data, "model": {"name": "gcn"}, "pool": {"name": "ga", "learn": True},
                  "trainer": {"max_epochs": 5, "patience": 5, "progress": False, "vmap": "seeds", "num_members": 4},
                  "devices": 4},
        "alphas": {"dataset": data, "model": {"name": "gcn"}, "pool": {"name": "ga", "learn": False},
                   "trainer": {"max_epochs": 5, "patience": 5, "progress": False, "vmap": "alphas",
                               "alphas": [-0.5, 0.5], "resample": "balanced"},
                   "devices": 2},
    }
    out = _run_child(cases)
    assert out["devices"] == 4
    assert out["seeds/placed"] == [4] and out["alphas/placed"] == [2]
    _assert_same(out["seeds/1"], out["seeds/4"])
    _assert_same(out["alphas/1"], out["alphas/2"])
    assert len(out["seeds/4"]) == 4 and all(m["alphas"] for m in out["seeds/4"])


DATA_PARALLEL_CHILD = r"""
import json, sys
import jax, numpy as np, optax
import gaflax.tasks
from gaflax.config import Config
from gaflax.losses import make_loss
from gaflax.tasks import STATE, GraphTask, load_dataset, make_steps
# Train with plain SGD: Adam divides by the root of the second moment, so where a gradient is ~0 in
# exact arithmetic (the bias before a batch norm) it turns rounding noise, which differs with the
# order of the sums over devices, into full steps of +-lr; the predictions then differed by 1.4e-3
# on CI's CPU. Under SGD the rounding noise stays rounding noise, and every parameter can be compared.
gaflax.tasks.make_optimizer = lambda config, params: optax.sgd(0.001)
out = {"devices": len(jax.devices())}
for name, raw in json.loads(sys.argv[1]).items():
    runs = {}
    for devices in (1, raw.pop("devices")):
        shard = "members" if devices == 1 else "data"
        config = Config.from_dict({**raw, "trainer": {**raw["trainer"], "devices": devices, "shard": shard}})
        task = GraphTask(config, load_dataset(config))
        # One step of SGD with learning rate 1 from the initial parameters: its update is the gradient.
        sgd = optax.sgd(1.0)
        step = jax.jit(make_steps(task.model, sgd, make_loss(config.loss), task.mesh)[0])
        stepped, _, first_loss = step(task.params, sgd.init(task.params), *task._device(next(task._batches("train"))),
                                      jax.random.key(0))
        grads = jax.tree.map(lambda a, b: np.asarray(a - b).ravel().tolist(),
                             {k: v for k, v in task.params.items() if k != STATE},
                             {k: v for k, v in stepped.items() if k != STATE})
        first = (float(first_loss), jax.tree.leaves(grads), [np.asarray(x).ravel().tolist()
                                                             for x in jax.tree.leaves(stepped.get(STATE, {}))])
        initial = [np.asarray(x) for x in jax.tree.leaves(task.params)]
        losses = [float(task.train_epoch(epoch)[0]) for epoch in range(3)]
        (splits, alphas), = task.predict(task.params)
        placed = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(task.params)})
        moved = max(float(np.max(np.abs(np.asarray(x) - a))) for x, a in zip(jax.tree.leaves(task.params), initial))
        runs[devices] = (first, losses, [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(task.params)],
                         {s: (v[0].tolist(), v[1].ravel().tolist(), v[2]) for s, v in splits.items()}, placed,
                         moved)
    out[name] = runs
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_data_parallel_graph_batches_equal_one_device():
    """trainer.shard=data on forced host devices: each batch of 10 graphs split over 4 devices
    (groups of 3, 3, 2, 2) and over 3 (4, 3, 3), the gradients summed across them, gives the
    single-device run: the same training losses, parameters (GIN's batch-norm running statistics
    included: they are taken over every device's real nodes), and predictions on every split. Without
    dropout, which each device draws for itself."""
    data = {"name": "synthetic", "options": {"level": "graph", "num_graphs": 60, "task": "classification",
                                             "num_classes": 3}}
    trainer = {"max_epochs": 3, "patience": 3, "progress": False, "batch_size": 10}
    cases = {
        "gin_bn_ga": {"dataset": data, "model": {"name": "gin", "hidden": 8, "batch_norm": True, "dropout": 0.0},
                      "readout": {"name": "ga", "learn": True}, "trainer": trainer, "devices": 4},
        "gat_sum": {"dataset": data, "model": {"name": "gat", "hidden": 4, "heads": 2, "dropout": 0.0,
                                               "attention_dropout": 0.0, "message_dropout": 0.0},
                    "pool": {"name": "ga", "learn": True}, "readout": {"name": "sum"}, "trainer": trainer,
                    "devices": 3},
    }
    out = _run_child(cases, DATA_PARALLEL_CHILD)
    assert out["devices"] == 4
    for name, many in (("gin_bn_ga", "4"), ("gat_sum", "3")):
        (first_1, loss_1, params_1, splits_1, placed_1, moved_1) = out[name]["1"]
        (first_n, loss_n, params_n, splits_n, placed_n, moved_n) = out[name][many]
        assert placed_1 == [1] and placed_n == [int(many)], name  # replicated over the mesh
        # The first step: loss, gradient of every parameter and the new running statistics.
        np.testing.assert_allclose(first_n[0], first_1[0], rtol=1e-6, err_msg=name)
        for part in (1, 2):
            assert len(first_1[part]) == len(first_n[part]) and (part == 2 or first_1[part])
            for a, b in zip(first_1[part], first_n[part]):
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
        assert bool(first_1[2]) == (name == "gin_bn_ga")
        # Three epochs of SGD (15 steps): the losses, every parameter and the predictions.
        np.testing.assert_allclose(loss_n, loss_1, rtol=1e-5, err_msg=name)
        # It trained: some parameter moved by 10x the tolerance below, so their agreement is not vacuous.
        # (Not "the last loss is lower": at this small step the epoch losses are noisy.)
        assert moved_1 > 1e-4 and moved_n > 1e-4, (name, moved_1, moved_n)
        assert len(params_1) == len(params_n)
        for a, b in zip(params_1, params_n):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)
        assert splits_1.keys() == splits_n.keys() == {"train", "val", "test"}
        for split in splits_1:
            assert splits_1[split][0] == splits_n[split][0], (name, split)  # labels, in order
            np.testing.assert_allclose(splits_n[split][1], splits_1[split][1], atol=1e-4, err_msg=name)
            np.testing.assert_allclose(splits_n[split][2], splits_1[split][2], rtol=1e-4, err_msg=name)


EDGE_CHILD = r"""
import json, sys
import jax, numpy as np, optax
from gaflax.config import Config
from gaflax.losses import make_loss
from gaflax.tasks import NodeTask, load_dataset, make_steps
out = {"devices": len(jax.devices())}
for name, raw in json.loads(sys.argv[1]).items():
    runs = {}
    for devices in (1, raw.pop("devices")):
        shard = "members" if devices == 1 else "edges"
        config = Config.from_dict({**raw, "trainer": {**raw["trainer"], "devices": devices, "shard": shard}})
        task = NodeTask(config, load_dataset(config))
        sgd = optax.sgd(1.0)  # one step with learning rate 1: the update is the gradient
        step = jax.jit(make_steps(task.model, sgd, make_loss(config.loss))[0])
        stepped, _, first_loss = step(task.params, sgd.init(task.params), task.train_inputs, task.train_labels,
                                      task.train_mask, jax.random.key(0))
        grads = [np.asarray(a - b).ravel().tolist() for a, b in zip(jax.tree.leaves(task.params),
                                                                  jax.tree.leaves(stepped))]
        losses = [float(task.train_epoch(epoch)[0]) for epoch in range(3)]
        (splits, alphas), = task.predict(task.params)
        placed = {f: len(getattr(task.inputs, f).sharding.device_set) for f in ("nodes", "senders", "receivers")}
        runs[devices] = (float(first_loss), grads, losses, {s: v[1].ravel().tolist() for s, v in splits.items()},
                         placed, int(task.inputs.senders.shape[0]))
    out[name] = runs
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_edge_sharded_node_training_equals_one_device():
    """trainer.shard=edges on forced host devices: a graph's edges (and their messages) split over
    4 or 3 devices, the segment reductions combined across them by XLA, give one device's loss,
    gradients (one SGD step), training losses over three epochs and predictions: a GAT with GA
    learned per channel (segment_ga's sums and maxima), a GCN with node dropout and PNA. The
    edges are padded to a multiple of the device count."""
    data = {"name": "synthetic", "options": {"num_nodes": 90, "task": "classification", "num_classes": 3}}
    trainer = {"max_epochs": 3, "patience": 3, "progress": False}
    cases = {
        "gat_ga": {"dataset": data, "model": {"name": "gat", "hidden": 4, "heads": 2, "attention_dropout": 0.0},
                   "pool": {"name": "ga", "learn": True, "scope": "channel"}, "trainer": trainer, "devices": 4},
        "gcn_pna": {"dataset": data, "model": {"name": "gcn", "hidden": 8}, "pool": {"name": "pna"},
                    "trainer": trainer, "devices": 3},
    }
    out = _run_child(cases, EDGE_CHILD)
    assert out["devices"] == 4
    for name, many in (("gat_ga", "4"), ("gcn_pna", "3")):
        first_1, grads_1, losses_1, splits_1, placed_1, edges_1 = out[name]["1"]
        first_n, grads_n, losses_n, splits_n, placed_n, edges_n = out[name][many]
        assert placed_n == {"nodes": int(many), "senders": int(many), "receivers": int(many)}, name
        assert edges_n % int(many) == 0 and edges_1 <= edges_n < edges_1 + int(many)
        np.testing.assert_allclose(first_n, first_1, rtol=1e-6, err_msg=name)
        assert len(grads_1) == len(grads_n)
        for a, b in zip(grads_1, grads_n):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(losses_n, losses_1, rtol=1e-5, err_msg=name)
        for split in ("train", "val", "test"):
            np.testing.assert_allclose(splits_n[split], splits_1[split], atol=1e-4, err_msg=name)


@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
def test_padding_edges_changes_nothing(aggregator, x64):
    """pad_edges' extra edges (from and to one node past the last) change no logit and no gradient,
    for every registered aggregator inside a GCN (non-uniform edge weights) and GA inside a GAT;
    in float64, so that rounding (GenAgg's MLPs amplify it to 1e-4 in float32) cannot hide a
    difference."""
    from gaflax import devices

    pool = {"name": aggregator} | ({"learn": True, "scope": "channel"} if AGGREGATORS[aggregator].takes_exponent else {})
    for model in ({"name": "gcn", "hidden": 4}, {"name": "gat", "hidden": 4, "heads": 2}):
        if model["name"] == "gat" and aggregator not in ("ga", "weighted_sum"):
            continue
        config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 30,
                                                                                "task": "classification"}},
                                   "model": model, "pool": pool})
        ds = load_dataset(config)
        model_ = build_model(config, ds)
        graph = node_inputs(config, ds)[0]
        num_edges = graph.senders.shape[0]
        padded = jax.tree.map(jnp.asarray, devices.pad_edges(graph, num_edges + 5))  # 5 extra edges
        assert padded.senders.shape[0] == num_edges + 5 and int(padded.n_edge.sum()) == num_edges + 5
        assert np.all(np.asarray(padded.receivers[num_edges:]) == graph.nodes.shape[0])
        params = init_params(model_, *run_keys(0), graph)

        def loss(params, graph):
            logits = model_.apply({"params": params}, graph, deterministic=True, mutable=["intermediates", "losses"])[0]
            return jnp.sum(jnp.sin(logits)), logits

        value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))  # op by op took minutes
        (_, logits), grads = value_and_grad(params, graph)
        (_, logits_padded), grads_padded = value_and_grad(params, padded)
        assert np.all(np.isfinite(logits_padded))
        assert logits.dtype == jnp.float64
        np.testing.assert_allclose(logits_padded, logits, rtol=1e-9, atol=1e-12, err_msg=str(model))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_padded)):
            np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-9, err_msg=str(model))


def test_device_settings_are_checked():
    with pytest.raises(ValueError, match="trainer.devices=0 must be an int >= 1 or 'all'"):
        Config.from_dict({"trainer": {"devices": 0, "vmap": "seeds"}})
    with pytest.raises(ValueError, match="trainer.devices='two' must be an int >= 1 or 'all'"):
        Config.from_dict({"trainer": {"devices": "two", "vmap": "seeds"}})
    with pytest.raises(ValueError, match="trainer.devices=2 with trainer.shard=members splits the members"):
        Config.from_dict({"trainer": {"devices": 2}})
    with pytest.raises(ValueError, match="trainer.shard='edge' must be one of"):
        Config.from_dict({"trainer": {"shard": "edge"}})
    with pytest.raises(ValueError, match="trainer.shard=data .* does not combine with trainer.vmap=seeds"):
        Config.from_dict({"trainer": {"shard": "data", "vmap": "seeds", "num_members": 2}})
    from gaflax.tasks import check_fits, load_dataset

    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 20, "task": "classification"}},
                               "trainer": {"shard": "data"}})
    with pytest.raises(ValueError, match="trainer.shard=data splits batches of graphs .* 'synthetic' is a node"):
        check_fits(config, load_dataset(config))
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"level": "graph", "num_graphs": 20,
                                                                            "task": "classification"}},
                               "trainer": {"shard": "edges"}})
    with pytest.raises(ValueError, match="trainer.shard=edges splits a graph's edges .* graph dataset .*shard=data"):
        check_fits(config, load_dataset(config))
    from gaflax import devices

    with pytest.raises(ValueError, match="trainer.devices=64 but only 1 cpu device"):
        devices.resolve_devices(64)
    with pytest.raises(ValueError, match="must divide the grid's 3 members"):
        devices.member_mesh(devices.resolve_devices(1) * 2, 3)


def _tiny(**trainer):
    return Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 30, "task": "classification"}},
                             "model": {"name": "gcn", "hidden": 4},
                             "trainer": {"max_epochs": 2, "patience": 2, "progress": False, **trainer}})


def test_distributed_initializes_once_and_only_process_0_records(tmp_path, monkeypatch):
    """trainer.distributed=true calls jax.distributed.initialize() (which reads the cluster from
    SLURM or JAX_COORDINATOR_ADDRESS) once per process, before the data is loaded. A process other
    than 0 trains but writes neither the journal nor the run directory."""
    from gaflax import devices
    from gaflax.journal import Journal
    from gaflax.train import train_and_evaluate

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(devices, "_DISTRIBUTED", False)
    journal = Journal(tmp_path / "journal.sqlite")
    first = train_and_evaluate(_tiny(distributed=True), tmp_path / "main", journal=journal)
    assert calls == [((), {})] and (tmp_path / "main" / "results.json").exists()
    assert len(journal.runs()) == 1 and "journal/run_id" in first
    monkeypatch.setattr(jax, "process_index", lambda *a: 1)
    other = train_and_evaluate(_tiny(distributed=True, max_epochs=3), tmp_path / "other", journal=journal)
    assert calls == [((), {})]  # not again
    assert not (tmp_path / "other").exists() and len(journal.runs()) == 1
    assert "journal/run_id" not in other and other["epochs"] >= 1  # trained, recorded nothing
    with pytest.raises(ValueError, match="trainer.distributed='yes' must be true or false"):
        Config.from_dict({"trainer": {"distributed": "yes"}})
