"""The figure and table of GenAgg's aggregator-regression benchmark, from the lab journal: per
target, the test MSE of each aggregator (mean over seeds, the bar; ± std, the whisker), on a log
scale. The peers' rows from ``scripts/regression_peers.py`` join it with ``--peers``. It also
prints the Markdown table (targets x methods, mean ± std) and the goal's count: on how many
targets ``--ours`` (default extended_ga) has a lower mean test MSE than ``--rival`` (default
GenAgg's own code), and on which it reaches ``--threshold`` (1e-4).

    python scripts/plot_regression.py --journal results/regression.sqlite --out docs/figures/regression.png
    python scripts/plot_regression.py --journal results/regression.sqlite --peers results/regression_peers.json

``--filter KEY=VALUE`` narrows the journal runs (e.g. ``trainer.max_epochs=20`` for one step count).
``--journal`` may be given several times; ``--steps`` then tells runs of different lengths apart by
naming each gaflax method with its step count ("extended_ga (10,000 steps)"). ``--floor`` is the
figure's lowest MSE (default 1e-5).

    python scripts/plot_regression.py --journal results/ablations/regression_500.sqlite \
      --journal results/ablations/regression_10k.sqlite --steps --filter pool.name=extended_ga
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gaflax.data.aggregator_regression import TARGETS  # noqa: E402
from gaflax.journal import Journal  # noqa: E402


def steps_of(config: dict) -> int:
    """Training steps of a run: epochs times the steps in an epoch."""
    return config["trainer"]["max_epochs"] * config["dataset"]["options"].get("steps_per_epoch", 100)


def collect(runs, peer_rows=(), steps=False) -> dict:
    """{(target, method): [test MSE per seed]}: gaflax's runs by ``pool.name`` (with ``steps``,
    ``"<pool> (<N> steps)"``), the peers' as ``<peer> (PyTorch)``."""
    cells = {}
    for run in runs:
        config = run["config"]
        if config["dataset"]["name"] != "aggregator_regression" or "test/mse" not in run["results"]:
            continue
        target = config["dataset"]["options"].get("target", "max")
        method = config["pool"]["name"] + (f" ({steps_of(config):,} steps)" if steps else "")
        cells.setdefault((target, method), []).append(run["results"]["test/mse"])
    for row in peer_rows:
        cells.setdefault((row["target"], f"{row['peer']} (PyTorch)"), []).append(row["test_mse"])
    return cells


#: The figure's lowest MSE by default; bars of smaller values (exact matches) reach the axis.
FLOOR = 1e-5


def plot(cells, out, floor=FLOOR):
    targets = [t for t in TARGETS if any(key[0] == t for key in cells)]
    methods = list(dict.fromkeys(method for _, method in cells))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(targets) + 2), 3.8))
    for k, method in enumerate(methods):
        xs, means, stds = [], [], []
        for i, target in enumerate(targets):
            values = cells.get((target, method))
            if values:
                xs.append(i + (k - (len(methods) - 1) / 2) * width)
                means.append(statistics.fmean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        means, stds = np.array(means), np.array(stds)
        lower = np.minimum(stds, 0.999 * means)  # whiskers stay above 0 on the log scale
        ax.bar(xs, means, width, yerr=[lower, stds], label=method, capsize=2)
    ax.set_yscale("log")
    # An exact match (the mean aggregator on the mean: 1e-16) would stretch the axis over 10 decades.
    ax.set_ylim(bottom=floor)
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test MSE (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    print(f"wrote {out}")


def table(cells) -> str:
    """Markdown: a row per target, a column per method, ``mean ± std`` of the test MSE."""
    targets = [t for t in TARGETS if any(key[0] == t for key in cells)]
    methods = list(dict.fromkeys(method for _, method in cells))
    lines = ["| target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for target in targets:
        texts = []
        for method in methods:
            values = cells.get((target, method))
            std = statistics.stdev(values) if values and len(values) > 1 else 0.0
            texts.append(f"{statistics.fmean(values):.3g} ± {std:.2g}" if values else "–")
        lines.append(f"| {target} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def goal(cells, ours: str, rival: str, threshold: float) -> dict:
    """Targets where ``ours`` has the lower mean test MSE than ``rival`` (both measured), and
    targets where ``ours`` reaches ``threshold``."""
    both = [t for t in TARGETS if (t, ours) in cells and (t, rival) in cells]
    better = [t for t in both if statistics.fmean(cells[(t, ours)]) < statistics.fmean(cells[(t, rival)])]
    reached = [t for t in TARGETS if (t, ours) in cells and statistics.fmean(cells[(t, ours)]) <= threshold]
    return {"compared": both, "better": better, "reached": reached}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--journal", required=True, action="append", help="a lab journal; may repeat")
    parser.add_argument("--peers", default=None, help="JSON written by scripts/regression_peers.py")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="docs/figures/regression.png")
    parser.add_argument("--ours", default="extended_ga")
    parser.add_argument("--rival", default="genagg (PyTorch)")
    parser.add_argument("--threshold", type=float, default=1e-4)
    parser.add_argument("--steps", action="store_true", help="name gaflax's methods with their step counts")
    parser.add_argument("--floor", type=float, default=FLOOR, help="the figure's lowest MSE")
    args = parser.parse_args(argv)
    filters = dict(item.split("=", 1) for item in args.filter)
    runs = [run for path in args.journal for run in Journal(path).runs({"status": "done", **filters})]
    peer_rows = json.loads(pathlib.Path(args.peers).read_text())["rows"] if args.peers else ()
    cells = collect(runs, peer_rows, steps=args.steps)
    if not cells:
        sys.exit("plot_regression: no finished aggregator_regression runs with test/mse found")
    plot(cells, args.out, floor=args.floor)
    print(table(cells))
    result = goal(cells, args.ours, args.rival, args.threshold)
    print(f"\n{args.ours} below {args.rival} on {len(result['better'])} of {len(result['compared'])} targets: "
          f"{', '.join(result['better']) or 'none'}")
    print(f"{args.ours} at or below {args.threshold:g}: {', '.join(result['reached']) or 'none'}")


if __name__ == "__main__":
    main()
