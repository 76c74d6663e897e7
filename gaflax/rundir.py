"""The run directory: every file a run writes, and nothing else.

    config.json       the resolved configuration
    versions.json     library versions and the device
    metrics.jsonl     one line per epoch (always written, whatever logger is on)
    results.json      test/accuracy, val/accuracy, best_epoch, alphas, seconds_per_epoch, ...
    predictions.npz   binary tasks: the positive-class scores at the best epoch, for PR curves
    duplicate_of.json when the journal skipped the run: where the earlier one is
"""

from __future__ import annotations

import json
import pathlib
import platform

import jax
import numpy as np


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


def start(out: pathlib.Path, config: dict, installed: dict) -> JsonlWriter:
    """Write ``config.json`` and ``versions.json``; return the (new) ``metrics.jsonl`` writer."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "versions.json").write_text(json.dumps(installed, indent=2))
    return JsonlWriter(out / "metrics.jsonl")


def write_results(out: pathlib.Path, results: dict, predictions: dict[str, np.ndarray]):
    """``results.json``, and ``predictions.npz`` when there are predictions to keep."""
    if predictions:
        np.savez_compressed(out / "predictions.npz", **predictions)
    (out / "results.json").write_text(json.dumps(results, indent=2))


def write_duplicate_of(out: pathlib.Path, journal_path, earlier: dict):
    """A pointer to the earlier run the journal found for this experiment."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "duplicate_of.json").write_text(json.dumps(
        {"journal": str(journal_path), "run_id": earlier["id"], "run_dir": earlier["run_dir"]}, indent=2))
