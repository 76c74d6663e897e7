"""Paper-style tables (mean ± std over seeds or folds) from the lab journal or from run directories.

    python scripts/make_table.py                                   # the journal: $GAFLAX_JOURNAL
    python scripts/make_table.py --journal journal.sqlite --filter hypothesis=ablation-node
    python scripts/make_table.py --runs multirun/ --column readout --metric test/accuracy

Rows are datasets; columns are aggregators (``--column pool``: the pool name, with the fixed alpha
or "learned"), readouts (``readout``) or losses (``loss``). Each cell is the mean ± std (in %) of
``--metric`` over the runs that share the row and column, with the number of runs; the best
mean of each row is in bold. Prints Markdown, then LaTeX (booktabs).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

from gaflax.journal import Journal, default_path
from gaflax.pooling import AGGREGATORS


def _pool_label(pool: dict) -> str:
    if not AGGREGATORS.lookup(pool["name"]).takes_exponent:
        return pool["name"]
    return f"{pool['name']} learned" if pool["learn"] else f"{pool['name']} α={pool['alpha']:g}"


def column_label(config: dict, column: str) -> str:
    if column == "pool":
        return _pool_label(config["pool"])
    if column == "readout":
        if "readout" in config:
            return _pool_label(config["readout"])
        # Journals written before the readout group: model.readout, its exponent always learned.
        return _pool_label({"name": config["model"]["readout"], "learn": True})
    if column == "loss":
        loss = config.get("loss", {"name": "ce"})
        return f"ga α={loss['alpha']:g}" if loss["name"] == "ga" else loss["name"]
    raise ValueError(f"make_table: unknown column kind {column!r}; expected pool, readout or loss")


def load_runs(journal_path=None, runs_dir=None, filters=None) -> list[dict]:
    """[{config, results}] of the finished runs in the journal, or under a directory of runs."""
    if runs_dir is not None:
        out = []
        for results_file in sorted(pathlib.Path(runs_dir).rglob("results.json")):
            config_file = results_file.with_name("config.json")
            if config_file.exists():
                out.append({"config": json.loads(config_file.read_text()), "results": json.loads(results_file.read_text())})
        return out
    journal = Journal(journal_path or default_path())
    return [r for r in journal.runs({"status": "done", **(filters or {})})]


def collect(runs, column: str, metric: str):
    """{dataset: {column label: [values]}} and the column labels: plain ones in first-seen order, then
    fixed exponents by alpha, then learned ones (so reruns do not reorder the table)."""
    cells, columns = {}, []
    for run in runs:
        if metric not in run["results"]:
            continue
        label = column_label(run["config"], column)
        if label not in columns:
            columns.append(label)
        cells.setdefault(run["config"]["dataset"]["name"], {}).setdefault(label, []).append(run["results"][metric])
    return cells, sorted(columns, key=_column_order)


def _column_order(label: str):
    if "α=" in label:
        return (1, float(label.split("α=")[1]))
    return (2, 0.0) if label.endswith("learned") else (0, 0.0)


def _stats(values):
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def render(cells, columns, latex: bool = False) -> str:
    lines = []
    if latex:
        lines += [r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
                  " & ".join(["Dataset", *columns]) + r" \\", r"\midrule"]
    else:
        lines += ["| dataset | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for dataset, row in cells.items():
        stats = {c: _stats(row[c]) for c in columns if c in row}
        best = max(m for m, _ in stats.values())
        texts = []
        for c in columns:
            if c not in stats:
                texts.append("–")
                continue
            mean, std = stats[c]
            text = f"{mean:.1f} ± {std:.1f}" if not latex else f"{mean:.1f} $\\pm$ {std:.1f}"
            if abs(mean - best) < 1e-9:
                text = f"**{text}**" if not latex else f"\\textbf{{{text}}}"
            texts.append(text + ("" if latex else f" ({len(row[c])})"))
        lines.append((" & ".join([dataset, *texts]) + r" \\") if latex else ("| " + " | ".join([dataset, *texts]) + " |"))
    if latex:
        lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--journal", default=None, help="journal file (default: $GAFLAX_JOURNAL or journal.sqlite)")
    source.add_argument("--runs", default=None, help="a directory searched for run directories instead")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="journal filter, e.g. hypothesis=... or trainer.max_epochs=1000 (repeatable)")
    parser.add_argument("--column", default="pool", choices=("pool", "readout", "loss"))
    parser.add_argument("--metric", default="test/accuracy")
    args = parser.parse_args(argv)
    filters = dict(item.split("=", 1) for item in args.filter)
    cells, columns = collect(load_runs(args.journal, args.runs, filters), args.column, args.metric)
    if not cells:
        sys.exit(f"make_table: no finished runs with {args.metric!r} found")
    print(render(cells, columns))
    print()
    print(render(cells, columns, latex=True))


if __name__ == "__main__":
    main()
