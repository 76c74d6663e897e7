"""Optional metric writers for the entry points (the library always writes metrics.jsonl itself).

A writer has ``log(epoch, values)``, ``summary(results)`` and ``close()``. The W&B writer never lets a
wandb failure stop training: it warns once and carries on without W&B.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

#: Seconds wandb.init may wait for the server (W&B's default is 90: online without a network,
#: a run would stall that long before the warning).
INIT_TIMEOUT = 15


def wandb_mode(settings: dict) -> tuple[str, str]:
    """(mode, where it came from): an explicit ``WANDB_MODE`` in the environment wins over the
    config's ``logger.mode`` (offline by default)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    return settings.get("mode", "offline"), "logger.mode"


class WandbWriter:
    def __init__(self, settings: dict, config, out_dir):
        self.run = None
        mode, source = wandb_mode(settings)
        configured = settings.get("mode", "offline")
        note = f" (logger.mode={configured} is overridden)" if source == "WANDB_MODE" and mode != configured else ""
        print(f"wandb: mode {mode}, from {source}{note}")
        try:
            import wandb

            self.run = wandb.init(project=settings.get("project", "gaflax"), entity=settings.get("entity"),
                                  mode=mode, tags=list(settings.get("tags") or []),
                                  dir=str(out_dir), config=dataclasses.asdict(config), reinit="finish_previous",
                                  settings=wandb.Settings(init_timeout=INIT_TIMEOUT))
        except Exception as err:  # noqa: BLE001  (W&B is optional; training must go on)
            self._fail("init", err)

    def _fail(self, what, err):
        warnings.warn(f"wandb {what} failed ({err!r}); continuing without W&B", RuntimeWarning, stacklevel=3)
        self.run = None

    def log(self, epoch: int, values: dict):
        if self.run is None:
            return
        flat = {k: v for k, v in values.items() if k != "alphas"}
        for layer, alpha in values.get("alphas", {}).items():
            flat[f"alpha/{layer}"] = alpha if isinstance(alpha, float) else _mean(alpha)
        try:
            self.run.log(flat, step=epoch)
        except Exception as err:  # noqa: BLE001
            self._fail("log", err)

    def summary(self, results: dict):
        if self.run is None:
            return
        try:
            self.run.summary.update({k: v for k, v in results.items() if k != "alphas"})
            self.run.summary["alphas"] = results.get("alphas", {})
        except Exception as err:  # noqa: BLE001
            self._fail("summary", err)

    def close(self):
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as err:  # noqa: BLE001
                self._fail("finish", err)


def _mean(nested) -> float:
    import numpy as np

    return float(np.mean(nested))


def make_writers(settings: dict, config, out_dir) -> list:
    name = settings.get("name", "none")
    if name == "none":
        return []
    if name == "wandb":
        return [WandbWriter(settings, config, out_dir)]
    raise ValueError(f"logger.name={name!r} must be 'none' or 'wandb'")
