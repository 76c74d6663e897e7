"""Model selection per outer fold (Errica et al. 2020): ``model_selection.grid`` in a preset.

    python -m experiments.train -m experiment=select_zoo_graph trainer.fold='range(10)'

For the run's outer fold (``trainer.fold``) every combination of the declared grid trains on the
fold's inner training part and is scored on its inner holdout (``val``), with
``trainer.evaluate_test=false``: the outer test fold is never batched, evaluated or read. The
combination with the best validation objective (``objective``, ``model_selection.direction``;
ties go to the first in grid order) is then trained once more with the test fold evaluated, and
that run's results are the fold's. Every candidate and the final run are recorded in the journal,
so an interrupted selection resumes where it stopped. The preset declares the grid::

    model_selection:
      direction: maximize            # of the config's `objective` (a val/ metric)
      grid:                          # a config key -> its candidate values
        optimizer.lr: [0.01, 0.001]
        model.hidden: [32, 64]
"""

from __future__ import annotations

import itertools
import json
import pathlib

from omegaconf import DictConfig, OmegaConf


def candidates(spec: dict) -> list[dict]:
    """Every combination of the grid, in order (the last key varies fastest)."""
    grid = spec.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ValueError("config: model_selection.grid must map config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"config: model_selection.grid.{key} must be a non-empty list of values")
    if spec.get("direction", "maximize") not in ("maximize", "minimize"):
        raise ValueError(f"config: model_selection.direction={spec.get('direction')!r} must be 'maximize' or 'minimize'")
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


def run_selection(cfg: DictConfig, task_overrides: list[str], out_dir: pathlib.Path, train_one) -> dict:
    """Select on the inner holdout, then train the choice with the test fold; ``train_one(cfg,
    run_dir) -> results`` trains one run. Returns the final run's results, with the selection."""
    from hydra import compose

    objective = cfg.objective
    if not objective.startswith("val/"):
        raise ValueError(f"config: objective={objective!r}: model selection scores the inner holdout; use a val/ metric")
    spec = OmegaConf.to_container(cfg.model_selection, resolve=True) if cfg.get("model_selection") else {}
    options, direction = candidates(spec), spec.get("direction", "maximize")
    base = [o for o in task_overrides if not o.startswith(("trainer.evaluate_test=", "model_selection"))]
    scores = []
    for i, candidate in enumerate(options):
        overrides = [*base, *(_override(k, v) for k, v in candidate.items()), "trainer.evaluate_test=false"]
        results = train_one(compose(config_name="config", overrides=overrides), out_dir / f"candidate_{i:02d}")
        if any(key.startswith("test/") for key in results):  # the journal's record of an earlier run with test
            raise RuntimeError(f"model selection: candidate {candidate} came back with test metrics")
        score = float(results[objective])
        scores.append(score)
        print(f"select: candidate {i} {candidate} -> {objective}={score:.4f}", flush=True)
    pick = (max if direction == "maximize" else min)(range(len(options)), key=lambda i: scores[i])
    chosen = options[pick]
    print(f"select: fold {cfg.trainer.fold}: chose {chosen} ({objective}={scores[pick]:.4f}); training it with the "
          f"test fold", flush=True)
    overrides = [*base, *(_override(k, v) for k, v in chosen.items()), "trainer.evaluate_test=true"]
    results = train_one(compose(config_name="config", overrides=overrides), out_dir / "selected")
    results["model_selection"] = {"chosen": chosen, "scores": [dict(candidate=c, **{objective: s})
                                                               for c, s in zip(options, scores)]}
    (out_dir / "selection.json").write_text(json.dumps(results["model_selection"], indent=2, default=float))
    return results
