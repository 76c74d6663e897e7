"""Training speed on Cora: gaflax's GAT against PyG's GATConv, same hyperparameters, one process.

    python scripts/bench_train.py --root ../shared/data --seeds 3 --out results/bench_train.json

Both use the GAT paper's setup (8 heads x 8 hidden, ELU, dropout 0.6, one output head, Adam lr
0.005 with L2 5e-4, full batch, early stopping with patience 100, row-normalised features). An
epoch is one training step plus the validation evaluation. Reports the median seconds per epoch,
the seconds per full run (compile included for JAX) and the test accuracy at the best epoch.
PyG is skipped when torch_geometric is not installed (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np

from gaflax import data
from gaflax.config import Config
from gaflax.evaluation import EarlyStopping
from gaflax.train import train_and_evaluate


def run_gaflax(root, pool, seed):
    config = Config.from_dict({"dataset": {"name": "cora", "root": root}, "pool": pool, "seed": seed,
                               "trainer": {"progress": False}})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_and_evaluate(config, tmp)
    return dict(seconds_per_epoch=result["seconds_per_epoch"], seconds_per_run=time.perf_counter() - start,
                epochs=result["epochs"], test_accuracy=result["test/accuracy"], compile_seconds=result["compile_seconds"])


def run_pyg(root, seed):
    import torch
    import torch.nn.functional as F
    from torch_geometric.nn import GATConv

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    ds = data.load("cora", root, normalize_features=True)
    x = torch.from_numpy(ds.graph.nodes)
    edge_index = torch.from_numpy(np.stack([ds.graph.senders, ds.graph.receivers]).astype(np.int64))
    y = torch.from_numpy(ds.labels.astype(np.int64))
    train, val, test = (torch.from_numpy(m) for m in ds.split(seed))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GATConv(x.shape[1], 8, heads=8, dropout=0.6)
            self.conv2 = GATConv(64, ds.num_classes, heads=1, concat=False, dropout=0.6)

        def forward(self, x, edge_index):
            x = F.dropout(x, 0.6, self.training)
            x = F.elu(self.conv1(x, edge_index))
            x = F.dropout(x, 0.6, self.training)
            return self.conv2(x, edge_index)

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=0.005, weight_decay=5e-4)
    stopping, best_test, times = EarlyStopping(patience=100), 0.0, []  # gaflax's rule, the GAT paper's
    start = time.perf_counter()
    for epoch in range(1000):
        t0 = time.perf_counter()
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(x, edge_index)[train], y[train])
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            out = model(x, edge_index)
            val_loss = float(F.cross_entropy(out[val], y[val]))
            pred = out.argmax(1)
            val_acc = float((pred[val] == y[val]).float().mean())
            test_acc = float((pred[test] == y[test]).float().mean())
        times.append(time.perf_counter() - t0)
        if stopping.update(epoch, {"val/loss": val_loss, "val/accuracy": val_acc}, {}):
            best_test = test_acc
        if stopping.stopped:
            break
    return dict(seconds_per_epoch=statistics.median(times), seconds_per_run=time.perf_counter() - start,
                epochs=epoch + 1, test_accuracy=best_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="results/bench_train.json")
    args = parser.parse_args()

    methods = {
        "gaflax GAT (weighted_sum)": lambda s: run_gaflax(args.root, {"name": "weighted_sum"}, s),
        "gaflax GAT (ga, learned alpha)": lambda s: run_gaflax(args.root, {"name": "ga", "learn": True, "scope": "head"}, s),
    }
    try:
        import torch_geometric  # noqa: F401

        methods["PyG GATConv"] = lambda s: run_pyg(args.root, s)
    except ImportError:
        print("torch_geometric not installed: PyG column skipped")

    rows = []
    for name, fn in methods.items():
        runs = [fn(seed) for seed in range(args.seeds)]
        row = dict(method=name, runs=runs,
                   seconds_per_epoch=statistics.median(r["seconds_per_epoch"] for r in runs),
                   seconds_per_run=statistics.median(r["seconds_per_run"] for r in runs),
                   epochs=statistics.median(r["epochs"] for r in runs),
                   test_accuracy=100 * statistics.mean(r["test_accuracy"] for r in runs))
        rows.append(row)
        print(f"{name:32} {row['seconds_per_epoch']:.4f} s/epoch  {row['seconds_per_run']:.1f} s/run  "
              f"{row['epochs']:.0f} epochs  test {row['test_accuracy']:.1f}", flush=True)
    pyg = next((r for r in rows if r["method"] == "PyG GATConv"), None)
    print("\n| method | s / epoch | s / run | epochs | test acc (%) | speed-up vs PyG (epoch / run) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        speed = (f"{pyg['seconds_per_epoch'] / r['seconds_per_epoch']:.1f}x / {pyg['seconds_per_run'] / r['seconds_per_run']:.1f}x"
                 if pyg else "-")
        print(f"| {r['method']} | {r['seconds_per_epoch']:.4f} | {r['seconds_per_run']:.1f} | {r['epochs']:.0f} | "
              f"{r['test_accuracy']:.1f} | {speed} |")
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(seeds=args.seeds, rows=rows), indent=2))


if __name__ == "__main__":
    main()
