"""gaflax's GAT against PyG's GATConv on the same data, seeds and protocol (issue #22, section 1).

    python scripts/citeseer_vs_pyg.py --root ../shared/data --datasets citeseer cora --seeds 0 1 2 3 4 5 6 7 8 9

Both models are the GAT paper's (and PyG's ``examples/gat.py``): 8 heads x 8 hidden, ELU, one
output head; dropout 0.6 on each layer's input and on the attention coefficients; self-loops;
Adam at lr 0.005 with L2 5e-4 on every parameter; glorot weights and attention, zero biases.
PyG's model is built from gaflax's loaded arrays (the restricted unpickler: the Planetoid pickles
are never unpickled by PyG here), so the inputs are identical by construction; the script checks
the counts PyG documents for them.

Each run trains until the early-stopping rules below have all stopped (patience 100) and records
every epoch's validation loss and accuracy and test accuracy. Each rule then picks its epoch from
the validation numbers alone, and reports the test accuracy there:

- ``gaflax``: stop when neither val accuracy nor val loss improved for 100 epochs; the best epoch
  has the highest val accuracy (ties: the lower val loss). What ``gaflax.evaluation.EarlyStopping``
  does.
- ``gat_paper``: the GAT authors' code (``execute_cora.py``): the patience counter resets when val
  accuracy >= its best or val loss <= its best; a checkpoint is saved only when both hold at once,
  and the last checkpoint is tested.

The two frameworks alternate seed by seed in one process. Prints a table (mean ± std over seeds)
and writes JSON with every run's history.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from gaflax.config import Config
from gaflax.evaluation import EarlyStopping
from gaflax.tasks import NodeTask, load_dataset

# What PyG's Planetoid documents for these files (nodes, undirected edges x 2, features, classes).
PYG_COUNTS = {"cora": (2708, 10556, 1433, 7), "citeseer": (3327, 9104, 3703, 6)}


def gaflax_history(config: Config, ds, max_epochs: int, stop) -> dict:
    task = NodeTask(config, ds)
    history = {"val_loss": [], "val_acc": [], "test_acc": []}
    for epoch in range(max_epochs):
        task.train_epoch(epoch)
        (splits, _), = task.predict(task.params)
        for split, key in (("val", "val"), ("test", "test")):
            labels, probs, loss = splits[split]
            if split == "val":
                history["val_loss"].append(float(loss))
            history[f"{key}_acc"].append(float(np.mean(probs.argmax(-1) == labels)))
        if stop(history):
            break
    return history


def pyg_history(ds, seed: int, max_epochs: int, stop, lr=0.005, weight_decay=5e-4) -> dict:
    import torch
    import torch.nn.functional as F
    from torch_geometric.nn import GATConv

    torch.set_num_threads(1)  # on the shared 2-core CPU two threads made a step 5.8x slower, not faster
    torch.manual_seed(seed)
    dense = np.asarray(ds.graph.nodes, np.float32)
    rows, cols = np.nonzero(dense)  # bag-of-words: ~1 % non-zero, as a sparse matrix (as gaflax does)
    indices = torch.tensor(np.stack([rows, cols]), dtype=torch.long)
    values = torch.tensor(dense[rows, cols])
    edge_index = torch.tensor(np.stack([np.asarray(ds.graph.senders), np.asarray(ds.graph.receivers)]),
                              dtype=torch.long)
    y = torch.tensor(ds.labels, dtype=torch.long)
    train, val, test = (torch.tensor(m) for m in ds.split(seed))

    class SparseInput(torch.nn.Module):
        """conv1's projection x @ W^T for a sparse x (the same weight and glorot init as PyG's Linear)."""

        def __init__(self, linear):
            super().__init__()
            self.weight = linear.weight

        def forward(self, x):
            return torch.sparse.mm(x, self.weight.t())

    class GAT(torch.nn.Module):  # PyG's examples/gat.py, with the input features sparse
        def __init__(self):
            super().__init__()
            self.conv1 = GATConv(dense.shape[1], 8, heads=8, dropout=0.6)
            self.conv1.lin = SparseInput(self.conv1.lin)
            self.conv2 = GATConv(64, ds.num_classes, heads=1, concat=False, dropout=0.6)

        def forward(self, edge_index):
            dropped = F.dropout(values, p=0.6, training=self.training)  # dropout of the non-zeros, as on dense x
            x = torch.sparse_coo_tensor(indices, dropped, dense.shape).coalesce()
            x = F.elu(self.conv1(x, edge_index))
            x = F.dropout(x, p=0.6, training=self.training)
            return self.conv2(x, edge_index)

    model = GAT()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = {"val_loss": [], "val_acc": [], "test_acc": []}
    for _ in range(max_epochs):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(edge_index)[train], y[train]).backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            out = model(edge_index)
        pred = out.argmax(-1)
        history["val_loss"].append(float(F.cross_entropy(out[val], y[val])))
        history["val_acc"].append(float((pred[val] == y[val]).float().mean()))
        history["test_acc"].append(float((pred[test] == y[test]).float().mean()))
        if stop(history):
            break
    return history


def rule_gaflax(history, patience):
    """(stopped, best epoch) of gaflax's EarlyStopping, replayed on this history."""
    stopping = EarlyStopping(patience)
    for epoch, (acc, loss) in enumerate(zip(history["val_acc"], history["val_loss"])):
        stopping.update(epoch, {"val/loss": loss, "val/accuracy": acc}, {})
        if stopping.stopped:
            break
    return stopping.stopped, stopping.epoch


def rule_gat_paper(history, patience):
    """(stopped, checkpoint epoch) of the GAT authors' loop."""
    best_acc, best_loss, checkpoint, since = 0.0, np.inf, 0, 0
    for epoch, (acc, loss) in enumerate(zip(history["val_acc"], history["val_loss"])):
        if acc >= best_acc or loss <= best_loss:
            if acc >= best_acc and loss <= best_loss:
                checkpoint = epoch
            best_acc, best_loss, since = max(acc, best_acc), min(loss, best_loss), 0
        else:
            since += 1
            if since == patience:
                return True, checkpoint
    return False, checkpoint


RULES = {"gaflax": rule_gaflax, "gat_paper": rule_gat_paper}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="data directory (default: $GAFLAX_DATA)")
    parser.add_argument("--datasets", nargs="+", default=["citeseer"], choices=sorted(PYG_COUNTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--frameworks", nargs="+", default=["gaflax", "pyg"], choices=["gaflax", "pyg"])
    parser.add_argument("--gaflax-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides of the gaflax runs, one difference at a time, e.g. "
                             "model.message_dropout=0.6 or dataset.normalize_features=false")
    parser.add_argument("--patience", type=int, default=100)
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--out", default="results/citeseer_vs_pyg.json")
    args = parser.parse_args()

    def stop(history):  # train on until every rule has stopped
        return all(rule(history, args.patience)[0] for rule in RULES.values())

    overrides = {}
    for item in args.gaflax_set:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    gaflax_label = "gaflax" + (f" [{' '.join(args.gaflax_set)}]" if args.gaflax_set else "")

    def merged(base, extra):
        return {k: merged(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in extra.items()} | {
            k: v for k, v in base.items() if k not in extra}

    runs = []
    for name in args.datasets:
        config = Config.from_dict({"dataset": {"name": name, "root": args.root}, "trainer": {"progress": False}})
        ds = load_dataset(config)
        gaflax_config = Config.from_dict(merged(config.to_dict(), overrides))
        ds_gaflax = ds if gaflax_config.dataset == config.dataset else load_dataset(gaflax_config)
        counts = (ds.graph.nodes.shape[0], len(ds.graph.senders), ds.graph.nodes.shape[1], ds.num_classes)
        if counts != PYG_COUNTS[name]:
            raise SystemExit(f"{name}: (nodes, edges, features, classes) = {counts}, PyG documents {PYG_COUNTS[name]}")
        for seed in args.seeds:
            for framework in args.frameworks:
                start = time.perf_counter()
                if framework == "gaflax":
                    history = gaflax_history(Config.from_dict({**gaflax_config.to_dict(), "seed": seed}),
                                             ds_gaflax, args.max_epochs, stop)
                else:
                    history = pyg_history(ds, seed, args.max_epochs, stop)
                label = gaflax_label if framework == "gaflax" else "pyg"
                run = {"dataset": name, "framework": label, "seed": seed, "epochs": len(history["val_acc"]),
                       "seconds": time.perf_counter() - start, "history": history}
                for rule_name, rule in RULES.items():
                    _, epoch = rule(history, args.patience)
                    run[rule_name] = {"epoch": epoch, "test_acc": history["test_acc"][epoch]}
                runs.append(run)
                print(f"{name} seed {seed} {label}: " + ", ".join(
                    f"{r} {100 * run[r]['test_acc']:.1f} (epoch {run[r]['epoch']})" for r in RULES)
                    + f"; {run['epochs']} epochs, {run['seconds']:.0f} s", flush=True)

    print("\n| dataset | framework | seeds | test acc, gaflax rule | test acc, GAT paper's rule | epochs | s / run |")
    print("|---|---|---|---|---|---|---|")
    summary = []
    for name in args.datasets:
        for framework in [gaflax_label if f == "gaflax" else f for f in args.frameworks]:
            rows = [r for r in runs if r["dataset"] == name and r["framework"] == framework]
            cells = {rule: 100 * np.array([r[rule]["test_acc"] for r in rows]) for rule in RULES}
            summary.append({"dataset": name, "framework": framework, "seeds": [r["seed"] for r in rows],
                            **{f"{rule}_mean": float(v.mean()) for rule, v in cells.items()},
                            **{f"{rule}_std": float(v.std()) for rule, v in cells.items()}})
            print(f"| {name} | {framework} | {len(rows)} | {cells['gaflax'].mean():.1f} ± {cells['gaflax'].std():.1f} | "
                  f"{cells['gat_paper'].mean():.1f} ± {cells['gat_paper'].std():.1f} | "
                  f"{np.mean([r['epochs'] for r in rows]):.0f} | {np.mean([r['seconds'] for r in rows]):.0f} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
