"""Vmapped seed grids against sequential runs: N seeds of the GAT paper's Cora setup.

    python scripts/bench_grid.py --root ../shared/data --members 10 --out results/bench_grid.json

"sequential" trains the seeds one after another in one process, as Hydra's basic launcher does
for ``-m seed=0,1,...`` (one compile per run). The grid (``trainer.vmap=seeds``, one compile)
runs with each ``trainer.grid_step``: "loop" (one compiled member step, run for each running
member in turn; the default on one CPU) and "vmap" (all members in one batched step, until the
last one stops). All are timed in the same process, one after the other, and checked to give the
same test accuracies as the sequential runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

import numpy as np

from gaflax.config import Config
from gaflax.train import train_and_evaluate, train_grid


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="data directory (default: $GAFLAX_DATA)")
    parser.add_argument("--dataset", default="cora")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--pool", default="weighted_sum")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--grid-steps", nargs="+", default=["loop", "vmap"], choices=["loop", "vmap"],
                        help="the grid modes, run in this order")
    parser.add_argument("--sequential-last", action="store_true",
                        help="run the sequential runs after the grids (the process's heap differs by order)")
    parser.add_argument("--out", default="results/bench_grid.json")
    args = parser.parse_args()

    base = {"dataset": {"name": args.dataset, "root": args.root}, "pool": {"name": args.pool},
            "trainer": {"progress": False, "max_epochs": args.max_epochs}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def run_sequential():
            start, results = time.perf_counter(), []
            for seed in range(args.members):
                results.append(train_and_evaluate(Config.from_dict({**base, "seed": seed}), f"{tmp}/seq{seed}"))
                print(f"sequential seed {seed}: {time.perf_counter() - start:.1f} s", flush=True)
            return results, time.perf_counter() - start

        if not args.sequential_last:
            sequential, seq_seconds = run_sequential()
        grids = []
        for grid_step in args.grid_steps:
            grid_config = Config.from_dict({**base, "trainer": {**base["trainer"], "vmap": "seeds",
                                                                "num_members": args.members, "grid_step": grid_step}})
            start = time.perf_counter()
            grids.append((f"grid, grid_step={grid_step}", train_grid(grid_config, f"{tmp}/grid_{grid_step}"),
                          time.perf_counter() - start))
            print(f"grid_step={grid_step}: {grids[-1][2]:.1f} s", flush=True)
        if args.sequential_last:
            sequential, seq_seconds = run_sequential()

    for name, results, seconds in (("sequential", sequential, seq_seconds), *grids):
        acc = [r["test/accuracy"] for r in results]
        rows.append({"mode": name, "members": args.members, "seconds": seconds,
                     "speedup_over_sequential": seq_seconds / seconds,
                     "member_epochs": int(sum(r["epochs"] for r in results)),
                     "max_epochs_run": int(max(r["epochs"] for r in results)),
                     "compile_seconds": float(sum(r["compile_seconds"] for r in results)) if name == "sequential"
                     else results[0]["compile_seconds"],
                     "test_accuracy_mean": float(np.mean(acc)), "test_accuracy_std": float(np.std(acc)),
                     "identical_members": int(sum(abs(a["test/accuracy"] - b["test/accuracy"]) < 1e-9
                                                  for a, b in zip(sequential, results)))})
    print(f"\n{args.dataset}, {args.pool}, {args.members} seeds")
    print("| mode | wall s | speed-up over sequential | member-epochs | compile s | test acc | members identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']:.1f} | {r['speedup_over_sequential']:.2f}x | {r['member_epochs']} | "
              f"{r['compile_seconds']:.1f} | {100 * r['test_accuracy_mean']:.1f} ± {100 * r['test_accuracy_std']:.1f} | "
              f"{r['identical_members']} of {args.members} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "args": vars(args),
                               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}, indent=2))


if __name__ == "__main__":
    main()
