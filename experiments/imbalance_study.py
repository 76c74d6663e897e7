"""The imbalance study: which tuning objective gives which precision / recall trade-off.

    python -m experiments.imbalance_study --data-root ../shared/data      # the whole study
    python -m experiments.imbalance_study --datasets keel_yeast4 --objectives f1 f_half --trials 3

For every dataset (the Reddit anomaly graph with a GA-aggregation GAT, and KEEL tabular sets with
an MLP, and with ``--models``, tree ensembles too: XGBoost, LightGBM, bagging) and every objective (``conf/decision/``: F1, F-beta 0.5, and GA scores with precision
weighing 0.75 at p = -1, 0, -4), an Optuna study (``hparams_search=imbalance_<kind>``) tunes the
loss, the resampling and the model's hyperparameters on the validation split; every trial is
scored with its decision threshold tuned on validation for the objective. The test split is not touched during the search
(``trainer.evaluate_test=false``): afterwards the best trial's configuration is trained once more
with the same seed (training is deterministic, so it reproduces the trial) and evaluated on test,
once. An untuned reference (the preset's defaults, cross-entropy, argmax) is trained per dataset.

Everything resumes: the Optuna studies live in ``<out>/optuna.sqlite`` and every run in the lab
journal ``<out>/journal.sqlite``, so an interrupted study picks up where it stopped. Outputs:
``<out>/table.md`` (Markdown), ``<out>/study.json`` and the figure (``--figure``; ``--replot`` draws it
again from ``study.json`` alone).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from experiments.runtime import enable_compilation_cache
from experiments.search import run_study
from experiments.train import to_config, train_one
from gaflax.evaluation import sign_test

ROOT = pathlib.Path(__file__).resolve().parents[1]
OBJECTIVES = ("f1", "f_half", "ga_precision_harmonic", "ga_precision_geometric", "ga_precision_strict")
DATASETS = ("reddit_anomaly", "keel_yeast4", "keel_winequality_red_4", "keel_page_blocks0")
OBJECTIVE = "study/val_score"  # what the trials report to Optuna (see _trial_runner)
COLUMNS = ("precision", "recall", "fp", "fn", "f1", "balanced_accuracy", "roc_auc")


def _kind(dataset: str) -> str:
    return "tabular" if dataset.startswith("keel_") else "reddit"


def _run_dir(out_dir: pathlib.Path) -> pathlib.Path:
    """Where a run's files are: its own directory, or the earlier run's when the journal skipped it."""
    pointer = out_dir / "duplicate_of.json"
    return pathlib.Path(json.loads(pointer.read_text())["run_dir"]) if pointer.exists() else out_dir


def _trial_runner(decision):
    """``train_one`` for the studies' trials. Trials train with the neutral ``decision=argmax``, so
    a configuration that several objectives' studies try (their seeded samplers start alike) is
    trained once: the journal skips the repeats. The objective is scored here from the run's
    validation scores, with the threshold tuned for it: what ``decision=<objective>`` computes."""
    import numpy as np

    from gaflax.metrics import select_threshold

    def train(cfg, out_dir):
        results = train_one(cfg, out_dir)
        with np.load(_run_dir(out_dir) / "predictions.npz") as data:
            _, value = select_threshold(data["val_labels"], data["val_scores"], p=decision.p, weights=decision.weights)
        return {**results, OBJECTIVE: value}

    return train


def _models(kind: str, models) -> list[str]:
    """The models a dataset's part tunes: the Reddit graph's GAT, or each of ``models`` on a table."""
    return ["gat"] if kind == "reddit" else list(models)


def run(datasets, objectives, out: pathlib.Path, trials: int | None, data_root: str | None, overrides=(),
        models=("mlp",), seeds=(0,)) -> list[dict]:
    """Run (or resume) every study and its single test evaluation; returns one row per cell. On
    tabular datasets, every model of ``models`` (``mlp``, or a tree ensemble: ``xgboost``,
    ``lightgbm``, ``bagging``) gets its own studies, with the same objectives and protocol. Every
    seed of ``seeds`` is a stratified split (and initialisation) of its own, with its own studies."""
    import optuna
    from hydra import compose, initialize_config_dir

    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / 'optuna.sqlite').resolve()}"
    rows = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for dataset, seed in ((d, s) for d in datasets for s in seeds):
            kind = _kind(dataset)
            for model in _models(kind, models):
                # The MLP's (and Reddit's GAT's) studies keep their original names and directories.
                trees = model not in ("mlp", "gat")
                preset, space, name = ((f"imbalance_{kind}_trees", f"imbalance_{kind}_{model}", f"{dataset}-{model}")
                                       if trees else (f"imbalance_{kind}", f"imbalance_{kind}", dataset))
                place = out / dataset / model if trees else out / dataset
                if seed != 0:  # seed 0 keeps the names and directories of the single-split study
                    name, place = f"{name}-seed{seed}", place / f"seed_{seed}"
                common = [f"experiment={preset}", f"dataset={dataset}", *([f"model={model}"] if trees else []),
                          f"seed={seed}",
                          f"journal.path={(out / 'journal.sqlite').resolve()}", "journal.on_duplicate=skip"]
                if data_root and kind == "reddit":
                    common.append(f"dataset.root={data_root}")
                common += list(overrides)
                # The untuned reference: the preset's defaults, cross-entropy, the most probable class.
                reference = [*common, "decision=argmax"]
                results = train_one(compose(config_name="config", overrides=reference), place / "untuned")
                rows.append(_row(dataset, model, "untuned (argmax)", {}, results, place / "untuned", seed))
                for objective in objectives:
                    cell = place / objective
                    search = [*common, f"hparams_search={space}", f"hparams_search.storage={storage}",
                              f"hparams_search.study_name={name}-{objective}"]
                    if trials:
                        search.append(f"hparams_search.n_trials={trials}")
                    tuning = [*search, "decision=argmax", "trainer.evaluate_test=false", f"objective={OBJECTIVE}"]
                    objective_config = compose(config_name="config", overrides=[*search, f"decision={objective}"])
                    decision = to_config(objective_config).decision
                    run_study(compose(config_name="config", overrides=tuning), tuning, cell, _trial_runner(decision))
                    best = optuna.load_study(study_name=f"{name}-{objective}", storage=storage).best_trial
                    final = [*search, f"decision={objective}", *(f"{k}={v}" for k, v in best.params.items()),
                             "trainer.evaluate_test=true"]
                    print(f"study: {dataset} / {model} / {objective}: the test set, once, for trial {best.number} "
                          f"{best.params}")
                    results = train_one(compose(config_name="config", overrides=final), cell / "final")
                    if abs(results["val/ga_score"] - best.value) > 1e-6:
                        print(f"warning: the retrained best trial gives val/ga_score {results['val/ga_score']:.6f}, "
                              f"the trial gave {best.value:.6f}")
                    rows.append(_row(dataset, model, objective, best.params, results, cell / "final", seed))
    return rows


def _row(dataset, model, objective, params, results, run_dir, seed=0) -> dict:
    return {"dataset": dataset, "model": model, "objective": objective, "seed": seed, "params": params,
            "threshold": results.get("decision/threshold"), "val/ga_score": results.get("val/ga_score"),
            **{name: results.get(f"test/{name}") for name in COLUMNS}, "run_dir": str(_run_dir(run_dir))}


def _picked(params: dict, threshold) -> str:
    short = {"loss": "", "trainer.resample": "", "optimizer.lr": "lr ", "model.hidden": "h ", "model.dropout": "do ",
             "pool.alpha": "α ", "model.learning_rate": "lr ", "model.max_depth": "depth ", "model.num_leaves": "leaves ",
             "model.subsample": "rows ", "model.min_child_weight": "mcw ", "model.min_child_samples": "mcs ",
             "model.balanced": "balanced "}
    parts = []
    for key, value in params.items():
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        if key == "trainer.resample" and value == "none":
            continue
        parts.append(short.get(key, f"{key}=") + text)
    if threshold is not None:
        parts.append(f"t {threshold:.3f}")
    return ", ".join(parts) or "defaults"


def table(rows) -> str:
    """The study's Markdown table: one row per dataset and objective."""
    head = ["dataset", "model", "seed", "objective", "picked (loss, resampling, hyperparameters, threshold)",
            "precision", "recall",
            "FP", "FN", "F1", "bal. acc", "ROC-AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        numbers = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join([r["dataset"], r.get("model", "mlp"), str(r.get("seed", 0)), r["objective"],
                                        _picked(r["params"], r["threshold"]), *numbers]) + " |")
    return "\n".join(lines)


SUMMARY = ("precision", "recall", "fp", "fn", "f1")


def summary(rows) -> str:
    """Mean ± std over the seeds of each (dataset, model, objective), and each objective against
    F1 on the same splits: for precision and recall, the seeds where it is higher / lower than
    F1's, with the sign test's p."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r.get("model", "mlp"), r["objective"]), []).append(r)
    head = ["dataset", "model", "objective", "seeds", *(c.upper() if c in ("fp", "fn") else c for c in SUMMARY),
            "precision vs F1 (+/−, p)", "recall vs F1 (+/−, p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, model, objective), members in groups.items():
        cells = []
        for column in SUMMARY:
            values = [m[column] for m in members if m[column] is not None]
            digits = 1 if column in ("fp", "fn") else 3
            cells.append(f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"
                         if values else "–")
        versus = []
        reference = {m["seed"]: m for m in groups.get((dataset, model, "f1"), [])}
        for column in ("precision", "recall"):
            pairs = [(m[column], reference[m["seed"]][column]) for m in members if m["seed"] in reference]
            if objective == "f1" or not pairs:
                versus.append("–")
                continue
            wins, losses = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
            versus.append(f"+{wins}/−{losses}, p = {sign_test(wins, losses):.2f}")
        lines.append("| " + " | ".join([dataset, model, objective, str(len(members)), *cells, *versus]) + " |")
    return "\n".join(lines)


def figure(rows, path: pathlib.Path):
    """One panel per dataset and model. One split seed: the test PR curve of each objective's chosen
    model, with its operating point (the validation-tuned threshold) marked. Several seeds: each
    objective's test operating point on every seed (small markers) and their mean with ± one std
    in precision and recall (large marker and bars); curves of several splits would hide them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gaflax.metrics import pr_curve

    objectives = list(dict.fromkeys(r["objective"] for r in rows))  # one colour and marker each, everywhere
    panels = {}
    for r in rows:
        panels.setdefault(r["dataset"], {}).setdefault(r.get("model", "mlp"), []).append(r)
    cols = max(len(models) for models in panels.values())
    fig, axes = plt.subplots(len(panels), cols, figsize=(4.2 * cols, 3.8 * len(panels)), squeeze=False)
    for axes_row, (dataset, models) in zip(axes, panels.items()):
        for ax in axes_row[len(models):]:
            ax.axis("off")
        for ax, (model, members) in zip(axes_row, models.items()):
            for i, objective in enumerate(objectives):
                points = [r for r in members if r["objective"] == objective]
                if not points:
                    continue
                color, marker = f"C{i}", "osD^vP"[i % 6]
                recall, precision = np.array([r["recall"] for r in points]), np.array([r["precision"] for r in points])
                if len(points) == 1:
                    with np.load(pathlib.Path(points[0]["run_dir"]) / "predictions.npz") as data:
                        curve_precision, curve_recall, _ = pr_curve(data["test_labels"], data["test_scores"])
                    ax.plot(curve_recall, curve_precision, color=color, lw=1.0, alpha=0.7)
                else:
                    ax.plot(recall, precision, marker, color=color, ms=4, alpha=0.35)
                    ax.errorbar(recall.mean(), precision.mean(), xerr=recall.std(), yerr=precision.std(),
                                color=color, lw=1.0, capsize=2, zorder=3)
                ax.plot(recall.mean(), precision.mean(), marker, color=color, ms=8, mec="black", alpha=0.9,
                        zorder=4, label=objective)
            seeds = len({r.get("seed", 0) for r in members})
            ax.set(title=f"{dataset} / {model}" + (f" ({seeds} seeds)" if seeds > 1 else ""),
                   xlabel="recall (test)", ylabel="precision (test)")
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # zoomed to the points, inside [0, 1]
            ax.set(xlim=(max(x0, -0.02), min(x1, 1.02)), ylim=(max(y0, -0.02), min(y1, 1.02)))
            ax.grid(alpha=0.3)
    handles = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend([handles[o] for o in objectives], objectives, loc="lower center", ncol=len(objectives), fontsize=8,
               frameon=False)
    fig.suptitle("Test precision and recall of each objective's tuned model at its validation-tuned threshold\n"
                 "(one seed: with its PR curve; several: each seed, and the mean ± std)", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), help="names in conf/decision/")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default: the search preset's)")
    parser.add_argument("--models", nargs="+", default=["mlp"], choices=["mlp", "xgboost", "lightgbm", "bagging"],
                        help="the models tuned on the tabular datasets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="stratified split seeds, each with its own studies (summary: mean ± std, sign tests)")
    parser.add_argument("--data-root", default=None, help="directory holding anomaly/reddit.npz (default: $GAFLAX_DATA)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/imbalance"))
    parser.add_argument("--figure", type=pathlib.Path, default=None, help="PNG path (default: <out>/pr_curves.png)")
    parser.add_argument("--replot", action="store_true",
                        help="only draw the figure again from <out>/study.json (nothing is trained or read from the journal)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. trainer.max_epochs=50")
    args = parser.parse_args(argv)
    figure_path = args.figure or args.out / "pr_curves.png"
    if args.replot:
        study = args.out / "study.json"
        if not study.exists():
            parser.error(f"--replot: {study} does not exist (run the study first)")
        figure(json.loads(study.read_text()), figure_path)
        print(f"study: figure in {figure_path}")
        return
    enable_compilation_cache()
    unknown = sorted(set(args.objectives) - {p.stem for p in (ROOT / "conf" / "decision").glob("*.yaml")})
    if unknown:
        parser.error(f"unknown objective(s) {unknown}; they are the names of conf/decision/*.yaml")
    rows = run(args.datasets, args.objectives, args.out, args.trials, args.data_root, args.overrides, args.models,
               args.seeds)
    markdown = table(rows)
    if len(args.seeds) > 1:
        markdown = summary(rows) + "\n\nEvery seed:\n\n" + markdown
    (args.out / "table.md").write_text(markdown + "\n")
    (args.out / "study.json").write_text(json.dumps(rows, indent=2))
    figure(rows, figure_path)
    print(markdown)
    print(f"study: table in {args.out / 'table.md'}, rows in {args.out / 'study.json'}, figure in {figure_path}")


if __name__ == "__main__":
    main()
