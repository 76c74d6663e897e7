"""Paper-style tables (mean ± std over seeds or folds) from the lab journal or from run directories.

    python scripts/make_table.py                                   # the journal: $GAFLAX_JOURNAL
    python scripts/make_table.py --journal journal.sqlite --filter hypothesis=ablation-node
    python scripts/make_table.py --runs multirun/ --column readout --metric test/accuracy

Rows are datasets (``--row`` adds other config keys, e.g. ``--row dataset.name --row model.name``
for one row per dataset and backbone); columns are aggregators (``--column pool``: the pool name,
with the fixed alpha or "learned"), readouts (``readout``) or losses (``loss``). Each cell is the
mean ± std (in %) of ``--metric`` over the runs that share the row and column, with the number of
runs; the best mean of each row is in bold. Prints Markdown, then LaTeX (booktabs).

``--seconds`` adds a table of the median seconds per epoch of each cell, with its ratio to the
row's first column (the backbone's default when that is listed first); ``--learned`` adds the
learned aggregator parameters at each run's best epoch (alpha, p, t, a, b): per layer, the median
over runs of their mean over channels, and their range.

``--versus LABEL`` adds a paired comparison of every column with the column ``LABEL`` (e.g.
``--column readout --versus sum``): per row, the runs of the two columns that share the seed and
fold are paired, and each cell gives wins / ties / losses of ``--metric`` against ``LABEL`` and
the two-sided exact sign test's p (ties dropped). Two runs of one cell with the same seed and fold
(e.g. one experiment at two commits) are an error: filter them, or use ``--newest``.

``--wall`` adds a table of the wall time (hours) of each cell's runs, from the journal's start
and finish times, with overlapping runs (the members of a vmapped grid, parallel workers) counted
once, and the row's total in the last column. Run it without ``--filter trainer.evaluate_test=True``
to include a selection's candidates, which are most of its cost.

``--newest`` keeps, of the runs of one experiment (the same config and data) recorded at several
code versions, only those finished last: a cell rerun at a later commit replaces its earlier runs
instead of being mixed with them. Say in the text which commit each row comes from.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import numpy as np

from gaflax.config import Config, PoolConfig
from gaflax.evaluation import sign_test
from gaflax.journal import Journal, _flatten, default_path, semantic_config
from gaflax.pooling import AGGREGATORS


def _pool_label(pool: dict) -> str:
    """The operator's name, its options where they differ from the defaults (so that, e.g., GenAgg
    with and without its inverse loss are two columns, not one averaged cell), then its exponent."""
    entry = AGGREGATORS.lookup(pool["name"])
    defaults = PoolConfig()
    name = " ".join([pool["name"], *(f"{option}={pool[option]}" for option in entry.options
                                     if option in pool and pool[option] != getattr(defaults, option, pool[option]))])
    if not entry.takes_exponent:
        return name
    return f"{name} learned" if pool["learn"] else f"{name} α={pool['alpha']:g}"


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


def _with_defaults(config: dict) -> dict:
    """The config with today's defaults filled in: a run recorded before a field existed (e.g.
    ``model.message_dropout``) is the same experiment as a later run that holds the default. A
    config the current code no longer reads is returned as it is."""
    try:
        return Config.from_dict(config).to_dict()
    except (ValueError, TypeError, KeyError):
        return config


def newest(runs: list[dict]) -> list[dict]:
    """Of the runs that share their semantic config (with today's defaults filled in) and data
    fingerprint (the same experiment, perhaps at different code versions), the one finished last;
    the rest are left out."""
    latest = {}
    for run in runs:
        key = json.dumps([semantic_config(_with_defaults(run["config"])), run.get("data_fingerprint")],
                         sort_keys=True, default=str)
        if key not in latest or (run.get("finished_at") or 0) >= (latest[key].get("finished_at") or 0):
            latest[key] = run
    kept = {id(run) for run in latest.values()}
    return [run for run in runs if id(run) in kept]


def row_label(config: dict, rows: list[str]) -> str:
    """The row of a run: the values of the flattened config keys ``rows``, joined by " / "."""
    flat = _flatten(config)
    missing = [key for key in rows if key not in flat]
    if missing:
        raise ValueError(f"make_table: --row {missing[0]!r} is not a config key (e.g. dataset.name, model.name)")
    return " / ".join(str(flat[key]) for key in rows)


def collect(runs, column: str, metric: str, rows=("dataset.name",), value=None):
    """{row: {column label: [values]}} and the column labels: plain ones in first-seen order, then
    fixed exponents by alpha, then learned ones (so reruns do not reorder the table). ``value(run)``
    replaces ``run["results"][metric]`` as the collected value (runs without ``metric`` are left out;
    ``metric=""`` keeps every run, for a ``value`` that reads something else)."""
    cells, columns = {}, []
    for run in runs:
        if metric and metric not in run["results"]:
            continue
        label = column_label(run["config"], column)
        if label not in columns:
            columns.append(label)
        collected = run["results"][metric] if value is None else value(run)
        cells.setdefault(row_label(run["config"], list(rows)), {}).setdefault(label, []).append(collected)
    return cells, sorted(columns, key=_column_order)


def busy_hours(intervals) -> float:
    """Hours covered by the union of ``(start, end)`` intervals (unix seconds)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 3600


def render_wall(runs, column: str, rows) -> str:
    """Wall hours of each cell's runs (overlaps counted once) and of the whole row."""
    timed = [run for run in runs if run.get("started_at") and run.get("finished_at")]
    cells, columns = collect(timed, column, "", rows, value=lambda run: (run["started_at"], run["finished_at"]))
    lines = ["| wall hours | " + " | ".join(columns) + " | row |", "|---" * (len(columns) + 2) + "|"]
    for row_name, row in cells.items():
        texts = [f"{busy_hours(row[c]):.2f} ({len(row[c])})" if c in row else "–" for c in columns]
        texts.append(f"{busy_hours([i for c in row for i in row[c]]):.2f}")
        lines.append("| " + " | ".join([row_name, *texts]) + " |")
    return "\n".join(lines)


def render_seconds(cells, columns) -> str:
    """Median seconds per epoch of each cell, and its ratio to the row's first column."""
    lines = ["| s/epoch (× first column) | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row_name, row in cells.items():
        medians = {c: statistics.median(row[c]) for c in columns if c in row}
        reference = next((medians[c] for c in columns if c in medians), None)
        texts = [f"{medians[c]:.3f} (×{medians[c] / reference:.1f})" if c in medians else "–" for c in columns]
        lines.append("| " + " | ".join([row_name, *texts]) + " |")
    return "\n".join(lines)


def pair_key(config: dict) -> tuple:
    """What pairs two runs of different columns: the seed and the fold (None without folds)."""
    flat = _flatten(config)
    return flat.get("seed"), flat.get("trainer.fold")


def paired(runs, column: str, metric: str, reference: str, rows=("dataset.name",)) -> dict:
    """{row: {column label: (wins, ties, losses)}} of ``metric`` against the column ``reference``,
    over the runs paired by ``pair_key`` (the reference column itself is left out; a row without
    the reference column gets no counts)."""
    cells, columns = collect(runs, column, metric, rows,
                             value=lambda run: (pair_key(run["config"]), run["results"][metric]))
    if cells and reference not in columns:
        raise ValueError(f"make_table --versus: no column {reference!r} (columns: {', '.join(sorted(columns))})")
    out = {}
    for row_name, row in cells.items():
        keyed = {}
        for label, keyed_values in row.items():
            cell = keyed[label] = {}
            for key, value in keyed_values:
                if key in cell:
                    raise ValueError(f"make_table --versus: two runs of one cell share seed and fold {key}; "
                                     "filter one of them out, or use --newest")
                cell[key] = value
        out[row_name] = {}
        if reference not in keyed:  # e.g. a dataset still running: its cells print as –
            continue
        base = keyed.pop(reference)
        for label, cell in keyed.items():
            pairs = [(cell[k], base[k]) for k in cell if k in base]
            out[row_name][label] = (sum(a > b for a, b in pairs), sum(a == b for a, b in pairs),
                                    sum(a < b for a, b in pairs))
    return out


def render_versus(counts, columns, reference: str) -> str:
    """Wins / ties / losses against ``reference`` per cell, with the sign test's p."""
    lines = [f"| vs {reference}: W/T/L (sign p) | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row_name, row in counts.items():
        texts = [f"{row[c][0]}/{row[c][1]}/{row[c][2]} (p = {sign_test(row[c][0], row[c][2]):.2f})" if c in row
                 else "–" for c in columns]
        lines.append("| " + " | ".join([row_name, *texts]) + " |")
    return "\n".join(lines)


def _layer_name(key: str) -> str:
    """``gcn_0/t`` and ``readout_alpha`` as they are; a GA exponent's bare layer name ``gcn_0`` ->
    ``gcn_0/alpha``."""
    return key if "/" in key or key.endswith("alpha") else f"{key}/alpha"


def render_learned(cells, columns) -> str:
    """Per cell with learned parameters: ``layer/param median [min, max]``, the median over runs of
    each run's mean over channels (and heads), and the range over every channel of every run."""
    lines = ["| learned at the best epoch | column | parameters |", "|---|---|---|"]
    for row_name, row in cells.items():
        for c in columns:
            per_key = {}
            for alphas in row.get(c, []):
                for key, value in (alphas or {}).items():
                    per_key.setdefault(_layer_name(key), []).append(np.asarray(value, float).ravel())
            if per_key:
                texts = [f"{key} {np.median([v.mean() for v in values]):.2f} "
                         f"[{min(v.min() for v in values):.2f}, {max(v.max() for v in values):.2f}]"
                         for key, values in sorted(per_key.items())]
                lines.append(f"| {row_name} | {c} | " + "; ".join(texts) + " |")
    return "\n".join(lines)


def _column_order(label: str):
    if "α=" in label:
        return (1, float(label.split("α=")[1]))
    return (2, 0.0) if label.endswith(" learned") else (0, 0.0)


def _stats(values):
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def render(cells, columns, latex: bool = False, header: str = "dataset") -> str:
    lines = []
    if latex:
        lines += [r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
                  " & ".join([header.capitalize(), *columns]) + r" \\", r"\midrule"]
    else:
        lines += [f"| {header} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
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
    parser.add_argument("--row", action="append", default=None, metavar="KEY",
                        help="config key that makes the rows (repeatable; default dataset.name)")
    parser.add_argument("--seconds", action="store_true", help="also the seconds per epoch of each cell")
    parser.add_argument("--learned", action="store_true", help="also the learned aggregator parameters")
    parser.add_argument("--wall", action="store_true", help="also the wall hours of each cell's runs (journal only)")
    parser.add_argument("--versus", default=None, metavar="LABEL",
                        help="also each column's wins/ties/losses against this column, paired by seed and fold")
    parser.add_argument("--newest", action="store_true",
                        help="of an experiment run at several code versions, keep only the runs finished last")
    args = parser.parse_args(argv)
    filters = dict(item.split("=", 1) for item in args.filter)
    rows = args.row or ["dataset.name"]
    runs = load_runs(args.journal, args.runs, filters)
    if args.newest:
        runs = newest(runs)
    try:
        cells, columns = collect(runs, args.column, args.metric, rows)
    except ValueError as error:
        sys.exit(str(error))
    if not cells:
        sys.exit(f"make_table: no finished runs with {args.metric!r} found")
    try:  # before anything is printed
        counts = paired(runs, args.column, args.metric, args.versus, rows) if args.versus else None
    except ValueError as error:
        sys.exit(str(error))
    header = " / ".join(key.removesuffix(".name") for key in rows)
    print(render(cells, columns, header=header))
    print()
    print(render(cells, columns, latex=True, header=header))
    if args.seconds:
        timed = [run for run in runs if "seconds_per_epoch" in run["results"]]
        print()
        print(render_seconds(*collect(timed, args.column, "seconds_per_epoch", rows)))
    if args.wall:
        print()
        print(render_wall(runs, args.column, rows))
    if args.versus:
        print()
        print(render_versus(counts, [c for c in columns if c != args.versus], args.versus))
    if args.learned:
        print()
        print(render_learned(*collect(runs, args.column, args.metric, rows,
                                      value=lambda run: run["results"].get("alphas"))))


if __name__ == "__main__":
    main()
