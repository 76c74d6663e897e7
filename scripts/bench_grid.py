"""Vmapped seed grids against sequential runs: N seeds of the GAT paper's Cora setup.

    python scripts/bench_grid.py --root ../shared/data --members 10 --out results/bench_grid.json

"sequential" trains the seeds one after another in one process, as Hydra's basic launcher does
for ``-m seed=0,1,...`` (one compile per run); "vmapped" trains them as one program
(``trainer.vmap=seeds``, one compile, the grid runs until its last member stops). Both are timed
in the same process, one after the other, and checked to give the same test accuracies.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--out", default="results/bench_grid.json")
    args = parser.parse_args()

    base = {"dataset": {"name": args.dataset, "root": args.root}, "pool": {"name": args.pool},
            "trainer": {"progress": False, "max_epochs": args.max_epochs}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sequential = []
        for seed in range(args.members):
            sequential.append(train_and_evaluate(Config.from_dict({**base, "seed": seed}), f"{tmp}/seq{seed}"))
            print(f"sequential seed {seed}: {time.perf_counter() - start:.1f} s", flush=True)
        seq_seconds = time.perf_counter() - start
        grid_config = Config.from_dict({**base, "trainer": {**base["trainer"], "vmap": "seeds",
                                                            "num_members": args.members}})
        start = time.perf_counter()
        grid = train_grid(grid_config, f"{tmp}/grid")
        grid_seconds = time.perf_counter() - start

    for name, results, seconds in (("sequential", sequential, seq_seconds), ("vmapped", grid, grid_seconds)):
        acc = [r["test/accuracy"] for r in results]
        rows.append({"mode": name, "members": args.members, "seconds": seconds,
                     "member_epochs": int(sum(r["epochs"] for r in results)),
                     "max_epochs_run": int(max(r["epochs"] for r in results)),
                     "compile_seconds": float(sum(r["compile_seconds"] for r in results)) if name == "sequential"
                     else results[0]["compile_seconds"],
                     "test_accuracy_mean": float(np.mean(acc)), "test_accuracy_std": float(np.std(acc))})
    same = [abs(a["test/accuracy"] - b["test/accuracy"]) < 1e-9 for a, b in zip(sequential, grid)]
    speedup = seq_seconds / grid_seconds
    print(f"\n{args.dataset}, {args.pool}, {args.members} seeds")
    print("| mode | wall s | member-epochs | compile s | test acc |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']:.1f} | {r['member_epochs']} | {r['compile_seconds']:.1f} | "
              f"{100 * r['test_accuracy_mean']:.1f} ± {100 * r['test_accuracy_std']:.1f} |")
    print(f"speed-up (sequential / vmapped wall time): {speedup:.2f}x; "
          f"identical test accuracy in {sum(same)} of {len(same)} members")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "speedup": speedup, "identical_members": int(sum(same)),
                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
