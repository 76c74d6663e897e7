"""Training: the one epoch loop, and ``train_and_evaluate`` (library code: no Hydra, no W&B).

``train_and_evaluate(config, out_dir, writers)`` trains the task of the dataset's kind
(``gaflax.tasks``) with Adam and L2 weight decay, stops early on validation (patience, as in the
GAT paper: stop when neither the validation loss nor the validation accuracy improved for
``patience`` epochs), evaluates the test set once, with the parameters of the best validation
epoch, and writes the run directory (``gaflax.rundir``). ``train_grid`` does the same for the
members of a vmapped grid (``trainer.vmap``), trained as one program by the same loop.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from gaflax import devices as gdevices
from gaflax import evaluation, rundir
from gaflax.config import Config
from gaflax.journal import Claim, Decision
from gaflax.models import MODELS
from gaflax.tasks import TASKS, check_fits, grid_members, load_dataset


class NonFiniteTraining(FloatingPointError):
    """A run's loss or learned exponents became NaN or infinite: it stops and is recorded failed.

    In a grid, the other members train on and are recorded done: ``results`` holds each member's
    results, None for the failed ones (raised once every member has stopped)."""

    def __init__(self, message: str, results: list | None = None):
        super().__init__(message)
        self.results = results


def train_and_evaluate(config: Config, out_dir, writers=(), journal=None, on_duplicate: str = "skip") -> dict:
    """Train, early-stop on validation, test once; returns (and writes) the results dict.

    With a ``gaflax.journal.Journal``, the run is recorded there; an experiment the journal has
    already done is skipped (see ``on_duplicate``) and the earlier results are returned, with
    ``journal/duplicate_of`` set to the earlier run's id.
    """
    return _run([config], [pathlib.Path(out_dir)], writers, journal, on_duplicate, grid=False)[0]


def train_grid(config: Config, out_dir, journal=None, on_duplicate: str = "skip") -> list[dict]:
    """Train the members of a grid (``gaflax.tasks.grid_members``) of a node-task run as one
    vmapped program; early stopping is tracked per member.

    Each member writes ``<out_dir>/<member>/`` like a sequential run and is recorded in the journal
    as the sequential run with its seed and alpha (so the two count as the same experiment);
    members the journal already holds are not trained again. Returns the members' results, in
    ``grid_members`` order.
    """
    members = grid_members(config)
    return _run([m for _, m in members], [pathlib.Path(out_dir) / name for name, _ in members], (), journal,
                on_duplicate, grid=True, grid_config=config)


def _run(configs: list[Config], out_dirs, writers, journal, on_duplicate, grid: bool, grid_config=None) -> list[dict]:
    if configs[0].trainer.distributed:
        gdevices.initialize_distributed()
    ds = load_dataset(configs[0])
    check_fits(grid_config or configs[0], ds)
    entry = TASKS[ds.kind]
    experiments = [dict(config=c.to_dict(), data_fingerprint=ds.fingerprint, hypothesis=c.hypothesis, run_dir=out)
                   for c, out in zip(configs, out_dirs)]
    main = gdevices.is_main_process()
    scratch = contextlib.nullcontext()
    if not main:  # another host of a multi-host job: it trains what process 0 claims, and records nothing
        journal, writers, scratch = None, (), tempfile.TemporaryDirectory(prefix=f"gaflax-process-{jax.process_index()}-")
        out_dirs = [pathlib.Path(scratch.name) / str(i) for i in range(len(out_dirs))]
    if journal is None:  # every run trains, nothing is recorded
        claim_context = contextlib.nullcontext(Claim(None, len(configs)))
    else:
        claim_context = journal.claim(experiments, on_duplicate=on_duplicate, device=str(jax.devices()[0]))
    with scratch, claim_context as claim:
        if jax.process_count() > 1:  # every process trains the runs process 0 claimed, in one program
            run = multihost_utils.broadcast_one_to_all(np.array([d.run for d in claim.decisions]), is_source=main)
            if not main:
                claim = Claim(None, [Decision(bool(r)) for r in run])
        results = {}
        for i, decision in enumerate(claim.decisions):
            if decision.message:
                print(decision.message, flush=True)
            if not decision.run and journal is None:  # (another host: process 0 records the duplicate)
                results[i] = {}
            elif not decision.run:
                rundir.write_duplicate_of(out_dirs[i], journal.path, decision.earlier)
                results[i] = {**(decision.earlier["results"] or {}), "journal/duplicate_of": decision.earlier["id"]}
        todo = claim.todo
        if todo:
            members = [configs[i] for i in todo]
            single = MODELS[members[0].model.name].task or entry.single  # (a tree ensemble has its own)
            task = (entry.grid(members, ds, devices=grid_config.trainer.devices, grid_step=grid_config.trainer.grid_step)
                    if grid else single(members[0], ds))
            failure = None
            try:
                trained = fit(task, members, [out_dirs[i] for i in todo], writers, claim.heartbeat)
            except NonFiniteTraining as error:
                if error.results is None:
                    raise
                failure, trained = error, error.results
            for i, member_results in zip(todo, trained):
                if member_results is None:  # recorded failed, with the error, as the block raises
                    continue
                if grid:
                    member_results["grid_members"] = len(todo)
                results[i] = claim.finish(i, member_results)
            if failure is not None:
                raise failure
    return [results[i] for i in range(len(configs))]


#: Seconds between progress lines when stderr is not a terminal.
LOG_PROGRESS_SECONDS = 10.0


def fit(task, configs: list[Config], out_dirs: list[pathlib.Path], writers=(), heartbeat=lambda: None) -> list[dict]:
    """The epoch loop: train ``task``'s members (``configs[m]`` writes to ``out_dirs[m]``; the extra
    ``writers`` log member 0), stop each early on its validation metric, keep each member's best
    parameters, then evaluate them once and write each run directory. Returns the results.

    A member whose numbers go non-finite stops there: a single run raises ``NonFiniteTraining`` at
    once; in a grid the others train on, and it is raised after their results are written."""
    config, installed = configs[0], rundir.versions()
    jsonls = [rundir.start(out, c.to_dict(), installed) for c, out in zip(configs, out_dirs)]
    member_writers = [[jsonl] for jsonl in jsonls]
    member_writers[0].extend(writers)
    trackers = [evaluation.EarlyStopping(config.trainer.patience, config.trainer.monitor) for _ in configs]
    # A copy: a task may donate its parameters to its train step (NodeGrid's loop step does).
    best_params = jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, task.params)
    epoch_times, failures = [], {}
    name = config.dataset.name if len(configs) == 1 else f"{config.dataset.name} x{len(configs)}"
    # Into a log (CI, SLURM, nohup) every refresh is a line: there, at most one every 10 s.
    terminal = sys.stderr.isatty()
    bar = tqdm(range(config.trainer.max_epochs), disable=not config.trainer.progress, desc=name,
               mininterval=0.1 if terminal else LOG_PROGRESS_SECONDS)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            train_losses = task.train_epoch(epoch)
            predictions = task.predict_running(task.params)
            epoch_times.append(time.perf_counter() - t0)
            take = np.zeros(len(configs), bool)
            for m, (prediction, tracker) in enumerate(zip(predictions, trackers)):
                if tracker.stopped:
                    continue
                splits, alphas = prediction
                row = evaluation.epoch_row(float(train_losses[m]), splits, alphas, epoch_times[-1],
                                           config.trainer.monitor)
                for writer in member_writers[m]:
                    writer.log(epoch, row)
                bad = evaluation.non_finite(row)
                if bad:  # the run fails (the journal records it failed); it never ends as done
                    message = (f"{config.dataset.name}, seed {configs[m].seed}: {', '.join(bad)} not finite at epoch "
                               f"{epoch} (optimizer.lr={configs[m].optimizer.lr}, pool.lr_mult={configs[m].pool.lr_mult}); "
                               f"metrics so far in {pathlib.Path(out_dirs[m]) / 'metrics.jsonl'}")
                    if len(configs) == 1:
                        raise NonFiniteTraining(message)
                    print(f"grid member failed: {message}", file=sys.stderr, flush=True)
                    failures[m] = message
                    tracker.stopped = True
                    task.stop_member(m)
                    continue
                take[m] = tracker.update(epoch, row, alphas)
                if tracker.stopped:
                    task.stop_member(m)
            best_params = task.select(task.params, best_params, take)
            heartbeat()
            if len(configs) == 1:
                bar.set_postfix(loss=f"{train_losses[0]:.3f}", val=f"{row.get('val/accuracy', row['val/loss']):.3f}",
                                refresh=terminal)
            else:
                bar.set_postfix(running=sum(not t.stopped for t in trackers), refresh=terminal)
            if all(t.stopped for t in trackers):
                break
    finally:
        bar.close()
        for jsonl in jsonls:
            jsonl.close()

    # Each member's test set is evaluated once, with its best validation epoch's parameters.
    out = []
    timing = {"compile_seconds": task.compile_seconds, "seconds_per_epoch": float(np.median(epoch_times)),
              "device": str(jax.devices()[0])}
    for m, (member, tracker, (splits, _), out_dir) in enumerate(zip(configs, trackers, task.predict(best_params),
                                                                     out_dirs)):
        if m in failures:
            out.append(None)
            continue
        results = {**evaluation.results(member, task.ds.task, task.ds.num_classes, tracker, splits), **timing}
        rundir.write_results(out_dir, results, evaluation.positive_scores(member, task.ds.num_classes, splits))
        out.append(results)
    if failures:
        raise NonFiniteTraining(f"{len(failures)} of {len(configs)} grid members went non-finite (the others are "
                                "recorded done): " + "; ".join(failures.values()), results=out)
    return out
