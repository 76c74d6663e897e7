"""Seconds per tree-ensemble run of the imbalance study, by the boosters' thread count, interleaved
in one process:

    python scripts/bench_trees.py --rounds 3 --out results/bench/bench_trees.json

Each timed unit is one whole ``EnsembleTask`` training as the study runs it (keel_yeast4, the
model's preset, ``--epochs`` epochs of 10 trees, each epoch predicting every split). Rounds
alternate the thread counts; the table reports the median seconds and the ratio to one thread.
Run it once on an idle machine and once with other jobs on the cores (say which): OpenMP threads
that wait for busy cores spin, so a shared CPU is where the thread count matters.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

from gaflax import ensembles
from gaflax.config import Config
from gaflax.tasks import load_dataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_ga import write_results  # noqa: E402


def run_once(model: str, threads: int, epochs: int, ds, config) -> float:
    default, ensembles.TREE_THREADS = ensembles.TREE_THREADS, threads  # read when a booster is built
    try:
        start = time.perf_counter()
        task = ensembles.EnsembleTask(config, ds)
        for epoch in range(epochs):
            task.train_epoch(epoch)
            task.predict(task.params)
        return time.perf_counter() - start
    finally:
        ensembles.TREE_THREADS = default


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["xgboost", "lightgbm"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", default="unstated", help="what else ran on the cores (recorded in the JSON)")
    parser.add_argument("--out", default="results/bench/bench_trees.json")
    args = parser.parse_args(argv)
    times = {(m, t): [] for m in args.models for t in args.threads}
    setups = {}
    for m in args.models:
        config = Config.from_dict({"dataset": {"name": "keel_yeast4"}, "model": {"name": m},
                                   "trainer": {"max_epochs": args.epochs, "progress": False}})
        setups[m] = (load_dataset(config), config)
    for _ in range(args.rounds):
        for m in args.models:
            for t in args.threads:
                times[m, t].append(run_once(m, t, args.epochs, *setups[m]))
    rows = []
    print(f"\n{'model':<10} {'threads':>7} {'s / run (median)':>17} {'x 1 thread':>11}")
    for m in args.models:
        base = statistics.median(times[m, args.threads[0]])
        for t in args.threads:
            median = statistics.median(times[m, t])
            rows.append(dict(model=m, threads=t, seconds=times[m, t], median_seconds=median, ratio=median / base))
            print(f"{m:<10} {t:>7} {median:>17.3f} {median / base:>11.2f}")
    write_results(args.out, rows, epochs=args.epochs, rounds=args.rounds, load=args.load)


if __name__ == "__main__":
    main()
