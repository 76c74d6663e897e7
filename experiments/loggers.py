"""Optional metric writers for the entry points (the library always writes metrics.jsonl itself).

A writer has ``log(epoch, values)``, ``summary(results)`` and ``close()``. The W&B writer never lets a
wandb failure stop training: it warns once and carries on without W&B.
"""

from __future__ import annotations

import dataclasses
import warnings


class WandbWriter:
    def __init__(self, settings: dict, config, out_dir):
        self.run = None
        try:
            import wandb

            self.run = wandb.init(project=settings.get("project", "gaflax"), entity=settings.get("entity"),
                                  mode=settings.get("mode", "offline"), tags=list(settings.get("tags") or []),
                                  dir=str(out_dir), config=dataclasses.asdict(config), reinit="finish_previous")
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
