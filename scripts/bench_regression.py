"""Steps per second on GenAgg's aggregator-regression benchmark: gaflax's aggregators against the
peers' own PyTorch code (the ``bench`` extra), interleaved in one process.

    python scripts/bench_regression.py --steps 20 --rounds 5 --out results/bench_regression.json

A step is the whole training step on 1024 fresh graphs of 8 nodes: drawing the graphs, the
aggregator forward and backward, and Adam. gaflax runs ``--steps`` steps as one epoch of its task
(one seed, the program that ``experiment=aggregator_regression`` compiles; the first epoch, with
the compile, is not timed). Each peer runs ``--steps`` steps of ``scripts/regression_peers.py``'s
loop on graphs from the same generator (drawn by the same compiled JAX program, then copied to
torch). Rounds alternate gaflax and the peers; the table reports the median milliseconds per step
and the peer's time over gaflax's extended GA. Run it on an idle machine: other jobs on the cores
slow PyTorch's threads far more than XLA's.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax

from gaflax.config import Config
from gaflax.tasks import AggregatorRegressionGrid, load_dataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_ga import write_results  # noqa: E402
from regression_peers import draw, make_peer  # noqa: E402

GAFLAX = ("extended_ga", "ga", "log_ga", "powermean", "softmax_learned", "genagg")
PEERS = ("genagg", "powermean", "softmax")


def gaflax_task(pool: str, target: str, steps: int):
    config = Config.from_dict({
        "dataset": {"name": "aggregator_regression", "options": {"target": target, "steps_per_epoch": steps}},
        "model": {"name": "aggregator"}, "pool": {"name": pool, "learn": True, "scope": "channel", "lr_mult": 10.0},
        "loss": {"name": "mse"}, "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "trainer": {"monitor": "loss", "progress": False}})
    task = AggregatorRegressionGrid([config], load_dataset(config))
    task.train_epoch(0)  # warm-up
    return task


def time_gaflax(task, epoch: int, steps: int) -> float:
    start = time.perf_counter()
    task.train_epoch(epoch)  # returns host values: the epoch has finished
    return (time.perf_counter() - start) / steps


def time_peer(module, optimizer, target: str, steps: int, offset: int) -> float:
    import torch

    key = jax.random.key(20_000)
    start = time.perf_counter()
    for step in range(steps):
        messages, receivers, y = draw(jax.random.fold_in(key, offset + step), target)
        predicted = module(messages, index=receivers, dim_size=y.shape[0])
        loss = torch.nn.functional.mse_loss(predicted, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="std")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gaflax", default=",".join(GAFLAX))
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--out", default="results/bench_regression.json")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("bench_regression: needs torch and torch_geometric (pip install -e '.[bench]') and genagg")

    tasks = {name: gaflax_task(name, args.target, args.steps) for name in args.gaflax.split(",")}
    peers = {}
    for name in args.peers.split(","):
        torch.manual_seed(0)
        module = make_peer(name)
        module.train()
        peers[name] = (module, torch.optim.Adam(module.parameters(), lr=1e-3))
        time_peer(*peers[name], args.target, 2, 0)  # warm-up
    times = {f"gaflax/{n}": [] for n in tasks} | {f"peer/{n}": [] for n in peers}
    for r in range(args.rounds):
        for name, task in tasks.items():
            times[f"gaflax/{name}"].append(time_gaflax(task, r + 1, args.steps))
        for name, (module, optimizer) in peers.items():
            times[f"peer/{name}"].append(time_peer(module, optimizer, args.target, args.steps, 100 + r * args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {1000 * v[-1]:.1f} ms" for k, v in times.items()),
              flush=True)
    reference = statistics.median(times["gaflax/extended_ga"]) if "gaflax/extended_ga" in times else None
    rows = []
    print(f"\ntarget {args.target}, {args.steps} steps x {args.rounds} rounds, 1024 graphs per step, one seed; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads\n")
    print("| implementation | ms / step (median) | × gaflax extended_ga |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / reference if reference else float("nan")
        rows.append(dict(name=name, ms_per_step=1000 * median, all_ms=[1000 * v for v in values], ratio=ratio))
        print(f"| {name} | {1000 * median:.1f} | {ratio:.2f} |")
    write_results(args.out, rows, target=args.target, steps=args.steps, rounds=args.rounds, torch=torch.__version__)


if __name__ == "__main__":
    main()
