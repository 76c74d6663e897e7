"""GenAgg's aggregator-regression benchmark with the peers' own PyTorch code (the ``bench`` extra).

    python scripts/regression_peers.py --steps 300 --seeds 3                 # every peer and target
    python scripts/regression_peers.py --peers genagg --targets max,std --steps 100
    python scripts/regression_peers.py --out results/regression_peers.json

The protocol is gaflax's ``experiment=aggregator_regression`` (the authors' ``run/regress_agg.py``):
every step draws 1024 fresh graphs of 8 nodes with ``gaflax.data.aggregator_regression`` (the same
generator, so the same distribution), the model is the aggregator alone on x_j, trained with MSE
and Adam at lr 1e-3. The peers:

- ``mean``: PyG's ``MeanAggregation``, untrained (the floor);
- ``powermean``: the authors' ``PowerMeanAggregationCustom`` semantics (``run/exp_poweragg.py``):
  ``clamp(mean(clamp(x, 1e-6, 100)^p), 1e-6, 100)^(1/p)`` with one learned p (start 1), on PyG's
  ``Aggregation`` base;
- ``softmax``: PyG's ``SoftmaxAggregation(learn=True)`` (one learned temperature);
- ``genagg``: the ``genagg`` package's ``GenAgg()`` in its default configuration (batch norm).
  Its inverse-reconstruction objective is a forward hook that never fires (``GenAgg.forward``
  calls ``f.forward``, which bypasses hooks; ``tests/test_aggregators.py``), so the package trains
  f^-1 through the task loss alone, as gaflax's ``pool.inverse_loss=false`` (README, Ablation 4).

Each run is evaluated on the fixed test set of gaflax's task (1024 graphs from the key
``AggregatorRegressionGrid.EVAL_KEYS["test"]``), so the MSE and Pearson r compare with gaflax's
``test/mse`` and ``test/pearson_r`` on the same graphs. Seconds per step are the median over steps
of the training step alone (forward, backward, Adam) and of the whole step with the graph drawing.
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

from gaflax.data.aggregator_regression import TARGETS, edge_lists, sample_graphs
from gaflax.metrics import regression_summary
from gaflax.tasks import AggregatorRegressionGrid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_ga import write_results  # noqa: E402  (the shared JSON writer)

PEERS = ("mean", "powermean", "softmax", "genagg")
NODES, CHANNELS, DENSITY, GRAPHS = 8, 6, 0.3, 1024


@functools.partial(jax.jit, static_argnums=(1, 2))
def _generate(key, target, num_graphs):
    x, adjacency, y = sample_graphs(key, target, num_graphs, NODES, CHANNELS, DENSITY)
    senders, receivers, _ = edge_lists(adjacency)
    return x.reshape(-1, CHANNELS)[senders], receivers, y.reshape(-1, CHANNELS)


def draw(key, target, num_graphs=GRAPHS):
    """(x_j per real edge [E, C], receivers [E], y [B n, C]) as torch tensors: gaflax's generator
    (compiled), without the pairs that are not edges."""
    import torch

    messages, receivers, y = (np.array(a) for a in _generate(key, target, num_graphs))  # writable copies for torch
    keep = receivers < num_graphs * NODES
    return (torch.from_numpy(messages[keep]), torch.from_numpy(receivers[keep].astype(np.int64)),
            torch.from_numpy(y))


def make_peer(name):
    import torch
    from torch_geometric.nn.aggr import Aggregation, MeanAggregation, SoftmaxAggregation

    class AuthorsPowerMean(Aggregation):
        """The authors' clamped power mean (run/exp_poweragg.py), one learned p."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, index=None, ptr=None, dim_size=None, dim=-2):
            powered = x.clamp(min=1e-6, max=100).pow(self.p)
            out = self.reduce(powered, index, ptr, dim_size, dim, reduce="mean")
            return out.clamp(min=1e-6, max=100).pow(1.0 / self.p)

    if name == "mean":
        return MeanAggregation()
    if name == "powermean":
        return AuthorsPowerMean()
    if name == "softmax":
        return SoftmaxAggregation(learn=True)
    if name == "genagg":
        from genagg import GenAgg

        return GenAgg()
    raise ValueError(f"regression_peers: unknown peer {name!r}; choose from {PEERS}")


def run(peer, target, steps, seed, test_set):
    import torch

    torch.manual_seed(seed)
    module = make_peer(peer)
    parameters = list(module.parameters())
    optimizer = torch.optim.Adam(parameters, lr=1e-3) if parameters else None
    key = jax.random.key(10_000 + seed)
    step_seconds, total_seconds, losses = [], [], []
    for step in range(steps):
        start = time.perf_counter()
        messages, receivers, y = draw(jax.random.fold_in(key, step), target)
        model_start = time.perf_counter()
        module.train()
        predicted = module(messages, index=receivers, dim_size=y.shape[0])
        loss = torch.nn.functional.mse_loss(predicted, y)
        if optimizer is not None:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        losses.append(float(loss))
        step_seconds.append(time.perf_counter() - model_start)
        total_seconds.append(time.perf_counter() - start)
    messages, receivers, y = test_set(target)
    with torch.no_grad():
        module.train()  # GenAgg's batch norm with batch statistics, as gaflax's (no running averages)
        predicted = module(messages, index=receivers, dim_size=y.shape[0]).numpy().reshape(-1)
    summary = regression_summary(y.numpy().reshape(-1), predicted)  # gaflax's own test/mse, test/pearson_r
    tail = losses[-max(1, steps // 10):]
    return dict(peer=peer, target=target, seed=seed, steps=steps, test_mse=summary["mse"],
                test_pearson_r=summary["pearson_r"],
                train_mse_last_10pct=float(np.mean(tail)), seconds_per_step=statistics.median(step_seconds),
                seconds_per_step_with_data=statistics.median(total_seconds),
                params={name: p.detach().numpy().tolist() for name, p in module.named_parameters() if p.numel() == 1})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="results/regression_peers.json")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("regression_peers: needs torch and torch_geometric (pip install -e '.[bench]') and genagg")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    peers, targets = args.peers.split(","), args.targets.split(",")
    for name in targets:
        if name not in TARGETS:
            sys.exit(f"regression_peers: unknown target {name!r}; choose from {sorted(TARGETS)}")
    test_key = jax.random.key(AggregatorRegressionGrid.EVAL_KEYS["test"])

    def test_set(target):
        return draw(test_key, target)

    rows = []
    for target in targets:
        for peer in peers:
            for seed in range(args.seeds):
                row = run(peer, target, args.steps, seed, test_set)
                rows.append(row)
                print(f"{target:12s} {peer:10s} seed {seed}: test MSE {row['test_mse']:.4g}, r "
                      f"{row['test_pearson_r']:.3f}, {1000 * row['seconds_per_step']:.1f} ms/step", flush=True)
    print(f"\n{args.steps} steps of {GRAPHS} graphs, {args.seeds} seeds; test set: gaflax's (1024 graphs)\n")
    print("| target | peer | test MSE | Pearson r | ms / step (with data) |")
    print("|---|---|---|---|---|")
    for target in targets:
        for peer in peers:
            cell = [r for r in rows if r["target"] == target and r["peer"] == peer]
            mse = [r["test_mse"] for r in cell]
            pearson = [r["test_pearson_r"] for r in cell]
            std = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            print(f"| {target} | {peer} | {statistics.fmean(mse):.4g} ± {std(mse):.2g} | "
                  f"{statistics.fmean(pearson):.3f} ± {std(pearson):.3f} | "
                  f"{1000 * statistics.median(r['seconds_per_step'] for r in cell):.1f} "
                  f"({1000 * statistics.median(r['seconds_per_step_with_data'] for r in cell):.1f}) |")
    write_results(args.out, rows, steps=args.steps, seeds=args.seeds, torch=torch.__version__)


if __name__ == "__main__":
    main()
