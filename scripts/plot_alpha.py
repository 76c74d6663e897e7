"""Figures about the GA exponent, from the lab journal or a run directory. Each writes a PNG.

    python scripts/plot_alpha.py accuracy     --out figures/alpha_accuracy.png   # test acc vs fixed alpha
    python scripts/plot_alpha.py trajectories RUN_DIR --out figures/alpha_traj.png  # learned alpha per epoch
    python scripts/plot_alpha.py synthetic    --out figures/alpha_recovery.png   # true vs learned alpha

``accuracy`` uses the journal's finished runs with a fixed-alpha GA (one line per dataset, a band
for ± std over seeds); ``synthetic`` uses its learned-alpha runs on the synthetic benchmark (the
first layer's alpha, averaged over heads, against the generator's alpha); ``trajectories`` reads
``metrics.jsonl`` (one line per layer and head). ``--filter KEY=VALUE`` narrows the journal runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # experiments/, beside scripts/

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.figures import NAMED, alpha_trajectories, per_head  # noqa: E402
from gaflax.journal import Journal, default_path  # noqa: E402

def _runs(journal_path, filters):
    return Journal(journal_path or default_path()).runs({"status": "done", **filters})


def _by(runs, key_fn, value_fn):
    groups = {}
    for run in runs:
        key = key_fn(run)
        if key is not None:
            groups.setdefault(key, []).append(value_fn(run))
    return groups


def accuracy_vs_alpha(runs, out, metric="test/accuracy"):
    fixed = [r for r in runs if r["config"]["pool"]["name"] == "ga" and not r["config"]["pool"]["learn"]
             and metric in r["results"]]
    if not fixed:
        sys.exit("plot_alpha accuracy: no finished fixed-alpha GA runs in the journal")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for dataset in sorted({r["config"]["dataset"]["name"] for r in fixed}):
        groups = _by([r for r in fixed if r["config"]["dataset"]["name"] == dataset],
                     lambda r: r["config"]["pool"]["alpha"], lambda r: 100 * r["results"][metric])
        alphas = sorted(groups)
        mean = np.array([statistics.fmean(groups[a]) for a in alphas])
        std = np.array([statistics.pstdev(groups[a]) for a in alphas])
        ax.plot(alphas, mean, marker="o", label=dataset)
        ax.fill_between(alphas, mean - std, mean + std, alpha=0.2)
    ax.set_xticks(sorted(NAMED), [f"{a:g}\n{n}" for a, n in sorted(NAMED.items())], fontsize=8)
    ax.set_xlabel("fixed alpha")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=8)
    _save(fig, out)


def trajectories(run_dir, out):
    if not alpha_trajectories(run_dir, out):
        sys.exit(f"plot_alpha trajectories: {run_dir}/metrics.jsonl has no learned alphas")
    print(f"wrote {out}")


def synthetic_recovery(runs, out):
    learned = [r for r in runs if r["config"]["dataset"]["name"] == "synthetic" and r["config"]["pool"]["learn"]
               and r["results"].get("alphas")]
    if not learned:
        sys.exit("plot_alpha synthetic: no finished learned-alpha runs on the synthetic dataset in the journal")

    def first_layer_alpha(run):
        alphas = run["results"]["alphas"]
        return float(np.mean(per_head(alphas[sorted(alphas)[0]])))

    groups = _by(learned, lambda r: r["config"]["dataset"]["options"].get("alpha", 0.0), first_layer_alpha)
    true = sorted(groups)
    mean = np.array([statistics.fmean(groups[a]) for a in true])
    std = np.array([statistics.pstdev(groups[a]) for a in true])
    print("| true alpha | learned alpha (mean ± std) | runs | within ±0.1 |")
    print("|---|---|---|---|")
    for a, m, s in zip(true, mean, std):
        print(f"| {a:g} | {m:.3f} ± {s:.3f} | {len(groups[a])} | {'yes' if abs(m - a) <= 0.1 else 'no'} |")
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([-1, 1], [-1, 1], color="gray", lw=1, ls="--", label="recovered exactly")
    ax.errorbar(true, mean, yerr=std, marker="o", capsize=3, label="learned (first layer)")
    ax.set_xlabel("true alpha")
    ax.set_ylabel("learned alpha")
    ax.legend(fontsize=8)
    _save(fig, out)


def _save(fig, out):
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("accuracy", "trajectories", "synthetic"))
    parser.add_argument("run_dir", nargs="?", help="trajectories: the run directory")
    parser.add_argument("--journal", default=None)
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--metric", default="test/accuracy")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    filters = dict(item.split("=", 1) for item in args.filter)
    if args.kind == "trajectories":
        if not args.run_dir:
            parser.error("trajectories needs RUN_DIR")
        trajectories(args.run_dir, args.out)
    elif args.kind == "accuracy":
        accuracy_vs_alpha(_runs(args.journal, filters), args.out, args.metric)
    else:
        synthetic_recovery(_runs(args.journal, filters), args.out)


if __name__ == "__main__":
    main()
