"""Grid members over several devices (gaflax.devices): four forced host devices on the CPU give
what one device gives. JAX fixes its device count at start-up, so each case runs in a fresh
process with XLA_FLAGS=--xla_force_host_platform_device_count=4."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from gaflax.config import Config

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


def _run_child(cases: dict) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], cwd=ROOT, env=env, capture_output=True,
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


def test_device_settings_are_checked():
    with pytest.raises(ValueError, match="trainer.devices=0 must be an int >= 1 or 'all'"):
        Config.from_dict({"trainer": {"devices": 0, "vmap": "seeds"}})
    with pytest.raises(ValueError, match="trainer.devices='two' must be an int >= 1 or 'all'"):
        Config.from_dict({"trainer": {"devices": "two", "vmap": "seeds"}})
    with pytest.raises(ValueError, match="trainer.devices=2 splits the members of a vmapped grid"):
        Config.from_dict({"trainer": {"devices": 2}})
    from gaflax import devices

    with pytest.raises(ValueError, match="trainer.devices=64 but only 1 cpu device"):
        devices.resolve_devices(64)
    with pytest.raises(ValueError, match="must divide the grid's 3 members"):
        devices.member_mesh(devices.resolve_devices(1) * 2, 3)
