"""Where dataset files live, and how they get there: default root, download with sha256, errors."""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import urllib.error
import urllib.request
import warnings

from tqdm.auto import tqdm

#: sha256 of the canonical files (the same bytes as in ../shared/data/SHA256SUMS).
KNOWN_SHA256 = {
    "anomaly/reddit.npz": "26feb257d3184e45aff1394bc4760e57c75b9d96062c60ef40b82460ffd1aa9d",
    "npz/amazon_photo.npz": "bdb98b54cd3125bfa69b23ba0aae84fabcb770c6727175b8f6eb1d64f3be4b2b",
    "npz/coauthor_cs.npz": "7b7b51bf270d341f1c4231834c58a526bb04db003fd76a6d2f51ad7d252005ed",
    "planetoid/citeseer/ind.citeseer.allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    "planetoid/citeseer/ind.citeseer.ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    "planetoid/citeseer/ind.citeseer.graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    "planetoid/citeseer/ind.citeseer.test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    "planetoid/citeseer/ind.citeseer.tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    "planetoid/citeseer/ind.citeseer.ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    "planetoid/citeseer/ind.citeseer.x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    "planetoid/citeseer/ind.citeseer.y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    "planetoid/cora/ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "planetoid/cora/ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "planetoid/cora/ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "planetoid/cora/ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "planetoid/cora/ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "planetoid/cora/ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "planetoid/cora/ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "planetoid/cora/ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "planetoid/pubmed/ind.pubmed.allx": "508e538e2abdccdd54c4d3e9f49d638b4af7107d85845f66ddea5a5152658b7e",
    "tu/ENZYMES.zip": "0ca7125d7978788346fc6ba5c3cc643b6122153b304220c2230bcb09f99f8ffb",
    "tu/IMDB-BINARY.zip": "2a4abb6431ec1ab025a6fbcd3b546607191f79a1e0aef0f42cd8bd4ec1546116",
    "tu/MUTAG.zip": "20f52db82d6d85d5f67d2fa42c3fb705d05934be44329314ab17b05d0c012f7e",
    "tu/NCI1.zip": "eae6b0c076d59e667c67de0039cfc3214eefb91a8dddc2fa3099126da02d4376",
    "tu/PROTEINS.zip": "fe9d19741637486ea1fd285bf669fce0b117e10b03cdd379f6a5e6197fc830ae",
}


class DatasetError(ValueError):
    """A dataset is unknown, missing or malformed; the message names the name, file and line."""


def default_root() -> pathlib.Path:
    """``$GAFLAX_DATA`` when set, else ``$XDG_CACHE_HOME/gaflax`` (``~/.cache/gaflax``)."""
    if os.environ.get("GAFLAX_DATA"):
        return pathlib.Path(os.environ["GAFLAX_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "gaflax"


def sha256(path: pathlib.Path) -> str:
    """The file's sha256, computed once per (path, size, modification time)."""
    stat = os.stat(path)
    return _sha256(str(pathlib.Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(paths: dict[str, pathlib.Path], dataset: str, verify: bool = True) -> None:
    """Check every file of ``paths`` (relative path -> path) that has a known sha256.

    A mismatch is a DatasetError that names the file; with ``verify=False`` (``dataset.verify=false``)
    it is a warning instead, for loading modified files on purpose.
    """
    for rel, path in sorted(paths.items()):
        expected = KNOWN_SHA256.get(str(rel))
        if expected is None:
            continue
        actual = sha256(path)
        if actual == expected:
            continue
        if verify:
            raise DatasetError(
                f"dataset {dataset!r}: {path} is not the published file (sha256 {actual[:16]}..., expected "
                f"{expected[:16]}...): it may be truncated, corrupt or modified. Replace it with the original "
                "(delete it to download it again), or set dataset.verify=false (verify=False in "
                "gaflax.data.load) to load a modified file on purpose."
            )
        warnings.warn(
            f"dataset {dataset!r}: {path} differs from the published file (sha256 {actual[:16]}...); "
            "loading it because dataset.verify=false. Results are not comparable with the benchmark's.",
            stacklevel=2,
        )


def ensure_files(root: pathlib.Path, files: dict[str, str], dataset: str, verify: bool = True) -> dict[str, pathlib.Path]:
    """Make sure every ``relative path -> url`` in ``files`` exists under ``root``.

    Missing files are downloaded (with a progress bar). Every file with a known sha256 is checked
    (``verify_files``). With no network and no files, raises a DatasetError that names every
    expected file and its source.
    """
    root = pathlib.Path(root)
    paths = {rel: root / rel for rel in files}
    missing = [rel for rel, path in paths.items() if not path.exists()]
    failures = []
    for rel in missing:
        try:
            download(files[rel], paths[rel], KNOWN_SHA256.get(rel))
        except (urllib.error.URLError, OSError) as err:
            failures.append(f"  {paths[rel]}  <-  {files[rel]}  ({err})")
    if failures:
        raise DatasetError(
            f"dataset {dataset!r}: files are missing under {root} and could not be downloaded:\n"
            + "\n".join(failures)
            + "\nDownload them by hand to those paths, or pass the directory that holds them as `root` "
            "(or set $GAFLAX_DATA)."
        )
    verify_files(paths, dataset, verify)
    return paths


def download(url: str, path: pathlib.Path, expected_sha256: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"download {path.name}") as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                bar.update(len(block))
    if expected_sha256 is not None and sha256(tmp) != expected_sha256:
        tmp.unlink()
        raise OSError(f"sha256 mismatch for {url}: the download is not the expected file")
    tmp.replace(path)
