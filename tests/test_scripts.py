"""scripts/make_table.py and scripts/plot_alpha.py on a small journal; scripts/bench_ga.py's cases."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaflax
from gaflax import journal as gj
from gaflax.config import Config
from gaflax.train import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODE = {"git_sha": "abc", "dirty": False, "diff_sha256": None, "package": "0.1.0"}


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(jr, dataset, pool, seed, results, options=None):
    config = Config().to_dict()
    config["dataset"]["name"], config["seed"] = dataset, seed
    config["dataset"]["options"] = options or {}
    config["pool"].update(pool)
    decision = jr.begin(config, {"dataset": dataset, **(options or {})}, code=CODE)
    jr.finish(decision.run_id, results)


@pytest.fixture
def jr(tmp_path):
    jr = gj.Journal(tmp_path / "j.sqlite")
    for seed in range(3):
        _record(jr, "cora", {"name": "weighted_sum"}, seed, {"test/accuracy": 0.82 + 0.01 * seed})
        _record(jr, "cora", {"name": "ga", "alpha": -0.5}, seed, {"test/accuracy": 0.70 + 0.01 * seed})
        _record(jr, "cora", {"name": "ga", "alpha": 0.5}, seed, {"test/accuracy": 0.84 + 0.01 * seed})
        _record(jr, "citeseer", {"name": "ga", "alpha": 0.5}, seed, {"test/accuracy": 0.70})
        _record(jr, "citeseer", {"name": "ga", "alpha": 0.5, "learn": True}, seed, {"test/accuracy": 0.72})
        for true in (-0.5, 0.5):
            _record(jr, "synthetic", {"name": "ga", "learn": True}, seed,
                    {"test/accuracy": 0.9, "alphas": {"gat_0": [[true + 0.02 * seed]] * 2, "gat_1": 0.3}},
                    options={"alpha": true})
    return jr


def test_make_table_markdown_and_latex(jr, capsys):
    _script("make_table").main(["--journal", str(jr.path), "--filter", "dataset.name=cora"])
    out = capsys.readouterr().out
    markdown, latex = out.split("\n\n", 1)
    assert "| dataset | weighted_sum | ga α=-0.5 | ga α=0.5 |" in markdown
    assert "| cora | 83.0 ± 1.0 (3) | 71.0 ± 1.0 (3) | **85.0 ± 1.0** (3) |" in markdown
    assert r"\textbf{85.0 $\pm$ 1.0}" in latex and r"\toprule" in latex


def test_make_table_rows_seconds_and_learned_parameters(tmp_path, capsys):
    """--row splits a dataset by backbone; --seconds gives each cell's median s/epoch and its ratio
    to the row's first column; --learned the median over runs of each layer's mean parameter."""
    jr = gj.Journal(tmp_path / "j.sqlite")
    for seed in range(3):
        for model, base in (("gcn", 0.01), ("gat", 0.1)):
            for pool, factor, alphas in (("weighted_sum", 1, {}), ("powermean", 4, {"x_0/p": [[1.0 + seed, 3.0]]})):
                config = Config.from_dict({"model": {"name": model}, "pool": {"name": pool}, "seed": seed}).to_dict()
                decision = jr.begin(config, {"dataset": "cora"}, code=CODE)
                jr.finish(decision.run_id, {"test/accuracy": 0.8 + 0.01 * seed + (model == "gat") * 0.02,
                                            "seconds_per_epoch": base * factor * (1 + seed / 10), "alphas": alphas})
    table = _script("make_table")
    table.main(["--journal", str(jr.path), "--row", "dataset.name", "--row", "model.name", "--seconds", "--learned"])
    out = capsys.readouterr().out
    assert "| dataset / model | weighted_sum | powermean |" in out
    assert "| cora / gcn | **81.0 ± 1.0** (3) | **81.0 ± 1.0** (3) |" in out
    assert "| cora / gat | **83.0 ± 1.0** (3) |" in out
    assert "| cora / gcn | 0.011 (×1.0) | 0.044 (×4.0) |" in out
    assert "| cora / gat | 0.110 (×1.0) | 0.440 (×4.0) |" in out
    assert "| cora / gcn | powermean | x_0/p 2.50 [1.00, 3.00] |" in out  # means 2, 2.5, 3; range 1..3
    with pytest.raises(SystemExit, match="model.nmae"):
        table.main(["--journal", str(jr.path), "--row", "model.nmae"])


def test_plot_regression_draws_targets_by_method(tmp_path, capsys):
    """plot_regression groups gaflax's runs by target and pool, adds the peers' JSON rows, and
    writes a PNG; a journal without regression runs is a clear exit."""
    import json

    jr = gj.Journal(tmp_path / "j.sqlite")
    for seed in range(2):
        for pool, mse in (("ga", 0.01), ("mean", 0.5)):
            config = Config.from_dict({"dataset": {"name": "aggregator_regression", "options": {"target": "std"}},
                                       "model": {"name": "aggregator"}, "pool": {"name": pool},
                                       "loss": {"name": "mse"}, "seed": seed}).to_dict()
            decision = jr.begin(config, {"generator": "x"}, code=CODE)
            jr.finish(decision.run_id, {"test/mse": mse * (1 + seed)})
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"rows": [{"target": "std", "peer": "genagg", "test_mse": 0.2}]}))
    plot = _script("plot_regression")
    cells = plot.collect(gj.Journal(tmp_path / "j.sqlite").runs({"status": "done"}),
                         json.loads(peers.read_text())["rows"])
    assert cells == {("std", "ga"): [0.01, 0.02], ("std", "mean"): [0.5, 1.0], ("std", "genagg (PyTorch)"): [0.2]}
    plot.main(["--journal", str(jr.path), "--peers", str(peers), "--out", str(tmp_path / "r.png"), "--ours", "ga"])
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| std | 0.015 ± 0.0071 | 0.75 ± 0.35 | 0.2 ± 0 |" in printed
    assert "ga below genagg (PyTorch) on 1 of 1 targets: std" in printed
    assert plot.goal(cells, "mean", "genagg (PyTorch)", 1e-4) == {"compared": ["std"], "better": [], "reached": []}
    with pytest.raises(SystemExit, match="no finished aggregator_regression runs"):
        plot.main(["--journal", str(jr.path), "--filter", "seed=7", "--out", str(tmp_path / "none.png")])
    # Two journals of different lengths, told apart by their step counts.
    long = gj.Journal(tmp_path / "long.sqlite")
    config = Config.from_dict({"dataset": {"name": "aggregator_regression", "options": {"target": "std"}},
                               "model": {"name": "aggregator"}, "pool": {"name": "ga"}, "loss": {"name": "mse"},
                               "trainer": {"max_epochs": 100}}).to_dict()
    long.finish(long.begin(config, {"generator": "x"}, code=CODE).run_id, {"test/mse": 1e-7})
    plot.main(["--journal", str(jr.path), "--journal", str(long.path), "--steps", "--floor", "1e-8",
               "--filter", "pool.name=ga", "--ours", "ga (10,000 steps)", "--out", str(tmp_path / "s.png")])
    printed = capsys.readouterr().out
    assert "| target | ga (100,000 steps) | ga (10,000 steps) |" in printed  # the default 1000 epochs
    assert "| std | 0.015 ± 0.0071 | 1e-07 ± 0 |" in printed
    assert "ga (10,000 steps) at or below 0.0001: std" in printed


def test_make_table_from_run_directories(tmp_path, capsys):
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 100, "task": "classification"}},
                               "model": {"hidden": 2, "heads": 1}, "trainer": {"max_epochs": 2, "progress": False}})
    train_and_evaluate(config, tmp_path / "runs" / "0")
    _script("make_table").main(["--runs", str(tmp_path / "runs")])
    assert "| synthetic | **" in capsys.readouterr().out


def test_plot_alpha_writes_pngs(jr, tmp_path, capsys):
    plot = _script("plot_alpha")
    plot.main(["accuracy", "--journal", str(jr.path), "--out", str(tmp_path / "acc.png")])
    plot.main(["synthetic", "--journal", str(jr.path), "--out", str(tmp_path / "syn.png")])
    table = capsys.readouterr().out
    assert "| -0.5 | -0.480 ± 0.016 | 3 | yes |" in table
    config = Config.from_dict({"dataset": {"name": "synthetic", "options": {"num_nodes": 100, "task": "classification"}},
                               "model": {"hidden": 2, "heads": 2}, "pool": {"name": "ga", "learn": True, "scope": "head"},
                               "trainer": {"max_epochs": 3, "progress": False}})
    train_and_evaluate(config, tmp_path / "run")
    plot.main(["trajectories", str(tmp_path / "run"), "--out", str(tmp_path / "traj.png")])
    for name in ("acc.png", "syn.png", "traj.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_ga_cases_compute_the_same_means():
    """The benchmark compares like with like: its power mean cases agree, and the floor is the plain
    power sum."""
    bench = _script("bench_ga")
    rng = np.random.default_rng(0)
    e, f, n = 300, 4, 20
    ids = jnp.asarray(np.sort(rng.integers(0, n - 1, e)).astype(np.int32))  # the last segment is empty
    x = jnp.asarray(rng.uniform(0.05, 5.0, (e, f)).astype(np.float32))
    ct = jnp.asarray(rng.normal(size=(n, f)).astype(np.float32))
    cases = bench.jax_cases(x, ids, n, ct)
    fwd = {name: np.asarray(pair[0]()) for name, pair in cases.items()}
    p = gaflax.p_from_alpha(0.3)  # the exponent jax_cases uses
    np.testing.assert_allclose(fwd["segment_sum"], jax.ops.segment_sum(x, ids, n), rtol=1e-6)
    np.testing.assert_allclose(fwd["power_sum (floor)"], jax.ops.segment_sum(x**p, ids, n), rtol=1e-5)
    np.testing.assert_allclose(fwd["segment_ga (x)"], fwd["naive_pmean"], rtol=1e-5)
    np.testing.assert_array_equal(fwd["segment_ga (x)"], fwd["segment_ga (x, alpha)"])
    for name, (_, fwd_bwd) in cases.items():
        value, grads = fwd_bwd()
        assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)), name
    # --kernel on: the fused Pallas cases (interpreted here) give the XLA cases' values and gradients.
    fused = bench.jax_cases(x, ids, n, ct, kernel=True)
    for name in ("segment_ga (x)", "segment_ga (x, alpha)"):
        np.testing.assert_allclose(fused[f"{name} [pallas]"][0](), fwd[name], rtol=1e-6)
        for got, want in zip(jax.tree.leaves(fused[f"{name} [pallas]"][1]()), jax.tree.leaves(cases[name][1]())):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bench_aggregators_times_every_registered_operator():
    """Every operator in the registry is a case (through pooling.make, as the models use it), and
    its forward value and backward gradients are finite on a small shape."""
    bench = _script("bench_aggregators")
    rng = np.random.default_rng(1)
    e, c, n = 200, 4, 20
    ids = jnp.asarray(np.sort(rng.integers(0, n, e)).astype(np.int32))
    x = jnp.asarray(rng.normal(size=(e, c)).astype(np.float32))
    ct = jnp.asarray(rng.normal(size=(n, c)).astype(np.float32))
    cases = bench.gaflax_cases(x, ids, n, ct)
    distinct = {entry.fn for entry in gaflax.pooling.AGGREGATORS.values()}
    assert len(cases) == len(distinct)
    for name, (forward, backward) in cases.items():
        assert np.isfinite(np.asarray(forward())).all(), name
        if name in ("ga", "pna", "genagg"):  # an exponent, weight matrices, an auxiliary loss
            value, grads = backward()
            assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert set(bench.PEERS) <= set(gaflax.pooling.AGGREGATORS)


def test_bench_regression_times_gaflax_and_a_peer(tmp_path, capsys):
    """Two steps of gaflax's extended GA and of the authors' power mean, interleaved; the JSON
    holds both rows, the ratio to gaflax and every round's time."""
    pytest.importorskip("torch_geometric", reason="the peers need the bench extra (torch, torch_geometric)")
    bench = _script("bench_regression")
    bench.main(["--steps", "2", "--rounds", "1", "--gaflax", "extended_ga", "--peers", "powermean",
                "--out", str(tmp_path / "bench.json")])
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["gaflax/extended_ga", "peer/powermean"]
    assert rows[0]["ratio"] == 1.0 and all(r["ms_per_step"] > 0 and len(r["all_ms"]) == 1 for r in rows)
    assert "| peer/powermean |" in capsys.readouterr().out


def test_bench_trees_times_each_thread_count(tmp_path, capsys):
    """One round of one epoch per booster and thread count: every row timed, ratios to the first
    thread count, and the library's thread setting restored afterwards."""
    pytest.importorskip("xgboost", reason="needs the [experiments] extra")
    pytest.importorskip("lightgbm", reason="needs the [experiments] extra")
    from gaflax import ensembles

    bench = _script("bench_trees")
    bench.main(["--epochs", "1", "--rounds", "1", "--load", "a test", "--out", str(tmp_path / "trees.json")])
    out = json.loads((tmp_path / "trees.json").read_text())
    assert [(r["model"], r["threads"]) for r in out["rows"]] == [("xgboost", 1), ("xgboost", 2), ("lightgbm", 1),
                                                                  ("lightgbm", 2)]
    assert all(r["median_seconds"] > 0 and len(r["seconds"]) == 1 for r in out["rows"])
    assert out["rows"][0]["ratio"] == 1.0 and out["meta"]["load"] == "a test"
    assert ensembles.TREE_THREADS == 1 and "lightgbm" in capsys.readouterr().out


def test_device_check_script_is_ready_to_run():
    """scripts/device_check.sh (run on a GPU when one is lent): valid bash, every flag it passes to
    a script is one that script accepts, and its pytest selection collects tests."""
    import re
    import subprocess
    import sys

    text = (ROOT / "scripts" / "device_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "device_check.sh")]).returncode == 0
    calls = re.findall(r"scripts/(\w+)\.py((?:[^\n]|\\\n)*)", text)
    assert {name for name, _ in calls} == {"bench_ga", "bench_grid", "reproduce_gat"}
    for name, arguments in calls:
        usage = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), "--help"], capture_output=True,
                               text=True, cwd=ROOT).stdout
        for flag in re.findall(r"(--[\w-]+)", arguments):
            assert flag in usage, (name, flag)
    selection = re.search(r'-k "([^"]+)"', text).group(1)
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider",
                                "tests/test_devices.py", "tests/test_backbones.py", "-k", selection],
                               capture_output=True, text=True, cwd=ROOT).stdout
    assert re.search(r"(\d+)/\d+ tests collected|(\d+) tests collected", collected), collected[-500:]
    assert "test_data_parallel_graph_batches_equal_one_device" in collected and "bfloat16" in collected
    assert "tests/test_kernels.py" in text and "--kernel on" in text  # the fused kernel, compiled on the GPU


def test_bench_big_graph_trains_and_reports_a_small_case(tmp_path, capsys):
    """scripts/bench_big_graph.py at a toy size: the case trains in its own process (with
    trainer.remat) and reports its edges, seconds per epoch, XLA's memory estimate and peak RSS."""
    bench = _script("bench_big_graph")
    out = tmp_path / "big.json"
    import sys

    argv = sys.argv
    sys.argv = ["bench_big_graph.py", "--nodes", "400", "--epochs", "2", "--no-plain", "--timeout", "300",
                "--out", str(out)]
    try:
        bench.main()
    finally:
        sys.argv = argv
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["status"] == "trained" and rows[0]["remat"] is True
    row = rows[0]
    assert row["edges"] > 2 * 400 and row["seconds_per_epoch"] > 0 and row["peak_rss_gb"] > 0.1
    assert row["xla_gb_per_device"] > 0 and len(row["losses"]) == 2 and all(np.isfinite(row["losses"]))
    assert "| 400 |" in capsys.readouterr().out


def test_citeseer_vs_pyg_rules():
    """The comparison's gaflax rule is gaflax's EarlyStopping; the GAT authors' rule checkpoints
    only when validation accuracy and loss both reach their best (non-strictly)."""
    from gaflax.evaluation import EarlyStopping

    script = _script("citeseer_vs_pyg")
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 60
        history = {"val_acc": list(np.round(rng.random(n), 1)), "val_loss": list(rng.random(n))}
        stopping = EarlyStopping(patience=5)
        for epoch in range(n):
            stopping.update(epoch, {"val/loss": history["val_loss"][epoch], "val/accuracy": history["val_acc"][epoch]},
                            {})
            if stopping.stopped:
                break
        stopped, best = script.rule_gaflax(history, 5)
        assert (stopped, best) == (stopping.stopped, stopping.epoch)
    # Accuracy up, loss up: gaflax's best epoch moves, the authors' checkpoint does not.
    history = {"val_acc": [0.5, 0.6, 0.6, 0.55], "val_loss": [1.0, 1.1, 0.9, 0.95]}
    assert script.rule_gaflax(history, 10) == (False, 2)
    assert script.rule_gat_paper(history, 10) == (False, 2)
    history = {"val_acc": [0.5, 0.6, 0.55, 0.55], "val_loss": [1.0, 1.1, 1.2, 1.3]}
    assert script.rule_gaflax(history, 2) == (True, 1)
    assert script.rule_gat_paper(history, 2) == (True, 0)


def test_make_table_newest_keeps_a_rerun_instead_of_mixing_it(tmp_path, capsys):
    """A cell rerun at a later commit: by default both commits' runs are averaged; with --newest
    only the later runs of each experiment count, and cells run once are kept as they are."""
    jr = gj.Journal(tmp_path / "j.sqlite")
    later = {**CODE, "git_sha": "def"}
    for seed in range(2):
        for pool, code, accuracy in (("ga", CODE, 0.70), ("ga", later, 0.80), ("weighted_sum", CODE, 0.75)):
            config = Config.from_dict({"pool": {"name": pool}, "seed": seed}).to_dict()
            decision = jr.begin(config, {"dataset": "cora"}, code=code)
            jr.finish(decision.run_id, {"test/accuracy": accuracy + 0.01 * seed})
    table = _script("make_table")
    table.main(["--journal", str(jr.path)])
    assert "(4)" in capsys.readouterr().out  # the ga cell mixes both commits
    table.main(["--journal", str(jr.path), "--newest"])
    out = capsys.readouterr().out
    assert "| cora | 75.5 ± 0.7 (2) | **80.5 ± 0.7** (2) |" in out


def test_make_table_newest_fills_in_fields_added_since_a_run(tmp_path, capsys):
    """A run recorded before a config field existed (here model.message_dropout and
    trainer.grid_step) and its rerun, which holds the field's default, are the same experiment:
    --newest keeps only the rerun. A rerun with a different value stays a separate experiment."""
    jr = gj.Journal(tmp_path / "j.sqlite")
    later = {**CODE, "git_sha": "def"}
    for seed in range(2):
        config = Config.from_dict({"pool": {"name": "max"}, "seed": seed}).to_dict()
        old = json.loads(json.dumps(config))
        del old["model"]["message_dropout"], old["trainer"]["grid_step"]
        for recorded, code, accuracy in ((old, CODE, 0.70), (config, later, 0.80)):
            decision = jr.begin(recorded, {"dataset": "cora"}, code=code)
            jr.finish(decision.run_id, {"test/accuracy": accuracy + 0.01 * seed})
    table = _script("make_table")
    table.main(["--journal", str(jr.path), "--newest"])
    assert "| cora | **80.5 ± 0.7** (2) |" in capsys.readouterr().out
    dropped = Config.from_dict({"pool": {"name": "max"}, "seed": 0, "model": {"message_dropout": 0.5}}).to_dict()
    jr.finish(jr.begin(dropped, {"dataset": "cora"}, code=later).run_id, {"test/accuracy": 0.5})
    table.main(["--journal", str(jr.path), "--newest"])
    assert "(3)" in capsys.readouterr().out  # the message-dropout run is another experiment, kept


def test_bench_train_graph_pyg_twin_is_gaflax_gin(tmp_path, capsys):
    """scripts/bench_train_graph.py's PyG model computes gaflax's GIN: with gaflax's parameters
    copied in, the logits of a batch agree (evaluation mode), and the parameter counts match. One
    round of one epoch writes a row per method."""
    pytest.importorskip("torch_geometric", reason="the peer needs the bench extra (torch, torch_geometric)")
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark files not found at {SHARED_DATA} (MUTAG)")
    import torch
    from torch_geometric.data import Batch as PyGBatch

    from gaflax.tasks import GraphTask, load_dataset

    bench = _script("bench_train_graph")
    config = bench.gaflax_config(str(SHARED_DATA), "MUTAG", "sum", 0, 1)
    ds = load_dataset(config)
    task = GraphTask(config, ds)
    pyg = bench._PyGData(ds)
    net = bench.pyg_model(pyg.num_features, pyg.num_classes).eval()
    leaves = jax.tree_util.tree_leaves(task.params)
    assert sum(np.size(a) for a in leaves) == sum(p.numel() for p in net.parameters())
    # every parameter moved off its initial value (eps and the biases start at 0)
    keys = iter(jax.random.split(jax.random.key(1), len(leaves)))
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(next(keys), a.shape), task.params)
    bench.copy_gaflax_params(net, params)

    (graph, labels, mask), _, keep = task._eval_batches("val")[0]
    logits = np.asarray(task.eval_step(params, graph, labels, mask[None])[0])[keep]
    val = task.indices["val"][: int(keep.sum())]
    with torch.no_grad():
        twin = net(PyGBatch.from_data_list([pyg.graphs[i] for i in val])).numpy()
    np.testing.assert_allclose(twin, logits, rtol=1e-4, atol=1e-4)

    rows = bench.main(["--root", str(SHARED_DATA), "--dataset", "MUTAG", "--epochs", "1", "--rounds", "1",
                       "--readouts", "sum", "--torch-threads", "1", "--out", str(tmp_path / "graph.json")])
    saved = json.loads((tmp_path / "graph.json").read_text())["rows"]
    assert [r["method"] for r in saved] == [r["method"] for r in rows] == [
        "gaflax GIN (sum readout)", "PyG GIN twin (sum readout, 1 thread)"]
    assert all(r["seconds_per_epoch"] > 0 and len(r["runs"]) == 1 for r in saved)
    assert "| PyG GIN twin (sum readout, 1 thread) |" in capsys.readouterr().out


def test_make_table_versus_pairs_runs_by_seed_and_fold(tmp_path, capsys):
    """--versus sum: each readout's test accuracy against sum's on the same fold (wins / ties /
    losses and the sign test); a fold only one column has is left out, and two runs of one cell on
    the same fold are a clear error."""
    jr = gj.Journal(tmp_path / "j.sqlite")
    sum_accuracy = [0.5, 0.6, 0.7, 0.8, 0.9, 0.5]
    others = {"max": [0.6, 0.7, 0.8, 0.9, 1.0, 0.4], "mean": [0.5, 0.5, 0.7, 0.7, 0.9, 0.5]}
    for fold in range(6):
        for readout, accuracies in (("sum", sum_accuracy), *others.items()):
            if readout == "mean" and fold == 5:
                continue  # mean lacks fold 5: 5 pairs
            config = Config.from_dict({"dataset": {"name": "MUTAG"}, "model": {"name": "gin"},
                                       "readout": {"name": readout}, "trainer": {"fold": fold}}).to_dict()
            jr.finish(jr.begin(config, {"dataset": "MUTAG"}, code=CODE).run_id, {"test/accuracy": accuracies[fold]})
    table = _script("make_table")
    table.main(["--journal", str(jr.path), "--column", "readout", "--versus", "sum"])
    out = capsys.readouterr().out
    # max: 5 wins, 1 loss -> p = 2 * 7 / 64; mean: 3 ties, 2 losses -> p = 2 * 1 / 4
    assert "| vs sum: W/T/L (sign p) | max | mean |" in out
    assert "| MUTAG | 5/0/1 (p = 0.22) | 0/3/2 (p = 0.50) |" in out
    with pytest.raises(SystemExit, match="no column 'median'"):
        table.main(["--journal", str(jr.path), "--column", "readout", "--versus", "median"])
    # A dataset that has no sum yet (still running) prints – instead of stopping the table.
    config = Config.from_dict({"dataset": {"name": "PROTEINS"}, "model": {"name": "gin"},
                               "readout": {"name": "max"}, "trainer": {"fold": 0}}).to_dict()
    jr.finish(jr.begin(config, {"dataset": "PROTEINS"}, code=CODE).run_id, {"test/accuracy": 0.7})
    table.main(["--journal", str(jr.path), "--column", "readout", "--versus", "sum"])
    assert "| PROTEINS | – | – |" in capsys.readouterr().out
    later = {**CODE, "git_sha": "def"}
    config = Config.from_dict({"dataset": {"name": "MUTAG"}, "model": {"name": "gin"},
                               "readout": {"name": "max"}, "trainer": {"fold": 0}}).to_dict()
    jr.finish(jr.begin(config, {"dataset": "MUTAG"}, code=later).run_id, {"test/accuracy": 0.1})
    with pytest.raises(SystemExit, match=r"share seed and fold \(0, 0\)"):
        table.main(["--journal", str(jr.path), "--column", "readout", "--versus", "sum"])
    assert capsys.readouterr().out == ""  # the error comes before any table
    table.main(["--journal", str(jr.path), "--column", "readout", "--versus", "sum", "--newest"])
    versus = capsys.readouterr().out.split("| vs sum")[1]
    assert "4/0/2 (p = 0.69)" in versus and "0/3/2 (p = 0.50)" in versus


def test_make_table_wall_hours_count_overlaps_once(jr, capsys):
    """--wall: the union of the runs' [start, finish] intervals per cell (vmapped grid members and
    parallel workers overlap), and of the whole row."""
    table = _script("make_table")
    assert table.busy_hours([(0, 3600), (1800, 5400), (7200, 10800), (7300, 7400)]) == pytest.approx(2.5)
    assert table.busy_hours([]) == 0.0
    table.main(["--journal", str(jr.path), "--filter", "dataset.name=cora", "--wall"])
    wall = capsys.readouterr().out.split("| wall hours |")[1]
    assert wall.startswith(" weighted_sum | ga α=-0.5 | ga α=0.5 | row |")
    assert wall.count("(3)") == 3  # each cell's three seeds


def test_make_table_columns_tell_an_operator_s_options_apart():
    """A non-default option is part of the column (GenAgg without its inverse loss, GA with another
    positive transform); defaults keep the bare name, and the exponent stays last."""
    table = _script("make_table")
    genagg = Config.from_dict({"readout": {"name": "genagg"}}).to_dict()
    assert table.column_label(genagg, "readout") == "genagg"
    genagg["readout"]["inverse_loss"] = False
    assert table.column_label(genagg, "readout") == "genagg inverse_loss=False"
    ga = Config.from_dict({"pool": {"name": "ga", "alpha": -0.5, "positive": "exp"}}).to_dict()
    assert table.column_label(ga, "pool") == "ga positive=exp α=-0.5"
    assert table._column_order("ga positive=exp α=-0.5") == (1, -0.5)
