"""Dataset containers and the loaders for the real benchmark files.

Node-level datasets hold one graph as a ``jraph.GraphsTuple`` of numpy arrays (``nodes`` =
features ``[N, F]``, ``senders`` / ``receivers`` ``[E]``, no self-loops: adding them is a model
option) plus labels and split masks. Graph-level datasets hold a list of graphs; ``ds[i]`` is a
one-graph ``GraphsTuple``.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import pickle
import warnings
import zipfile
import zlib

import numpy as np

from gaflax.compat import jraph
from gaflax.data._files import DatasetError, ensure_files, sha256, verify_files


# ----------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class NodeDataset:
    """One graph, node labels, and train / val / test masks.

    ``split(seed)`` returns the masks for one seed: fixed (``split_is_fixed``, e.g. the public
    Planetoid split) or drawn per seed (Shchur et al., the anomaly graph).
    """

    name: str
    graph: jraph.GraphsTuple
    labels: np.ndarray  # [N] int
    num_classes: int
    fingerprint: dict
    split_fn: callable = dataclasses.field(repr=False)
    split_is_fixed: bool = False
    task: str = "classification"
    kind = "node"

    @property
    def num_features(self) -> int:
        return int(self.graph.nodes.shape[1])

    @property
    def num_nodes(self) -> int:
        return int(self.graph.nodes.shape[0])

    def split(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks (train, val, test), each of shape [N]; an empty one is a DatasetError."""
        masks = self.split_fn(seed)
        _check_splits(self.name, seed, [np.flatnonzero(m) for m in masks])
        return masks

    @property
    def train_mask(self):
        return self.split(0)[0]

    @property
    def val_mask(self):
        return self.split(0)[1]

    @property
    def test_mask(self):
        return self.split(0)[2]

    @property
    def class_ratio(self) -> np.ndarray:
        """Fraction of nodes in each class."""
        return np.bincount(self.labels, minlength=self.num_classes) / len(self.labels)


@dataclasses.dataclass
class GraphDataset:
    """Many small graphs with one label each; ``ds[i]`` is a one-graph ``GraphsTuple``."""

    name: str
    graphs: list  # of jraph.GraphsTuple, each holding one graph
    labels: np.ndarray  # [G] int (or float for regression)
    num_classes: int
    fingerprint: dict
    task: str = "classification"
    kind = "graph"

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> jraph.GraphsTuple:
        return self.graphs[i]

    @property
    def num_features(self) -> int:
        return int(self.graphs[0].nodes.shape[1])

    @property
    def num_edge_features(self) -> int:
        edges = self.graphs[0].edges
        return 0 if edges is None else int(edges.shape[1])

    def folds(self, seed: int = 0, n_folds: int = 10, holdout: float = 0.1):
        """Stratified k-fold splits with an inner holdout, as in Errica et al. (2020).

        Returns a list of ``n_folds`` tuples ``(train, val, test)`` of index arrays: each fold's
        test part is one of k stratified folds; ``val`` is a stratified ``holdout`` fraction of the
        rest, for model selection. Deterministic given ``seed``.
        """
        rng = np.random.default_rng(seed)
        fold_of = np.empty(len(self), np.int64)
        for c in np.unique(self.labels):
            members = rng.permutation(np.flatnonzero(self.labels == c))
            fold_of[members] = np.arange(len(members)) % n_folds
        out = []
        for k in range(n_folds):
            test = np.flatnonzero(fold_of == k)
            rest = np.flatnonzero(fold_of != k)
            val_mask = np.zeros(len(rest), bool)
            for c in np.unique(self.labels[rest]):
                members = rng.permutation(np.flatnonzero(self.labels[rest] == c))
                val_mask[members[: int(round(holdout * len(members)))]] = True
            out.append((rest[~val_mask], rest[val_mask], test))
            _check_splits(self.name, seed, out[-1], f"fold {k} of {n_folds} (holdout {holdout})")
        return out


def _check_splits(name, seed, parts, what="split"):
    """An empty train, validation or test part would report 0.0 (or nothing) as a result."""
    for part, members in zip(("train", "validation", "test"), parts):
        if len(members) == 0:
            raise DatasetError(f"dataset {name!r}: the {part} part of {what} (seed {seed}) is empty; "
                               "check the split options (dataset.options.fractions, trainer.fold, the class counts)")


def one_graph(nodes, senders, receivers, edges=None) -> jraph.GraphsTuple:
    return jraph.GraphsTuple(
        nodes=np.asarray(nodes, np.float32),
        edges=None if edges is None else np.asarray(edges, np.float32),
        senders=np.asarray(senders, np.int32),
        receivers=np.asarray(receivers, np.int32),
        n_node=np.array([len(nodes)], np.int32),
        n_edge=np.array([len(senders)], np.int32),
        globals=None,
    )


def symmetric_edges(senders, receivers, num_nodes):
    """Both directions of every edge, without duplicates or self-loops, sorted by receiver."""
    s = np.concatenate([senders, receivers]).astype(np.int64)
    r = np.concatenate([receivers, senders]).astype(np.int64)
    keep = s != r
    key = np.unique(r[keep] * num_nodes + s[keep])
    return (key % num_nodes).astype(np.int32), (key // num_nodes).astype(np.int32)


def per_class_split(labels, num_classes, train_per_class, val_per_class, seed):
    """Shchur et al. (2018): per class, ``train_per_class`` train and ``val_per_class`` val nodes."""
    rng = np.random.default_rng(seed)
    train = np.zeros(len(labels), bool)
    val = np.zeros(len(labels), bool)
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        train[members[:train_per_class]] = True
        val[members[train_per_class : train_per_class + val_per_class]] = True
    return train, val, ~(train | val)


def stratified_split(labels, fractions, seed):
    """Random stratified (train, val, test) masks with the given fractions of each class."""
    rng = np.random.default_rng(seed)
    masks = [np.zeros(len(labels), bool) for _ in range(3)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        masks[0][members[:n_train]] = True
        masks[1][members[n_train : n_train + n_val]] = True
        masks[2][members[n_train + n_val :]] = True
    return tuple(masks)


def _fingerprint(paths) -> dict:
    return {"files": {str(rel): sha256(path) for rel, path in sorted(paths.items())}}


#: dataset.nonfinite_features: what to do with NaN or infinite feature values.
NONFINITE_FEATURES = ("error", "zero")


def _finite_features(features, source, nonfinite_features="error"):
    """Refuse NaN / infinite features (naming ``source`` and the count), or with
    ``nonfinite_features="zero"`` replace them by 0 with a warning."""
    if nonfinite_features not in NONFINITE_FEATURES:
        raise DatasetError(f"dataset.nonfinite_features={nonfinite_features!r} must be one of {NONFINITE_FEATURES}")
    bad = ~np.isfinite(features)
    if not bad.any():
        return features
    rows = np.flatnonzero(bad.any(axis=1))
    what = f"{source}: {int(bad.sum())} feature values in {len(rows)} rows are NaN or infinite (first row {rows[0]})"
    if nonfinite_features == "error":
        raise DatasetError(f"{what}. Fix the file, or set dataset.nonfinite_features=zero to replace them with 0.")
    warnings.warn(f"{what}; replaced with 0 (dataset.nonfinite_features=zero)", stacklevel=3)
    return np.where(bad, 0, features).astype(features.dtype)


def _nonfinite_fingerprint(nonfinite_features):
    """Recorded only when it can change the data (older fingerprints stay valid)."""
    return {} if nonfinite_features == "error" else {"nonfinite_features": nonfinite_features}


def _check_labels(labels, num_classes, source):
    """Every label in 0..num_classes-1: a label out of range would add a class or index out of bounds."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{source}: label {labels[first]} at row {first} is outside 0..{num_classes - 1} "
                           f"({int(bad.sum())} such rows); the dataset has {num_classes} classes")


def _expect(ok, source, message, verify):
    """A published count that does not hold: an error, or a warning with dataset.verify=false."""
    if ok:
        return
    if verify:
        raise DatasetError(f"{source}: {message}. The file is not the published one; replace it, or set "
                           "dataset.verify=false to load modified files on purpose.")
    warnings.warn(f"{source}: {message} (loading anyway: dataset.verify=false)", stacklevel=3)


def _row_normalize(x):
    rowsum = x.sum(1, keepdims=True)
    return np.where(rowsum > 0, x / np.where(rowsum > 0, rowsum, 1), 0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Planetoid: Cora, CiteSeer, PubMed (Yang et al. 2016), raw files, public split.
# ----------------------------------------------------------------------------------------------
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data/ind.{name}.{part}"
PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
#: Published sizes: nodes, features, classes, train nodes, test nodes (Yang et al. 2016).
PLANETOID_COUNTS = {"cora": (2708, 1433, 7, 140, 1000), "citeseer": (3327, 3703, 6, 120, 1000),
                    "pubmed": (19717, 500, 3, 60, 1000)}


def load_planetoid(name: str, root: pathlib.Path, normalize_features: bool = False, verify: bool = True,
                   nonfinite_features: str = "error") -> NodeDataset:
    files = {f"planetoid/{name}/ind.{name}.{part}": PLANETOID_URL.format(name=name, part=part) for part in PLANETOID_PARTS}
    paths = ensure_files(root, files, name, verify)
    path_of = {part: paths[f"planetoid/{name}/ind.{name}.{part}"] for part in PLANETOID_PARTS}
    parts = {}
    for part in PLANETOID_PARTS:
        path = path_of[part]
        if part == "test.index":
            parts[part] = _read_int_lines(path)
            continue
        try:
            with open(path, "rb") as f:
                parts[part] = _Py2Unpickler(f, path, encoding="latin1").load()
        except DatasetError:
            raise
        except Exception as err:  # noqa: BLE001  (any unpickling failure means a bad file)
            raise DatasetError(f"{name}: cannot read {path}: {err}") from err

    test_index = parts["test.index"]
    x, tx, allx = (_dense(parts[k]) for k in ("x", "tx", "allx"))
    y, ty, ally = (np.asarray(parts[k]) for k in ("y", "ty", "ally"))
    # Structure: the parts must fit together, whatever their source.
    for rows, labels, what in ((x, y, "x / y"), (allx, ally, "allx / ally"), (tx, ty, "tx / ty")):
        _check(rows.ndim == 2 and labels.ndim == 2 and len(rows) == len(labels), path_of["y"].parent, what,
               f"must be matrices with one row per node, got shapes {rows.shape} and {labels.shape}")
    _check(len(test_index) == len(tx), path_of["test.index"], "test.index",
           f"has {len(test_index)} ids but tx has {len(tx)} rows (one id per test node)")
    _check(len(np.unique(test_index)) == len(test_index), path_of["test.index"], "test.index", "repeats an id")
    _check(x.shape[1] == allx.shape[1] == tx.shape[1] and y.shape[1] == ally.shape[1] == ty.shape[1],
           path_of["x"].parent, "x / allx / tx, y / ally / ty", "feature or label widths differ")
    _check(len(test_index) == 0 or test_index.min() >= len(allx), path_of["test.index"], "test.index",
           f"test ids must follow the {len(allx)} rows of allx")

    test_range = np.sort(test_index)
    if name == "citeseer":
        # Some test ids are isolated nodes with no features in tx: pad tx / ty to the full range
        # (Kipf & Welling's fix), so that those nodes get zero features and no label.
        full = np.arange(test_range.min(), test_range.max() + 1)
        tx_full = np.zeros((len(full), tx.shape[1]), tx.dtype)
        ty_full = np.zeros((len(full), ty.shape[1]), ty.dtype)
        tx_full[test_range - test_range.min()] = tx
        ty_full[test_range - test_range.min()] = ty
        tx, ty = tx_full, ty_full
    _check(len(allx) + len(tx) > test_range.max(), path_of["test.index"], "test.index",
           f"ids run to {test_range.max()}, beyond the {len(allx) + len(tx)} nodes of allx and tx")
    features = np.concatenate([allx, tx]).astype(np.float32)
    features = _finite_features(features, f"{path_of['allx'].parent} (allx, tx)", nonfinite_features)
    onehot = np.concatenate([ally, ty])
    features[test_index] = features[test_range]
    onehot[test_index] = onehot[test_range]
    labels = onehot.argmax(1).astype(np.int32)
    if normalize_features:
        features = _row_normalize(features)

    graph_dict = parts["graph"]
    _check(isinstance(graph_dict, dict), path_of["graph"], "graph", "must be a dict of node -> neighbours")
    senders = np.array([i for i, nbrs in graph_dict.items() for _ in nbrs], np.int64)
    receivers = np.array([j for nbrs in graph_dict.values() for j in nbrs], np.int64)
    _check(len(senders) == 0 or (min(senders.min(), receivers.min()) >= 0
                                 and max(senders.max(), receivers.max()) < len(features)),
           path_of["graph"], "graph", f"node ids must lie in 0..{len(features) - 1}")
    senders, receivers = symmetric_edges(senders, receivers, len(features))

    n_train = len(y)
    if name in PLANETOID_COUNTS:
        counts = (len(features), features.shape[1], onehot.shape[1], n_train, len(test_index))
        _expect(counts == PLANETOID_COUNTS[name], path_of["x"].parent,
                f"{name} has (nodes, features, classes, train, test) = {PLANETOID_COUNTS[name]}, these files give {counts}",
                verify)
    masks = [np.zeros(len(features), bool) for _ in range(3)]
    masks[0][:n_train] = True
    masks[1][n_train : n_train + 500] = True
    masks[2][test_range] = True
    fixed = tuple(masks)
    return NodeDataset(
        name=name,
        graph=one_graph(features, senders, receivers),
        labels=labels,
        num_classes=onehot.shape[1],
        fingerprint=_fingerprint({k: v for k, v in paths.items()}) | {"normalize_features": normalize_features}
        | _nonfinite_fingerprint(nonfinite_features),
        split_fn=lambda seed: fixed,
        split_is_fixed=True,
    )


# What the Planetoid pickles and the object arrays of the Shchur .npz files may name: numpy
# arrays, scipy sparse matrices and plain containers. A pickle can name any callable, and loading
# calls it, so anything else is refused before it is imported (data files are untrusted input).
_PICKLE_ALLOWED = {
    "builtins": {"list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bool"},
    "collections": {"defaultdict", "OrderedDict"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "scipy.sparse": {"csr_matrix", "csc_matrix", "coo_matrix", "csr_array", "csc_array", "coo_array"},
    "_codecs": {"encode"},  # how protocol-2 pickles written by Python 3 store bytes (numpy buffers)
}


class _Py2Unpickler(pickle.Unpickler):
    """Reads the Python-2 pickles, mapping old scipy module paths (scipy.sparse.csr, ...) to
    ``scipy.sparse``, where the classes live now, and refusing every class outside
    ``_PICKLE_ALLOWED`` with a :class:`DatasetError` that names the file and the class."""

    def __init__(self, file, source, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module, name):
        if module.startswith("scipy.sparse."):
            module = "scipy.sparse"
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if name not in _PICKLE_ALLOWED.get(module, ()):
            raise DatasetError(
                f"{self.source}: refused to load: the file names {module}.{name}, which a dataset "
                "file has no reason to contain (only numpy arrays, scipy sparse matrices and plain "
                "containers are allowed). The file may be tampered with; replace it with the original."
            )
        return super().find_class(module, name)


#: Errors of a damaged archive (zip structure, deflate stream, truncation).
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError)


def _corrupt_archive(path, err):
    return DatasetError(f"{path} is not a readable archive ({type(err).__name__}: {err}): it is truncated or "
                        "corrupt. Delete it and download it again (or copy the original there).")


def _read_npz(path) -> dict:
    """np.load for .npz files whose object arrays hold pickled scipy matrices (old module paths)."""
    try:
        return _read_npz_members(path)
    except _ARCHIVE_ERRORS as err:
        raise _corrupt_archive(path, err) from err


def _read_npz_members(path) -> dict:
    out = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                if dtype.hasobject:
                    out[member.removesuffix(".npy")] = _Py2Unpickler(f, f"{path}:{member}", encoding="latin1").load()
                else:
                    array = np.frombuffer(f.read(), dtype).reshape(shape, order="F" if fortran else "C")
                    out[member.removesuffix(".npy")] = array
    return out


def _dense(matrix):
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


def _read_int_lines(path) -> np.ndarray:
    values = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    values.append(int(line))
                except ValueError:
                    raise DatasetError(f"{path}, line {lineno}: expected an integer, got {line.strip()!r}") from None
    return np.array(values, np.int64)


# ----------------------------------------------------------------------------------------------
# Shchur et al. (2018) .npz: Amazon Photo / Computers, Coauthor CS / Physics.
# ----------------------------------------------------------------------------------------------
SHCHUR_URL = "https://github.com/EdisonLeeeee/GraphData/raw/master/datasets/npz/{name}.npz"


#: Published class counts (Shchur et al. 2018).
SHCHUR_CLASSES = {"amazon_photo": 8, "amazon_computers": 10, "coauthor_cs": 15, "coauthor_physics": 5}


def load_shchur(name: str, root: pathlib.Path, normalize_features: bool = False, verify: bool = True,
                nonfinite_features: str = "error") -> NodeDataset:
    rel = f"npz/{name}.npz"
    path = ensure_files(root, {rel: SHCHUR_URL.format(name=name)}, name, verify)[rel]
    try:
        data = _read_npz(path)
        adj = data["adj_matrix"].item().tocoo()
        features = _dense(data["node_attr"].item()).astype(np.float32)
        labels = np.asarray(data["node_label"])
    except (KeyError, ValueError, OSError, AttributeError, pickle.UnpicklingError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{name}: {path} is not a Shchur et al. .npz (adj_matrix, node_attr, node_label): {err}") from err
    _check(labels.ndim == 1 and len(labels) == len(features) and adj.shape == (len(features),) * 2, path, "node_label",
           f"expected one label per node and an N x N adjacency: {len(labels)} labels, {len(features)} rows of "
           f"node_attr, adjacency {adj.shape}")
    _check(np.issubdtype(labels.dtype, np.integer), path, "node_label", f"labels must be integers, got {labels.dtype}")
    num_classes = SHCHUR_CLASSES.get(name, int(labels.max()) + 1 if len(labels) else 0)
    _check_labels(labels, num_classes, f"{path}: node_label")
    labels = labels.astype(np.int32)
    features = _finite_features(features, f"{path}: node_attr", nonfinite_features)
    if normalize_features:
        features = _row_normalize(features)
    senders, receivers = symmetric_edges(adj.row, adj.col, len(features))
    return NodeDataset(
        name=name,
        graph=one_graph(features, senders, receivers),
        labels=labels,
        num_classes=num_classes,
        fingerprint=_fingerprint({rel: path}) | _nonfinite_fingerprint(nonfinite_features),
        split_fn=lambda seed: per_class_split(labels, num_classes, 20, 30, seed),
    )


# ----------------------------------------------------------------------------------------------
# Reddit anomaly graph (Kumar et al. 2019, as packaged by PyGOD).
# ----------------------------------------------------------------------------------------------
def load_reddit_anomaly(root: pathlib.Path, fractions=(0.6, 0.2, 0.2), verify: bool = True,
                        nonfinite_features: str = "error") -> NodeDataset:
    rel = "anomaly/reddit.npz"
    # PyGOD publishes a torch file (reddit.pt.zip); the .npz is that file converted without
    # changing values, so there is no URL to fetch it from automatically.
    path = pathlib.Path(root) / rel
    if not path.exists():
        raise DatasetError(
            f"dataset 'reddit_anomaly': {path} is missing. Convert PyGOD's reddit.pt.zip "
            "(github.com/pygod-team/data) to an .npz with x float32 [N, 64], edge_index int64 [2, E] "
            "and y int64 [N], and put it there."
        )
    verify_files({rel: path}, "reddit_anomaly", verify)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            try:
                x, edge_index, y = data["x"], data["edge_index"], data["y"]
            except KeyError as err:
                raise DatasetError(f"reddit_anomaly: {path} lacks the array {err}; expected x, edge_index, y") from None
    except _ARCHIVE_ERRORS as err:
        raise _corrupt_archive(path, err) from err
    except ValueError as err:  # object arrays (pickles) are refused, as is anything not an .npz
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"reddit_anomaly: {path} is not a plain-array .npz (x, edge_index, y): {err}") from err
    if edge_index.ndim != 2 or edge_index.shape[0] != 2 or x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise DatasetError(f"reddit_anomaly: {path}: edge_index must be [2, E] and x, y must have the same N")
    _check(edge_index.size == 0 or (edge_index.min() >= 0 and edge_index.max() < len(x)), path, "edge_index",
           f"node ids must lie in 0..{len(x) - 1}")
    _check_labels(y, 2, f"{path}: y")
    x = _finite_features(x.astype(np.float32), f"{path}: x", nonfinite_features)
    key = np.unique(edge_index[1].astype(np.int64) * len(x) + edge_index[0])
    senders, receivers = (key % len(x)).astype(np.int32), (key // len(x)).astype(np.int32)
    labels = y.astype(np.int32)
    return NodeDataset(
        name="reddit_anomaly",
        graph=one_graph(x, senders, receivers),
        labels=labels,
        num_classes=2,
        fingerprint=_fingerprint({rel: path}) | {"fractions": list(fractions)} | _nonfinite_fingerprint(nonfinite_features),
        split_fn=lambda seed: stratified_split(labels, fractions, seed),
    )


# ----------------------------------------------------------------------------------------------
# TU Dortmund graph collection (Morris et al. 2020), original text format.
# ----------------------------------------------------------------------------------------------
TU_URL = "https://www.chrsmrrs.com/graphkerneldatasets/{name}.zip"


def load_tu(name: str, root: pathlib.Path, verify: bool = True, nonfinite_features: str = "error") -> GraphDataset:
    root = pathlib.Path(root)
    folder = root / "tu" / name
    if folder.is_dir():
        reader, source = _folder_reader(folder, name), folder
        fingerprint = _fingerprint({p.relative_to(root): p for p in sorted(folder.glob(f"{name}_*.txt"))})
    else:
        rel = f"tu/{name}.zip"
        zip_path = ensure_files(root, {rel: TU_URL.format(name=name)}, name, verify)[rel]
        reader, source = _zip_reader(zip_path, name), zip_path
        fingerprint = _fingerprint({rel: zip_path})
    fingerprint |= _nonfinite_fingerprint(nonfinite_features)

    A = reader("A", int, required=True)
    graph_of = reader("graph_indicator", int, required=True)[:, 0] - 1
    graph_labels = reader("graph_labels", int, required=True)[:, 0]
    node_labels = reader("node_labels", int)
    node_attr = reader("node_attributes", float)
    edge_labels = reader("edge_labels", int)
    n_nodes, n_graphs = len(graph_of), len(graph_labels)
    _check(A.shape[1] == 2, source, "A", "each line must be 'i, j'")
    _check(graph_of.min() >= 0 and graph_of.max() + 1 == n_graphs, source, "graph_indicator",
           f"names graphs 1..{graph_of.max() + 1}, but graph_labels has {n_graphs} lines")
    _check(np.all(np.diff(graph_of) >= 0), source, "graph_indicator", "nodes must be grouped by graph")
    _check(A.min() >= 1 and A.max() <= n_nodes, source, "A", f"node ids must lie in 1..{n_nodes} (graph_indicator lines)")
    for part, arr in (("node_labels", node_labels), ("node_attributes", node_attr)):
        _check(arr is None or len(arr) == n_nodes, source, part, f"has {0 if arr is None else len(arr)} lines, expected {n_nodes} (one per node)")
    _check(edge_labels is None or len(edge_labels) == len(A), source, "edge_labels", f"expected {len(A)} lines (one per line of A)")

    # Node features: attributes, then one-hot node labels; node degree (one-hot) when neither.
    senders_all, receivers_all = A[:, 0] - 1, A[:, 1] - 1
    features = []
    if node_attr is not None:
        features.append(_finite_features(node_attr.astype(np.float32), f"{source}: node_attributes", nonfinite_features))
    if node_labels is not None:
        features.append(_one_hot(node_labels[:, 0]))
    # Duplicate edges (IMDB lists each edge twice) are removed; both directions stay.
    key, first = np.unique(receivers_all.astype(np.int64) * n_nodes + senders_all, return_index=True)
    senders_all, receivers_all = (key % n_nodes), (key // n_nodes)
    edge_feat = _one_hot(edge_labels[first, 0]) if edge_labels is not None else None
    if not features:
        degree = np.bincount(receivers_all, minlength=n_nodes)
        features.append(_one_hot(degree, num_values=int(degree.max()) + 1))
    x = np.concatenate(features, axis=1)

    node_start = np.searchsorted(graph_of, np.arange(n_graphs))
    node_end = np.searchsorted(graph_of, np.arange(n_graphs), side="right")
    edge_graph = graph_of[receivers_all]
    order = np.argsort(edge_graph, kind="stable")
    senders_all, receivers_all, edge_graph = senders_all[order], receivers_all[order], edge_graph[order]
    edge_feat = None if edge_feat is None else edge_feat[order]
    edge_start = np.searchsorted(edge_graph, np.arange(n_graphs))
    edge_end = np.searchsorted(edge_graph, np.arange(n_graphs), side="right")
    graphs = []
    for g in range(n_graphs):
        lo, hi, elo, ehi = node_start[g], node_end[g], edge_start[g], edge_end[g]
        graphs.append(one_graph(x[lo:hi], senders_all[elo:ehi] - lo, receivers_all[elo:ehi] - lo,
                                None if edge_feat is None else edge_feat[elo:ehi]))
    classes, labels = np.unique(graph_labels, return_inverse=True)  # -1/1 or 1..C -> 0..C-1
    return GraphDataset(name=name, graphs=graphs, labels=labels.astype(np.int32), num_classes=len(classes),
                        fingerprint=fingerprint)


def _one_hot(values, num_values=None):
    values = np.asarray(values)
    values = values - values.min() if num_values is None else values
    num_values = int(values.max()) + 1 if num_values is None else num_values
    out = np.zeros((len(values), num_values), np.float32)
    out[np.arange(len(values)), values] = 1
    return out


def _check(ok, source, part, message):
    if not ok:
        raise DatasetError(f"{source}: {part}: {message}")


def _parse(lines, dtype, where):
    rows = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append([dtype(v) for v in line.replace(",", " ").split()])
        except ValueError:
            raise DatasetError(f"{where}, line {lineno}: cannot parse {line!r} as {dtype.__name__}s") from None
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise DatasetError(f"{where}: lines have different numbers of values ({sorted(widths)})")
    return np.array(rows, np.int64 if dtype is int else np.float64)


def _zip_reader(zip_path, name):
    try:
        archive = zipfile.ZipFile(zip_path)
    except _ARCHIVE_ERRORS as err:
        raise _corrupt_archive(zip_path, err) from err
    members = {pathlib.PurePosixPath(m).name: m for m in archive.namelist()}

    def read(part, dtype, required=False):
        member = members.get(f"{name}_{part}.txt")
        if member is None:
            if required:
                raise DatasetError(f"{zip_path}: {name}_{part}.txt is missing from the archive")
            return None
        try:
            text = io.TextIOWrapper(archive.open(member), encoding="utf-8")
            return _parse(text, dtype, f"{zip_path}:{member}")
        except (*_ARCHIVE_ERRORS, UnicodeDecodeError) as err:
            raise _corrupt_archive(f"{zip_path}:{member}", err) from err

    return read


def _folder_reader(folder, name):
    def read(part, dtype, required=False):
        path = folder / f"{name}_{part}.txt"
        if not path.exists():
            if required:
                raise DatasetError(f"{path} is missing")
            return None
        with open(path, encoding="utf-8") as f:
            return _parse(f, dtype, str(path))

    return read
