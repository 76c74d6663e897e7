"""Train a GAT with a configurable pooling operator: ``python -m experiments.train +pool=ga``.

A thin Hydra entry point: compose the config, convert it to the library's typed dataclasses
(validated before anything is compiled), call ``gaflax.train.train_and_evaluate``, print a summary
and return the objective (``objective:`` in the config) for sweeps. The run directory is Hydra's
output directory: ``.hydra/`` (the composed config) plus what the library writes.
"""

from __future__ import annotations

import json
import pathlib
import sys

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.figures import alpha_table, alpha_trajectories
from experiments.loggers import make_writers
from experiments.runtime import enable_compilation_cache
from gaflax.config import Config
from gaflax.journal import Journal
from gaflax.pooling import AGGREGATORS
from gaflax.tasks import grid_members
from gaflax.devices import initialize_distributed, is_main_process
from gaflax.train import train_and_evaluate, train_grid

RUN_KEYS = ("logger", "objective", "journal", "hparams_search", "model_selection")  # run settings, not part of the experiment's Config
CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"


def register_operator_options(conf: pathlib.Path = CONF):
    """``pool=<name>`` and ``readout=<name>`` for every operator in ``gaflax.pooling.AGGREGATORS``.
    Yaml files in ``conf/pool`` and ``conf/readout`` describe some of them (with presets such as
    ``ga_harmonic``); every other operator gets an option holding only its name, so that a new
    registry entry needs no config file."""
    store = ConfigStore.instance()
    for group in ("pool", "readout"):
        for name in AGGREGATORS:
            if not (conf / group / f"{name}.yaml").exists():
                store.store(group=group, name=name, node={"name": name})


register_operator_options()


def to_config(cfg: DictConfig) -> Config:
    raw = OmegaConf.to_container(cfg, resolve=True)
    for key in RUN_KEYS:
        raw.pop(key, None)
    return Config.from_dict(raw)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    enable_compilation_cache()
    hydra_cfg = HydraConfig.get()
    out_dir = pathlib.Path(hydra_cfg.runtime.output_dir)
    if cfg.get("hparams_search"):
        from experiments.search import run_study

        return run_study(cfg, list(hydra_cfg.overrides.task), out_dir, train_one,
                         journal=_journal(cfg.get("journal") or {"enabled": False}))
    if cfg.get("model_selection"):
        from experiments.select import run_selection

        results = run_selection(cfg, list(hydra_cfg.overrides.task), out_dir, train_one)
    else:
        results = train_one(cfg, out_dir)
    if cfg.objective not in results:  # the same experiment is running elsewhere: no value yet
        return float("nan")
    return float(results[cfg.objective])


def train_one(cfg: DictConfig, out_dir: pathlib.Path) -> dict:
    """One training run from a composed config: validate, train (or skip, per the journal), print."""
    config = to_config(cfg)  # raises a clear ValueError on bad values, before any compile
    journal = _journal(cfg.get("journal") or {"enabled": False})
    on_duplicate = cfg.journal.on_duplicate if journal else "skip"
    if config.trainer.distributed:  # before anything asks JAX for devices (gaflax.devices)
        initialize_distributed()
    if config.trainer.vmap != "none":
        return _train_grid(config, cfg, out_dir, journal, on_duplicate)
    # Several hosts: only process 0 logs (gaflax.train also keeps the others out of the journal).
    logger = OmegaConf.to_container(cfg.logger, resolve=True) if is_main_process() else {"name": "none"}
    writers = make_writers(logger, config, out_dir)
    try:
        results = train_and_evaluate(config, out_dir, writers, journal=journal, on_duplicate=on_duplicate)
        for writer in writers:
            writer.summary(results)
    finally:
        for writer in writers:
            writer.close()  # always: multirun jobs in one process must not merge their W&B runs
    summary = {k: v for k, v in results.items() if k not in ("alphas", "baselines")}
    print(f"{config.dataset.name} / {_model_name(config)}: " + json.dumps(summary, default=float))
    if results.get("alphas"):
        print(alpha_table(results["alphas"], results.get("best_epoch")))  # and other learned aggregator parameters
        if (out_dir / "metrics.jsonl").exists() and alpha_trajectories(out_dir, out_dir / "alphas.png"):
            print(f"alpha trajectories: {out_dir / 'alphas.png'}")
    if results.get("baselines"):
        metric = "accuracy" if "test/accuracy" in results else "rmse"
        print(f"trivial baselines (test {metric}): " + ", ".join(
            f"{name} {b[metric]:.4f}" for name, b in results["baselines"].items()))
    print(f"run directory: {out_dir}")
    return results


def _train_grid(config, cfg, out_dir, journal, on_duplicate) -> dict:
    """trainer.vmap=seeds|alphas: the members' results, and the objective averaged over them."""
    if cfg.logger.name != "none":
        print(f"note: logger={cfg.logger.name} is not used by vmapped grids; each member writes metrics.jsonl")
    members = train_grid(config, out_dir, journal=journal, on_duplicate=on_duplicate)
    for (name, _), results in zip(grid_members(config), members):
        brief = {k: results[k] for k in ("best_epoch", "val/accuracy", "test/accuracy", "val/rmse", "test/rmse", "alphas")
                 if k in results}
        print(f"{config.dataset.name} / {_model_name(config)} / {name}: " + json.dumps(brief))
    values = [r[cfg.objective] for r in members if cfg.objective in r]
    mean = float(sum(values) / len(values)) if values else float("nan")
    print(f"{cfg.objective}: mean {mean:.4f} over {len(values)} members; run directory: {out_dir}")
    return {"members": members, cfg.objective: mean}


def _model_name(config: Config) -> str:
    return config.pool.name if config.model.name == "gat" else config.model.name


def _journal(settings) -> Journal | None:
    if not settings.get("enabled", True):
        return None
    return Journal(pathlib.Path(str(settings["path"])).expanduser())


def _accept_plus_pool(argv):
    """``+pool=ga`` and ``pool=ga`` mean the same: the pool group always has a default
    (weighted_sum), so Hydra would refuse to *append* one; we turn the former into the latter."""
    return [arg[1:] if arg.startswith("+pool=") else arg for arg in argv]


if __name__ == "__main__":
    sys.argv = _accept_plus_pool(sys.argv)
    main()
