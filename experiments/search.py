"""Optuna hyperparameter search driven by Hydra's compose API: ``hparams_search=<name>``.

    python -m experiments.train hparams_search=cora_ga [other overrides]

The preset in ``conf/hparams_search/`` declares the study and its search space::

    hparams_search:
      study_name: cora_ga
      storage: sqlite:///optuna.sqlite   # any SQLAlchemy URL: several workers share one study
      direction: maximize                # of the config's `objective`
      n_trials: 20                       # completed trials the study should hold
      sampler_seed: 0
      params:                            # a config key (or a group: pool, loss) -> a distribution
        pool.alpha: {type: float, low: -1.0, high: 1.0}
        optimizer.lr: {type: float, low: 1.0e-3, high: 2.0e-2, log: true}
        model.hidden: {type: int, low: 4, high: 16, step: 4}
        loss: {type: categorical, choices: [ce, focal]}

Each trial composes the config with the command line's overrides plus the trial's values, trains
through ``train_and_evaluate`` (recorded in the journal, so a repeated trial reuses the earlier
result) in ``<run dir>/trial_<n>/``, and tells Optuna the objective. This uses Optuna's ask/tell
interface directly (the hydra-optuna-sweeper plugin pins optuna < 3). The study is resumable:
re-running the same command loads it and runs only the trials still missing. Trials left running
by a dead process on this host are marked failed first, their journal runs too, and their
parameters are queued to be tried again. The sampler is seeded with ``sampler_seed`` plus the
number of trials the storage already holds, so that a resumed study continues with new
configurations instead of drawing its first ones again.
"""

from __future__ import annotations

import os
import pathlib
import socket

from omegaconf import DictConfig, OmegaConf

from gaflax.journal import pid_alive

KINDS = ("float", "int", "categorical")


def _validate(spec: dict) -> dict:
    def check(ok, message):
        if not ok:
            raise ValueError(f"config: hparams_search.{message}")

    check(isinstance(spec.get("params"), dict) and spec["params"], "params must map config keys to distributions")
    check(spec.get("direction", "maximize") in ("maximize", "minimize"),
          f"direction={spec.get('direction')!r} must be 'maximize' or 'minimize'")
    check(int(spec.get("n_trials", 0)) >= 1, f"n_trials={spec.get('n_trials')!r} must be >= 1")
    for name, dist in spec["params"].items():
        kind = (dist or {}).get("type")
        check(kind in KINDS, f"params.{name}.type={kind!r} must be one of {KINDS}")
        if kind == "categorical":
            check(bool(dist.get("choices")), f"params.{name}.choices must be a non-empty list")
        else:
            check("low" in dist and "high" in dist and dist["low"] < dist["high"],
                  f"params.{name} needs low < high (got {dist.get('low')!r}, {dist.get('high')!r})")
    return spec


def _suggest(trial, params: dict) -> dict:
    values = {}
    for name, dist in params.items():
        if dist["type"] == "float":
            values[name] = trial.suggest_float(name, dist["low"], dist["high"], log=dist.get("log", False))
        elif dist["type"] == "int":
            values[name] = trial.suggest_int(name, dist["low"], dist["high"], step=dist.get("step", 1),
                                             log=dist.get("log", False))
        else:
            values[name] = trial.suggest_categorical(name, list(dist["choices"]))
    return values


def _fail_orphans(study, journal=None):
    """Trials this host left RUNNING in a process that no longer exists: mark them failed (and
    the journal's runs of dead processes), and queue their parameters to be tried again."""
    import optuna

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid is not None and not pid_alive(pid):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            print(f"search: trial {t.number} was left running by a dead process; marked failed, "
                  f"its parameters queued again")
    if journal is not None:
        for run_id in journal.reap():
            print(f"search: journal run {run_id} was left running by a dead process; recorded failed")


def run_study(cfg: DictConfig, task_overrides: list[str], out_dir: pathlib.Path, train_one, journal=None) -> float:
    """Run (or resume) the study; ``train_one(cfg, trial_dir) -> results`` trains one trial."""
    import optuna
    from hydra import compose

    spec = _validate(OmegaConf.to_container(cfg.hparams_search, resolve=True))
    objective, direction = cfg.objective, spec.get("direction", "maximize")
    seed = int(spec.get("sampler_seed", 0))
    study = optuna.create_study(study_name=spec.get("study_name"), storage=spec.get("storage"),
                                sampler=optuna.samplers.TPESampler(seed=seed), direction=direction, load_if_exists=True)
    held = len(study.get_trials(deepcopy=False))
    if held:  # the same seed would draw the first trials' parameters again
        study.sampler = optuna.samplers.TPESampler(seed=seed + held)
    _fail_orphans(study, journal)
    complete = optuna.trial.TrialState.COMPLETE
    n_trials, failures = int(spec["n_trials"]), 0
    print(f"search: study {study.study_name!r} in {spec.get('storage')}, {direction} {objective}, "
          f"{len(study.get_trials(states=(complete,)))} of {n_trials} trials done")
    while len(study.get_trials(deepcopy=False, states=(complete,))) < n_trials:
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        values = _suggest(trial, spec["params"])
        overrides = [*task_overrides, *(f"{k}={v}" for k, v in values.items())]
        try:
            results = train_one(compose(config_name="config", overrides=overrides), out_dir / f"trial_{trial.number:03d}")
            value = float(results[objective])
        except Exception as err:  # noqa: BLE001  (one bad trial must not end the study)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            failures += 1
            print(f"search: trial {trial.number} failed: {err!r}")
            if failures >= n_trials:
                raise RuntimeError(f"search: {failures} trials failed; stopping (see the errors above)") from err
            continue
        study.tell(trial, value)
        print(f"search: trial {trial.number} {values} -> {objective}={value:.4f} (best {study.best_value:.4f})")
    return _summarize(study, objective)


def _summarize(study, objective: str) -> float:
    import optuna

    best = study.best_trial
    print(f"search: best trial {best.number}: {objective}={best.value:.4f} with {best.params}")
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study)
            print("search: parameter importances: " + ", ".join(f"{k} {v:.3f}" for k, v in importances.items()))
        except (RuntimeError, ValueError, ZeroDivisionError) as err:  # e.g. a parameter never varied
            print(f"search: no parameter importances ({err})")
    return float(best.value)
