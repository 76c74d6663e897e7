"""Graph-classification training speed: gaflax's GIN against a PyG twin, one process, interleaved.

    python scripts/bench_train_graph.py --root ../shared/data --dataset PROTEINS --epochs 40 --rounds 3 \
        --torch-threads 1 2 --out results/bench/train_graph.json

The same model on both sides: GIN as gaflax builds it (``gaflax.models.GINLayer``, 3 layers of 64:
``Linear without bias -> (1 + eps) h_i + sum_j h_j + b -> ReLU -> Linear``, then ReLU and dropout
0.5), a sum readout, one ELU layer of 64 with dropout 0.5 and a linear output; Adam (lr 0.005,
L2 5e-4 added to the gradient), batches of 32 graphs, fold 0 of the 10 stratified folds (seed 0).
Initialisations differ (flax's and torch's defaults), so the accuracies are a sanity check only.

An epoch is one shuffled pass over the training part plus the evaluation of the validation part.
There is no early stopping (patience = epochs): every run trains ``--epochs`` epochs. gaflax pads
each batch to one of a few fixed sizes (``gaflax.data.budgets_for``) and compiles each size once
(the first epochs pay for it); PyG collates each batch in Python every epoch, as its examples do,
with one row per ``--torch-threads`` count (on cores that other jobs share, torch's threads can
spin-wait for them: see the README's tree-ensemble benchmark).
The rows run in turn within each round (one round per seed), so a load on the machine hits all
of them alike. Reported: the median seconds per epoch, the seconds per whole run (compilation
included; gaflax's also loads and checks the dataset files, about 1 s for PROTEINS, which the PyG
rows do once, untimed) and the best validation accuracy (gaflax: at its best epoch
by validation accuracy and loss; PyG: the highest of any epoch). PyG is skipped
when torch_geometric is not installed (``pip install -e ".[bench]"``).
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
from gaflax.train import train_and_evaluate

HIDDEN, LAYERS, MLP, DROPOUT, LR, L2, BATCH = 64, 3, 64, 0.5, 0.005, 5e-4, 32


def gaflax_config(root, dataset, readout, seed, epochs) -> Config:
    return Config.from_dict({
        "dataset": {"name": dataset, "root": root}, "model": {"name": "gin", "hidden": HIDDEN, "num_layers": LAYERS,
                                                              "dropout": DROPOUT, "mlp": [MLP]},
        "readout": {"name": readout}, "optimizer": {"lr": LR, "weight_decay": L2}, "seed": seed,
        "trainer": {"fold": 0, "batch_size": BATCH, "max_epochs": epochs, "patience": epochs, "progress": False}})


def run_gaflax(root, dataset, readout, seed, epochs):
    config = gaflax_config(root, dataset, readout, seed, epochs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_and_evaluate(config, tmp)
    return dict(seconds_per_epoch=result["seconds_per_epoch"], seconds_per_run=time.perf_counter() - start,
                epochs=result["epochs"], compile_seconds=result["compile_seconds"],
                val_accuracy=result["val/accuracy"])


class _PyGData:
    """The dataset as PyG ``Data`` objects (built once, outside the timed runs)."""

    def __init__(self, ds):
        import torch
        from torch_geometric.data import Data

        self.graphs = [Data(x=torch.from_numpy(np.asarray(ds[i].nodes, np.float32)),
                            edge_index=torch.from_numpy(np.stack([ds[i].senders, ds[i].receivers]).astype(np.int64)),
                            y=torch.tensor([int(ds.labels[i])])) for i in range(len(ds))]
        self.num_features, self.num_classes = ds.num_features, ds.num_classes
        self.train, self.val, _ = ds.folds(seed=0)[0]


def pyg_model(num_features, num_classes):
    """gaflax's GIN (``gaflax.models.GraphGNN`` with ``GINLayer``, sum readout) in PyTorch / PyG."""
    import torch
    import torch.nn.functional as F
    from torch_geometric.nn import global_add_pool
    from torch_geometric.utils import scatter

    class GINLayer(torch.nn.Module):  # gaflax.models.GINLayer, batch_norm off
        def __init__(self, fin, fout):
            super().__init__()
            self.proj = torch.nn.Linear(fin, fout, bias=False)
            self.eps = torch.nn.Parameter(torch.zeros(()))
            self.bias = torch.nn.Parameter(torch.zeros(fout))
            self.out = torch.nn.Linear(fout, fout)

        def forward(self, x, edge_index):
            h = self.proj(x)
            neighbours = scatter(h[edge_index[0]], edge_index[1], dim=0, dim_size=h.shape[0], reduce="sum")
            return self.out(F.relu((1 + self.eps) * h + neighbours + self.bias))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            widths = [num_features] + [HIDDEN] * LAYERS
            self.layers = torch.nn.ModuleList(GINLayer(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.mlp = torch.nn.Linear(HIDDEN, MLP)
            self.head = torch.nn.Linear(MLP, num_classes)

        def forward(self, batch):
            x = batch.x
            for layer in self.layers:
                x = F.dropout(F.relu(layer(x, batch.edge_index)), DROPOUT, self.training)
            pooled = global_add_pool(x, batch.batch)
            return self.head(F.dropout(F.elu(self.mlp(pooled)), DROPOUT, self.training))

    return Net()


def copy_gaflax_params(net, params):
    """Load gaflax's GIN parameters (``GraphTask.params``, sum readout) into ``pyg_model``'s ``net``
    (flax kernels are [in, out], torch weights [out, in])."""
    import torch

    def put(target, value, transpose=False):
        value = np.asarray(value)
        target.data = torch.tensor(value.T if transpose else value)  # a copy

    for i, layer in enumerate(net.layers):
        p = params[f"gin_{i}"]
        put(layer.proj.weight, p["proj"]["kernel"], True)
        put(layer.eps, p["eps"])
        put(layer.bias, p["bias"])
        put(layer.out.weight, p["mlp_out"]["kernel"], True)
        put(layer.out.bias, p["mlp_out"]["bias"])
    for module, name in ((net.mlp, "Dense_0"), (net.head, "Dense_1")):
        put(module.weight, params[name]["kernel"], True)
        put(module.bias, params[name]["bias"])


def run_pyg(pyg_data, seed, epochs, threads):
    import torch
    import torch.nn.functional as F
    from torch_geometric.loader import DataLoader

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = pyg_model(pyg_data.num_features, pyg_data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=L2)  # coupled L2, as gaflax's
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader([pyg_data.graphs[i] for i in pyg_data.train], batch_size=BATCH, shuffle=True,
                       generator=generator)
    val = DataLoader([pyg_data.graphs[i] for i in pyg_data.val], batch_size=BATCH)
    times, best, start = [], 0.0, time.perf_counter()
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for batch in train:
            opt.zero_grad()
            F.cross_entropy(model(batch), batch.y).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for batch in val:
                correct += int((model(batch).argmax(1) == batch.y).sum())
        times.append(time.perf_counter() - t0)
        best = max(best, correct / len(pyg_data.val))
    return dict(seconds_per_epoch=statistics.median(times), seconds_per_run=time.perf_counter() - start,
                epochs=epochs, compile_seconds=0.0, val_accuracy=best)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="data directory (default $GAFLAX_DATA)")
    parser.add_argument("--dataset", default="PROTEINS", help="a TU dataset name (MUTAG, PROTEINS, ENZYMES, ...)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row; round r uses seed r")
    parser.add_argument("--readouts", nargs="+", default=["sum", "ga"], help="gaflax rows: GIN with these readouts")
    parser.add_argument("--no-pyg", action="store_true", help="leave out the PyG rows")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                        help="a PyG row per torch thread count (on cores other jobs share, 1 thread can be faster)")
    parser.add_argument("--out", default="results/bench/train_graph.json")
    args = parser.parse_args(argv)

    methods = {f"gaflax GIN ({r} readout)": (lambda s, r=r: run_gaflax(args.root, args.dataset, r, s, args.epochs))
               for r in args.readouts}
    if not args.no_pyg:
        try:
            import torch_geometric  # noqa: F401
        except ImportError:
            print("torch_geometric not installed: PyG row skipped")
        else:
            pyg_data = _PyGData(data.load(args.dataset, args.root))
            for threads in args.torch_threads:
                methods[f"PyG GIN twin (sum readout, {threads} thread{'s' if threads > 1 else ''})"] = (
                    lambda s, threads=threads: run_pyg(pyg_data, s, args.epochs, threads))

    runs = {name: [] for name in methods}
    for round_ in range(args.rounds):
        for name, fn in methods.items():
            runs[name].append(fn(round_))
            r = runs[name][-1]
            print(f"round {round_}: {name:40} {r['seconds_per_epoch']:.4f} s/epoch  {r['seconds_per_run']:.1f} s/run  "
                  f"val acc {r['val_accuracy']:.3f}", flush=True)
    rows = [dict(method=name, runs=rs, seconds_per_epoch=statistics.median(r["seconds_per_epoch"] for r in rs),
                 seconds_per_run=statistics.median(r["seconds_per_run"] for r in rs),
                 compile_seconds=statistics.median(r["compile_seconds"] for r in rs),
                 val_accuracy=statistics.mean(r["val_accuracy"] for r in rs)) for name, rs in runs.items()]
    first = rows[0]
    print(f"\n{args.dataset}, fold 0, {args.epochs} epochs, {args.rounds} rounds (medians)")
    print(f"| method | s / epoch | s / run | first compile (s) | best val acc | epoch time / {first['method']} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds_per_epoch']:.4f} | {r['seconds_per_run']:.1f} | {r['compile_seconds']:.1f} | "
              f"{r['val_accuracy']:.3f} | {r['seconds_per_epoch'] / first['seconds_per_epoch']:.2f} |")
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(dataset=args.dataset, epochs=args.epochs, rounds=args.rounds, rows=rows), indent=2))
    return rows


if __name__ == "__main__":
    main()
