"""gaflax.data: loaders against the known counts, bad and missing files, synthetic data, batching."""

import io
import os
import pickle
import re
import shutil
import urllib.error
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import gaflax
from gaflax import data
from gaflax.compat import jraph
from gaflax.config import Config
from gaflax.data import DatasetError, load
from gaflax.data import _files
from gaflax.data.__main__ import main as stats_main
from tests.conftest import SHARED_DATA

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark files not found at {SHARED_DATA}")


def _assert_clean_undirected(graph):
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    n = int(graph.n_node[0])
    assert not np.any(s == r), "self-loops"
    keys = r.astype(np.int64) * n + s
    assert len(np.unique(keys)) == len(keys), "duplicate edges"
    assert set(zip(s.tolist(), r.tolist())) == set(zip(r.tolist(), s.tolist())), "not symmetric"


# ---------------------------------------------------------------------------------------------
# Real files (../shared/data)
# ---------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name, nodes, features, classes, edges, split", [
    ("cora", 2708, 1433, 7, 10556, (140, 500, 1000)),
    ("citeseer", 3327, 3703, 6, 9104, (120, 500, 1000)),
])
def test_planetoid_counts_and_public_split(name, nodes, features, classes, edges, split):
    ds = load(name, SHARED_DATA)
    assert (ds.num_nodes, ds.num_features, ds.num_classes) == (nodes, features, classes)
    assert int(ds.graph.n_edge[0]) == edges
    _assert_clean_undirected(ds.graph)
    train, val, test = ds.split(0)
    assert (train.sum(), val.sum(), test.sum()) == split
    assert not (train & val).any() and not (train & test).any() and not (val & test).any()
    assert ds.split_is_fixed and np.array_equal(ds.split(5)[0], train)
    assert ds.labels.min() == 0 and ds.labels.max() == classes - 1


@needs_data
def test_planetoid_row_normalisation():
    ds = load("cora", SHARED_DATA, normalize_features=True)
    sums = ds.graph.nodes.sum(1)
    np.testing.assert_allclose(sums[sums > 0], 1, rtol=1e-5)


@needs_data
@pytest.mark.parametrize("name, graphs, classes", [
    ("MUTAG", 188, 2), ("PROTEINS", 1113, 2), ("ENZYMES", 600, 6), ("NCI1", 4110, 2), ("IMDB-BINARY", 1000, 2),
])
def test_tu_counts_labels_and_folds(name, graphs, classes):
    ds = load(name, SHARED_DATA)
    assert len(ds) == graphs and ds.num_classes == classes
    assert set(np.unique(ds.labels)) == set(range(classes))
    g = ds[0]
    assert g.n_node.shape == (1,) and g.nodes.shape == (int(g.n_node[0]), ds.num_features)
    assert g.senders.max() < g.n_node[0]
    folds = ds.folds(seed=0)
    assert len(folds) == 10
    tests = np.concatenate([t for _, _, t in folds])
    assert np.array_equal(np.sort(tests), np.arange(graphs))  # every graph tested exactly once
    for train, val, test in folds:
        assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
        assert len(train) + len(val) + len(test) == graphs
        # Stratified: each class's share of the test fold is within one graph of its overall share.
        for c in range(classes):
            expected = (ds.labels == c).mean() * len(test)
            assert abs((ds.labels[test] == c).sum() - expected) <= 1.5
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(folds, ds.folds(seed=0)))


@needs_data
def test_tu_features_and_deduplicated_edges():
    enzymes = load("ENZYMES", SHARED_DATA)
    assert enzymes.num_features == 18 + 3  # 18 attributes + one-hot of 3 node labels
    mutag = load("MUTAG", SHARED_DATA)
    assert mutag.num_edge_features == 4  # one-hot bond types
    assert mutag[0].edges.shape == (int(mutag[0].n_edge[0]), 4)
    imdb = load("IMDB-BINARY", SHARED_DATA)
    for g in imdb.graphs[:50]:
        keys = np.asarray(g.receivers, np.int64) * int(g.n_node[0]) + g.senders
        assert len(np.unique(keys)) == len(keys)
        degree = np.bincount(g.receivers, minlength=int(g.n_node[0]))
        np.testing.assert_array_equal(g.nodes.argmax(1), degree)  # one-hot degree features


@needs_data
@pytest.mark.parametrize("name, nodes, features, classes", [
    ("amazon_photo", 7650, 745, 8), ("coauthor_cs", 18333, 6805, 15),
])
def test_shchur_counts_and_per_seed_split(name, nodes, features, classes):
    ds = load(name, SHARED_DATA)
    assert (ds.num_nodes, ds.num_features, ds.num_classes) == (nodes, features, classes)
    _assert_clean_undirected(ds.graph)
    train, val, test = ds.split(0)
    for c in range(classes):
        assert train[ds.labels == c].sum() == 20 and val[ds.labels == c].sum() == 30
    assert test.sum() == nodes - 50 * classes
    assert not np.array_equal(ds.split(1)[0], train)  # a new split per seed
    assert np.array_equal(ds.split(0)[0], train)


@needs_data
def test_reddit_anomaly_counts_and_stratified_split():
    ds = load("reddit_anomaly", SHARED_DATA)
    assert ds.num_nodes == 10984 and ds.num_features == 64 and ds.labels.sum() == 366
    np.testing.assert_allclose(ds.class_ratio[1], 366 / 10984)
    train, val, test = ds.split(3)
    for mask in (train, val, test):
        assert abs(ds.labels[mask].mean() - 366 / 10984) < 0.003


@needs_data
def test_stats_cli(capsys):
    stats_main(["MUTAG", "--root", str(SHARED_DATA)])
    out = capsys.readouterr().out
    assert "188" in out and "class balance" in out and "degree" in out


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_unknown_name_is_clear():
    with pytest.raises(DatasetError, match="unknown dataset 'coraa'. Known: cora, citeseer"):
        load("coraa", "/nonexistent")


def test_missing_files_offline_names_expected_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(_files.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match=r"(?s)'cora'.*ind\.cora\.x.*kimiyoung/planetoid.*GAFLAX_DATA"):
        load("cora", tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)MUTAG\.zip.*graphkerneldatasets"):
        load("MUTAG", tmp_path)
    with pytest.raises(DatasetError, match="reddit.npz is missing"):
        load("reddit_anomaly", tmp_path)


def test_download_checks_sha256(tmp_path, monkeypatch):
    source = tmp_path / "src.bin"
    source.write_bytes(b"hello")
    target = tmp_path / "root"
    paths = _files.ensure_files(target, {"a/b.bin": source.as_uri()}, "demo")
    assert paths["a/b.bin"].read_bytes() == b"hello"
    monkeypatch.setitem(_files.KNOWN_SHA256, "a/c.bin", "0" * 64)
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        _files.ensure_files(target, {"a/c.bin": source.as_uri()}, "demo")
    assert not (target / "a/c.bin").exists()


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GAFLAX_DATA", str(tmp_path))
    assert data.default_root() == tmp_path


def _write_tu(folder, name, files):
    folder.mkdir(parents=True)
    for part, text in files.items():
        (folder / f"{name}_{part}.txt").write_text(text)


GOOD_TU = {"A": "1, 2\n2, 1\n3, 4\n4, 3\n", "graph_indicator": "1\n1\n2\n2\n", "graph_labels": "-1\n1\n"}


def test_tu_folder_and_label_mapping(tmp_path):
    _write_tu(tmp_path / "tu" / "TOY", "TOY", GOOD_TU)
    ds = load("TOY", tmp_path)
    assert len(ds) == 2 and list(ds.labels) == [0, 1]
    assert ds.num_features == 2  # one-hot degree 0..1


@pytest.mark.parametrize("part, text, message", [
    ("graph_labels", "1\n", r"graph_indicator.*graph_labels has 1 lines"),
    ("node_labels", "0\n1\n", r"node_labels: has 2 lines, expected 4"),
    ("A", "1, 2\n2, x\n", r"TOY_A\.txt, line 2: cannot parse"),
    ("A", "1, 9\n", r"node ids must lie in 1\.\.4"),
])
def test_tu_malformed_files_name_file_and_line(tmp_path, part, text, message):
    _write_tu(tmp_path / "tu" / "TOY", "TOY", GOOD_TU | {part: text})
    with pytest.raises(DatasetError, match=message):
        load("TOY", tmp_path)


def test_tu_zip_missing_member(tmp_path):
    (tmp_path / "tu").mkdir()
    with zipfile.ZipFile(tmp_path / "tu" / "TOY.zip", "w") as z:
        z.writestr("TOY/TOY_A.txt", "1, 2\n")
    with pytest.raises(DatasetError, match="TOY_graph_indicator.txt is missing"):
        load("TOY", tmp_path)


def test_planetoid_corrupt_pickle(tmp_path):
    folder = tmp_path / "planetoid" / "cora"
    folder.mkdir(parents=True)
    for part in data.datasets.PLANETOID_PARTS:
        (folder / f"ind.cora.{part}").write_bytes(b"not a pickle" if part != "test.index" else b"1\n2\n")
    with pytest.raises(DatasetError, match=r"ind\.cora\.allx is not the published file"):
        load("cora", tmp_path)
    with pytest.warns(UserWarning, match="differs from the published file"), \
            pytest.raises(DatasetError, match=r"cannot read .*ind\.cora\.x"):
        load("cora", tmp_path, verify=False)


# ---------------------------------------------------------------------------------------------
# Files that are wrong must not load, and must not run code
# ---------------------------------------------------------------------------------------------
def _copy_shared(tmp_path, *rels):
    for rel in rels:
        src = SHARED_DATA / rel
        dst = tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
    return tmp_path


@needs_data
def test_truncated_planetoid_test_index_is_refused(tmp_path):
    """Before, a test.index cut to 501 lines loaded with 501 test nodes and shuffled features."""
    root = _copy_shared(tmp_path, "planetoid/cora")
    index = root / "planetoid/cora/ind.cora.test.index"
    index.write_text("".join(index.read_text().splitlines(keepends=True)[:501]))
    with pytest.raises(DatasetError, match=r"ind\.cora\.test\.index is not the published file.*dataset\.verify=false"):
        load("cora", root)
    with pytest.warns(UserWarning, match="dataset.verify=false"), \
            pytest.raises(DatasetError, match=r"test\.index: has 501 ids but tx has 1000 rows"):
        load("cora", root, verify=False)


@needs_data
def test_modified_files_load_on_purpose_with_a_warning(tmp_path):
    """dataset.verify=false is the documented way to load a modified file; it still warns."""
    root = _copy_shared(tmp_path, "npz/amazon_photo.npz")
    path = root / "npz/amazon_photo.npz"
    extra = io.BytesIO()
    np.save(extra, np.arange(3))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("extra.npy", extra.getvalue())  # a harmless change
    with pytest.raises(DatasetError, match="amazon_photo.npz is not the published file"):
        load("amazon_photo", root)
    with pytest.warns(UserWarning, match="amazon_photo.npz differs from the published file"):
        ds = load("amazon_photo", root, verify=False)
    assert ds.num_nodes == 7650


@needs_data
@pytest.mark.parametrize("rel,name", [("tu/MUTAG.zip", "MUTAG"), ("npz/coauthor_cs.npz", "coauthor_cs"),
                                      ("anomaly/reddit.npz", "reddit_anomaly")])
def test_corrupt_archives_name_the_file(tmp_path, rel, name):
    """Before, a truncated zip raised a raw BadZipFile / zlib.error without the path."""
    root = _copy_shared(tmp_path, rel)
    path = root / rel
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # cut: no central directory
    with pytest.raises(DatasetError, match="not the published file"):
        load(name, root)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=rf"{re.escape(str(path))}.*truncated or corrupt"):
        load(name, root, verify=False)
    # A damaged deflate stream behind an intact directory (zlib.error, or a CRC error).
    data = bytearray(raw)
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 10, start + min(info.compress_size, 4000) - 10):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=re.escape(str(path))):
        load(name, root, verify=False)


def _write_planetoid(root, name, features, onehot, n_train, test_ids, edges):
    """A small Planetoid-format set: the first rows are allx (n_train of them labelled x / y)."""
    folder = root / "planetoid" / name
    folder.mkdir(parents=True)
    n_all = len(features) - len(test_ids)
    parts = {"x": sp.csr_matrix(features[:n_train]), "y": onehot[:n_train], "allx": sp.csr_matrix(features[:n_all]),
             "ally": onehot[:n_all], "tx": sp.csr_matrix(features[n_all:]), "ty": onehot[n_all:],
             "graph": {i: [j for a, j in edges if a == i] for i in range(len(features))}}
    for part, value in parts.items():
        (folder / f"ind.{name}.{part}").write_bytes(pickle.dumps(value, protocol=2))
    (folder / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in test_ids))


def _toy_planetoid(root, name="toy", features=None):
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 1, (12, 5)).astype(np.float32) if features is None else features
    onehot = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    _write_planetoid(root, name, features, onehot, 3, [8, 9, 10, 11], [(i, (i + 1) % 12) for i in range(12)])


def test_nan_features_are_an_error_or_replaced_on_purpose(tmp_path):
    """Before, NaN features loaded; with normalisation the row became 0 silently, without it the
    run trained on NaN."""
    features = np.random.default_rng(1).uniform(0, 1, (12, 5)).astype(np.float32)
    features[2, 1] = np.nan
    features[9, 0] = np.inf
    _toy_planetoid(tmp_path, features=features)
    for normalize in (False, True):
        with pytest.raises(DatasetError, match=r"toy.*2 feature values in 2 rows are NaN or infinite.*nonfinite_features=zero"):
            data.datasets.load_planetoid("toy", tmp_path, normalize_features=normalize)
    with pytest.warns(UserWarning, match="replaced with 0"):
        ds = data.datasets.load_planetoid("toy", tmp_path, nonfinite_features="zero")
    assert np.isfinite(ds.graph.nodes).all() and ds.graph.nodes[2, 1] == 0
    assert ds.fingerprint["nonfinite_features"] == "zero"


def test_nan_features_config_stops_before_training(tmp_path, monkeypatch):
    """The same file through a run config: refused at load, never trained."""
    from gaflax import tasks
    from gaflax.config import Config
    features = np.random.default_rng(1).uniform(0, 1, (12, 5)).astype(np.float32)
    features[4, 4] = np.nan
    _toy_planetoid(tmp_path, name="cora", features=features)
    config = Config.from_dict({"dataset": {"name": "cora", "root": str(tmp_path), "verify": False,
                                           "normalize_features": False}})
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="NaN or infinite"):
        tasks.load_dataset(config)


def test_labels_out_of_range_name_the_file_and_row(tmp_path):
    """Before, label 50 in a Shchur file silently made 51 classes and -1 trained."""
    folder = tmp_path / "npz"
    folder.mkdir()
    n = 40
    for bad, match in ((50, r"label 50 at row 7 is outside 0\.\.7"), (-1, r"label -1 at row 7 is outside 0\.\.7")):
        labels = np.arange(n, dtype=np.int32) % 8
        labels[7] = bad
        adj = sp.csr_matrix(np.eye(n, k=1, dtype=np.float32))
        np.savez(folder / "amazon_photo.npz", adj_matrix=np.array(adj, dtype=object),
                 node_attr=np.array(sp.csr_matrix(np.ones((n, 3), np.float32)), dtype=object), node_label=labels)
        with pytest.warns(UserWarning), pytest.raises(DatasetError, match=rf"amazon_photo\.npz: node_label: {match}"):
            load("amazon_photo", tmp_path, verify=False)


def test_reddit_labels_and_edges_are_checked_at_load(tmp_path):
    """Before, a label outside {0, 1} loaded and crashed in trivial_baselines after training."""
    (tmp_path / "anomaly").mkdir()
    x = np.ones((20, 4), np.float32)
    edge_index = np.stack([np.arange(19), np.arange(1, 20)])
    y = np.zeros(20, np.int64)
    y[3] = 2
    np.savez(tmp_path / "anomaly/reddit.npz", x=x, edge_index=edge_index, y=y)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"reddit\.npz: y: label 2 at row 3"):
        load("reddit_anomaly", tmp_path, verify=False)
    y[3] = 1
    edge_index[1, 0] = 20
    np.savez(tmp_path / "anomaly/reddit.npz", x=x, edge_index=edge_index, y=y)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"edge_index: node ids must lie in 0\.\.19"):
        load("reddit_anomaly", tmp_path, verify=False)


def test_empty_split_is_an_error(tmp_path):
    """Before, an empty test split reported accuracy 0.0."""
    (tmp_path / "anomaly").mkdir()
    y = np.zeros(20, np.int64)
    y[:6] = 1
    np.savez(tmp_path / "anomaly/reddit.npz", x=np.ones((20, 4), np.float32),
             edge_index=np.stack([np.arange(19), np.arange(1, 20)]), y=y)
    with pytest.warns(UserWarning):
        ds = load("reddit_anomaly", tmp_path, verify=False, fractions=(0.8, 0.2, 0.0))
    with pytest.raises(DatasetError, match=r"reddit_anomaly.*the test part of split \(seed 0\) is empty"):
        ds.split(0)


def test_graph_folds_refuse_an_empty_part():
    ds = load("synthetic", level="graph", num_graphs=12, task="classification", num_classes=2, seed=0)
    with pytest.raises(DatasetError, match="validation part of fold 0"):
        ds.folds(seed=0, n_folds=10, holdout=0.0)


class _Marker:
    ran = False


def _would_run():  # what a malicious pickle would call
    _Marker.ran = True
    return []


class _CallsAFunction:
    def __reduce__(self):
        return (_would_run, ())


def test_dataset_pickles_cannot_run_code(tmp_path):
    """A tampered Planetoid file that names a function is refused by name, and the function never
    runs (before, the unpickler imported and called anything a file named)."""
    _toy_planetoid(tmp_path, name="cora")
    graph = tmp_path / "planetoid/cora/ind.cora.graph"
    graph.write_bytes(pickle.dumps({0: _CallsAFunction()}, protocol=2))
    with pytest.warns(UserWarning), \
            pytest.raises(DatasetError, match=r"ind\.cora\.graph: refused to load: the file names tests\.test_data\._would_run"):
        load("cora", tmp_path, verify=False)
    assert not _Marker.ran
    # The same through an object array of a Shchur .npz, with os.system.
    (tmp_path / "npz").mkdir()
    payload = pickle.dumps(np.array([os.system], dtype=object), protocol=2)
    with zipfile.ZipFile(tmp_path / "npz/amazon_photo.npz", "w") as archive:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        archive.writestr("adj_matrix.npy", buffer.getvalue() + payload)  # magic, header, pickle
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"adj_matrix\.npy: refused to load: .*system"):
        load("amazon_photo", tmp_path, verify=False)


# ---------------------------------------------------------------------------------------------
# Synthetic aggregator benchmark
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.0, 0.3, 1.0])
def test_synthetic_node_labels_are_the_true_ga(alpha):
    ds = load("synthetic", level="node", alpha=alpha, num_nodes=300, seed=1)
    g = ds.graph
    expected = gaflax.segment_ga(jnp.asarray(g.nodes[g.senders, 0]), jnp.asarray(g.receivers), ds.num_nodes, alpha=alpha)
    np.testing.assert_allclose(ds.labels, expected, rtol=2e-5)
    _assert_clean_undirected(g)
    assert ds.task == "regression" and ds.fingerprint["generator"]["alpha"] == alpha


def test_synthetic_graph_level_and_classification():
    ds = load("synthetic", level="graph", alpha=0.5, num_graphs=60, seed=2)
    assert len(ds) == 60
    np.testing.assert_allclose(ds.labels[3], ds[3].nodes[:, 0].mean(), rtol=1e-5)  # alpha 0.5: arithmetic
    cls = load("synthetic", level="graph", alpha=0.5, num_graphs=60, task="classification", num_classes=3, seed=2)
    assert cls.num_classes == 3 and np.bincount(cls.labels).min() >= 19
    again = load("synthetic", level="graph", alpha=0.5, num_graphs=60, seed=2)
    assert np.array_equal(again.labels, ds.labels)  # seeded


@needs_data
def test_an_option_a_loader_does_not_take_is_named():
    """Before, debug=fast dataset=mutag passed synthetic's num_nodes to the TU loader: a raw TypeError."""
    with pytest.raises(DatasetError, match=r"dataset 'MUTAG' does not take the option 'num_nodes' \(dataset.options.num_nodes\)"):
        load("MUTAG", SHARED_DATA, num_nodes=200)


def test_synthetic_bad_parameters():
    with pytest.raises(ValueError, match=r"alpha must lie in \[-1, 1\]"):
        load("synthetic", alpha=2.0)
    with pytest.raises(ValueError, match="level must be"):
        load("synthetic", level="edge")
    # Sizes that cannot work: before, num_nodes=0 or 1 gave a raw IndexError.
    for options, message in [({"num_nodes": 0}, r"num_nodes=0 must be an int >= 2"),
                             ({"num_nodes": 1}, r"num_nodes=1 must be an int >= 2"),
                             ({"avg_degree": 0}, r"avg_degree=0 must be an int >= 1"),
                             ({"num_features": 2.5}, r"num_features=2.5 must be an int >= 1"),
                             ({"num_classes": 1, "task": "classification"}, r"num_classes=1 must be an int >= 2"),
                             ({"level": "graph", "nodes_per_graph": [1, 4]}, r"nodes_per_graph=\[1, 4\] must be"),
                             ({"noise": float("nan")}, r"noise=nan must be a finite number")]:
        with pytest.raises(ValueError, match=rf"synthetic: dataset\.options\.{message}"):
            load("synthetic", **options)


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------
def test_batching_compiles_a_bounded_number_of_times():
    ds = load("synthetic", level="graph", num_graphs=200, nodes_per_graph=(3, 40), seed=3)
    budgets = data.budgets_for(ds, batch_size=16)
    traces = []

    @jax.jit
    def readout(graph, graph_mask):
        traces.append(1)  # runs only when jax traces (= compiles) the function
        graph_ids = jnp.repeat(jnp.arange(graph.n_node.shape[0]), graph.n_node, total_repeat_length=graph.nodes.shape[0])
        sums = jax.ops.segment_sum(graph.nodes, graph_ids, graph.n_node.shape[0])
        return jnp.where(graph_mask[:, None], sums, 0).sum()

    seen_shapes = set()
    for epoch in range(2):
        for batch in data.iterate_batches(ds, np.arange(len(ds)), 16, budgets, shuffle=True, seed=0, epoch=epoch):
            readout(batch.graph, batch.graph_mask)
            seen_shapes.add(batch.graph.nodes.shape)
            assert batch.graph_mask.sum() <= 16 and not batch.graph_mask[-1]
            assert batch.node_mask.sum() == batch.graph.n_node[batch.graph_mask].sum()
            np.testing.assert_array_equal(batch.node_mask, jraph.get_node_padding_mask(batch.graph))
    assert len(traces) == len(seen_shapes) <= len(budgets) <= len(data.BUDGET_QUANTILES) + 1


def test_budgets_fit_the_largest_batch_and_pad_random_ones_little():
    """The largest budget fits the batch of the biggest graphs; random batches (shuffled epochs)
    pad by under 15 % of their nodes on average, where budgets halving from the largest padded
    these by over 30 %; the budgets follow from the dataset alone (not numpy's global state)."""
    ds = load("synthetic", level="graph", num_graphs=300, nodes_per_graph=(3, 60), seed=5)
    np.random.seed(1)
    budgets = data.budgets_for(ds, batch_size=16)
    np.random.seed(2)
    assert data.budgets_for(ds, batch_size=16) == budgets
    biggest = np.argsort([-int(g.n_node[0]) for g in ds.graphs])[:16]
    assert data.pad_batch([ds[i] for i in biggest], ds.labels[biggest], budgets).graph.nodes.shape[0] == budgets[-1].n_node
    by_edges = np.argsort([-int(g.n_edge[0]) for g in ds.graphs])[:16]
    assert data.pad_batch([ds[i] for i in by_edges], ds.labels[by_edges], budgets).graph.senders.shape[0] == budgets[-1].n_edge

    def padding(budgets):
        real = padded = 0
        for epoch in range(5):
            for batch in data.iterate_batches(ds, np.arange(len(ds)), 16, budgets, shuffle=True, seed=0, epoch=epoch):
                real, padded = real + batch.node_mask.sum(), padded + batch.node_mask.size
        return padded / real

    top = budgets[-1]
    halving = [data.Budget(-(-top.n_node // 2**k // 32) * 32, -(-top.n_edge // 2**k // 32) * 32, top.n_graph)
               for k in (2, 1, 0)]
    assert padding(budgets) < 1.15 < 1.3 < padding(halving)


def test_batches_are_padded_correctly_and_order_is_seeded():
    ds = load("synthetic", level="graph", num_graphs=40, seed=4)
    budgets = data.budgets_for(ds, batch_size=8)
    order = lambda seed, epoch: np.concatenate([  # noqa: E731
        b.labels[b.graph_mask] for b in data.iterate_batches(ds, np.arange(40), 8, budgets, shuffle=True, seed=seed, epoch=epoch)])
    assert np.array_equal(order(0, 0), order(0, 0))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert np.array_equal(np.sort(order(0, 0)), np.sort(ds.labels))
    first = next(data.iterate_batches(ds, np.arange(8), 8, budgets))
    assert first.graph.nodes.shape[0] in {b.n_node for b in budgets}
    np.testing.assert_array_equal(first.labels[:8], ds.labels[:8])


def test_stats_cli_unknown_name_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        stats_main(["nope", "--root", "/nonexistent"])
    assert exit_info.value.code == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


@needs_data
def test_standardize_scales_continuous_columns_with_the_training_fold_only():
    """ENZYMES: 18 continuous attributes (values up to 762) and 3 one-hot label columns. With
    dataset.standardize the training fold's nodes have mean 0 and std 1 in every continuous
    column, the one-hot columns are untouched, and the test graphs take the training statistics
    (not their own)."""
    from gaflax.tasks import standardized

    ds = load("ENZYMES", SHARED_DATA)
    train, _, test = ds.folds(seed=0)[0]
    out = standardized(ds, train)
    x_train = np.concatenate([out.graphs[i].nodes for i in train])
    raw_train = np.concatenate([ds.graphs[i].nodes for i in train])
    np.testing.assert_allclose(x_train[:, :18].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x_train[:, :18].std(0), 1, atol=1e-4)
    np.testing.assert_array_equal(x_train[:, 18:], raw_train[:, 18:])
    raw_test = np.concatenate([ds.graphs[i].nodes for i in test])
    x_test = np.concatenate([out.graphs[i].nodes for i in test])
    expected = (raw_test[:, :18] - raw_train[:, :18].mean(0)) / raw_train[:, :18].std(0)
    np.testing.assert_allclose(x_test[:, :18], expected, rtol=1e-4, atol=1e-4)
    assert ds.graphs[0].nodes.max() > 100  # the original is left as it was


def test_standardize_is_refused_outside_graph_datasets():
    from gaflax.tasks import check_fits, load_dataset

    config = Config.from_dict({"dataset": {"name": "synthetic", "standardize": True}, "trainer": {"progress": False}})
    with pytest.raises(ValueError, match="dataset.standardize=true is for graph datasets"):
        check_fits(config, load_dataset(config))


@pytest.mark.parametrize("num_graphs, shards", [(5, 3), (2, 4)])
def test_pad_shards_splits_a_batch_into_equal_shaped_groups(num_graphs, shards):
    """Data parallelism: a batch split into one padded group per device, consecutive graphs,
    group sizes differing by at most one (a group may be empty: then all padding), every group of
    one shape, and the real graphs' nodes, edges and labels those of the unsplit batch, in order."""
    from gaflax.data.batching import pad_shards

    ds = load("synthetic", level="graph", num_graphs=10, task="classification", num_classes=3)
    graphs, labels = [ds[i] for i in range(num_graphs)], ds.labels[:num_graphs]
    budgets = data.budgets_for(ds, -(-num_graphs // shards))
    batch = pad_shards(graphs, labels, budgets, shards)
    sizes = [len(g) for g in np.array_split(np.arange(num_graphs), shards)]
    assert batch.graph_mask.shape[0] == shards and batch.graph_mask.sum(1).tolist() == sizes
    assert batch.graph.nodes.shape[:2] == batch.node_mask.shape and batch.graph.senders.shape[0] == shards
    whole = data.pad_batch(graphs, labels, data.budgets_for(ds, num_graphs))
    np.testing.assert_array_equal(np.concatenate([n[m] for n, m in zip(batch.graph.nodes, batch.node_mask)]),
                                  whole.graph.nodes[whole.node_mask])
    np.testing.assert_array_equal(batch.labels[batch.graph_mask], labels)
    for group in range(shards):  # each group's edges stay inside its own real nodes
        g, m = jax.tree.map(lambda a: a[group], batch.graph), batch.node_mask[group]
        real_edges = int(g.n_edge[: sizes[group]].sum())
        assert real_edges == sum(int(graphs[i].n_edge[0]) for i in range(sum(sizes[:group]), sum(sizes[: group + 1])))
        assert m[g.senders[:real_edges]].all() and m[g.receivers[:real_edges]].all()
        assert int(m.sum()) == int(g.n_node[: sizes[group]].sum())
        np.testing.assert_array_equal(m, jraph.get_node_padding_mask(g))  # an empty group too


def test_sbm_is_a_homophilous_block_model():
    """dataset=sbm: equal blocks as classes, symmetric edges without self-loops, the share of
    same-class edges h + (1 - h) / k, features whose class means differ, a stratified 10/10/80
    split; reproducible from its seed; bad options name their key."""
    ds = load("sbm", num_nodes=3000, num_classes=3, avg_degree=10, homophily=0.6, num_features=4, signal=1.0)
    g = ds.graph
    assert ds.kind == "node" and ds.num_classes == 3 and np.bincount(ds.labels).tolist() == [1000] * 3
    assert g.senders.shape[0] % 2 == 0 and not np.any(g.senders == g.receivers)
    forward = set(zip(g.senders.tolist(), g.receivers.tolist()))
    assert all((r, s) in forward for s, r in list(forward)[:2000])
    assert abs(g.senders.shape[0] / 3000 - 10) < 0.2  # mean in-degree ~ avg_degree
    same = np.mean(ds.labels[g.senders] == ds.labels[g.receivers])
    assert abs(same - (0.6 + 0.4 / 3)) < 0.02
    means = np.stack([g.nodes[ds.labels == c].mean(0) for c in range(3)])
    assert np.ptp(means, axis=0).max() > 0.5  # signal 1.0: some class means are over half a std apart
    train, val, test = ds.split(0)
    assert train.sum() == 300 and val.sum() == 300 and test.sum() == 2400
    np.testing.assert_array_equal(load("sbm", num_nodes=3000, num_classes=3, avg_degree=10, homophily=0.6,
                                       num_features=4, signal=1.0).graph.senders, g.senders)
    with pytest.raises(ValueError, match=r"sbm: dataset.options.homophily=1.5 must be a number in \[0, 1\]"):
        load("sbm", num_nodes=100, homophily=1.5)
    with pytest.raises(ValueError, match="sbm: dataset.options.num_nodes=1 must be an int >= 2"):
        load("sbm", num_nodes=1)
