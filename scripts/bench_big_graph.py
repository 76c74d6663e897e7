"""How big a graph trains full batch: a GAT (8 heads x 8, GA learned per head) on ``dataset=sbm``.

    python scripts/bench_big_graph.py --nodes 100000 300000 1000000 --degree 10 --epochs 3 \
        --out results/bench_big_graph.json

Each case runs in a fresh process (so that its peak memory is its own): it generates the
stochastic block model, builds the node task (trainer.remat and trainer.devices / shard=edges as
given), trains ``--epochs`` epochs and reports the seconds per epoch (median, after the first,
which includes nothing but the step: compiling happens before), XLA's memory estimate of the
compiled train step (temporaries + arguments, per device) and the process's peak resident memory
(``ru_maxrss``). A case that is killed (out of memory) or exceeds ``--timeout`` is reported as
such. Cases: for every size, without and with ``trainer.remat``; ``--sharded`` adds the largest
size that trained, edge-sharded over 4 forced host devices.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
import jax
from gaflax.config import Config
from gaflax.tasks import NodeTask, load_dataset
case = json.loads(sys.argv[1])
config = Config.from_dict({
    "dataset": {"name": "sbm", "options": {"num_nodes": case["nodes"], "avg_degree": case["degree"]}},
    "model": {"name": "gat", "hidden": 8, "heads": 8}, "pool": {"name": "ga", "learn": True},
    "trainer": {"remat": case["remat"], "devices": case["devices"], "shard": "edges" if case["devices"] > 1 else "members",
                "progress": False}})
t0 = time.perf_counter()
ds = load_dataset(config)
generate = time.perf_counter() - t0
task = NodeTask(config, ds)
memory = task.train_step.memory_analysis()
times, losses = [], []
for epoch in range(case["epochs"]):
    t0 = time.perf_counter()
    losses.append(float(task.train_epoch(epoch)[0]))
    times.append(time.perf_counter() - t0)
(splits, _), = task.predict(task.params)
accuracy = float((splits["val"][1].argmax(-1) == splits["val"][0]).mean())
print("RESULT " + json.dumps({
    "edges": int(task.inputs.senders.shape[0]), "generate_s": generate, "compile_s": task.compile_seconds,
    "seconds_per_epoch": statistics.median(times[1:] or times), "first_epoch_s": times[0],
    "xla_gb_per_device": (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 1e9 if memory else None,
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "losses": losses,
    "val_accuracy": accuracy, "devices": len(jax.devices())}))
"""


def run_case(case: dict, timeout: float) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if case["devices"] > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={case['devices']}"
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(case)], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=pathlib.Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {**case, "status": f"over {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        killed = proc.returncode in (-9, 137)
        reason = "killed (out of memory)" if killed else f"failed: {proc.stderr.strip().splitlines()[-1:]}"
        return {**case, "status": reason}
    return {**case, "status": "trained", **json.loads(lines[0][7:])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--degree", type=int, default=10, help="mean in-degree (sbm avg_degree)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--no-plain", action="store_true", help="only the trainer.remat=true cases")
    parser.add_argument("--sharded", action="store_true", help="also the largest trained size over 4 devices")
    parser.add_argument("--out", default="results/bench_big_graph.json")
    args = parser.parse_args()

    rows = []
    print("| nodes | edges | remat | devices | status | s/epoch | compile s | XLA GB/device | peak RSS GB | val acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def show(row):
        rows.append(row)
        numbers = [f"{row[k]:.2f}" if isinstance(row.get(k), float) else "–"
                   for k in ("seconds_per_epoch", "compile_s", "xla_gb_per_device", "peak_rss_gb", "val_accuracy")]
        print(f"| {row['nodes']:,} | {row.get('edges', 0):,} | {row['remat']} | {row['devices']} | {row['status']} | "
              + " | ".join(numbers) + " |", flush=True)
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))

    largest = None
    for nodes in args.nodes:
        for remat in ([True] if args.no_plain else [False, True]):
            row = run_case({"nodes": nodes, "degree": args.degree, "remat": remat, "devices": 1,
                            "epochs": args.epochs}, args.timeout)
            show(row)
            if row["status"] == "trained":
                largest = (nodes, remat)
    if args.sharded and largest is not None:
        show(run_case({"nodes": largest[0], "degree": args.degree, "remat": largest[1], "devices": 4,
                       "epochs": args.epochs}, args.timeout))


if __name__ == "__main__":
    main()
