"""Compiling the training steps, with an optional on-disk cache of their traced programs.

``compile_step(fn, args, key)`` is ``jax.jit(fn).lower(*args).compile()``. JAX's persistent
compilation cache (which the entry points turn on) then skips XLA's compile on a repeated run,
but not the tracing and lowering, which take most of a second or more for a GA model. With
``use_program_cache(directory)``, ``compile_step`` also stores the lowered program (``jax.export``:
StableHLO and the argument structure, no Python objects) under a digest of ``key``, the argument
shapes and structure, gaflax's source code and the installed versions. A later call with the
same digest loads that program instead of tracing ``fn``, and JAX's cache supplies the compiled
code.

The caller's ``key`` must name everything ``fn`` closes over that is not in this digest: the run's
configuration without its seed, the data's fingerprint, and constants computed from the data
(``gaflax.tasks`` passes these). A stored program is checked against the sha256 of its bytes
before it is read; one that fails (a truncated or edited file) is traced again with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import tempfile
import warnings

import jax

__all__ = ["compile_step", "use_program_cache"]

_DIRECTORY: pathlib.Path | None = None
_REGISTERED: set[type] = set()
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "jraph", "numpy")


def use_program_cache(directory) -> None:
    """Store and load traced programs in ``directory`` (None: do not)."""
    global _DIRECTORY
    _DIRECTORY = None if directory is None else pathlib.Path(directory)


@functools.lru_cache(maxsize=1)
def _environment() -> dict:
    """What a traced program depends on besides its key and arguments: gaflax's code, the
    installed packages and the platform."""
    source = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        source.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"gaflax_source": source.hexdigest(), "versions": versions}


def _digest(key: dict, leaves, treedef) -> str:
    material = {
        "key": key,
        "arguments": [str(treedef), [(tuple(x.shape), str(x.dtype)) for x in leaves]],
        "platform": [jax.default_backend(), jax.devices()[0].device_kind, bool(jax.config.jax_enable_x64)],
        **_environment(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _register_named_tuples(treedef) -> None:
    """``jax.export`` serialises dicts, lists and tuples; NamedTuple nodes (optax's states,
    jraph's GraphsTuple) need a name, which their module and class name give."""

    def walk(treedef):
        node = treedef.node_data()
        if node is not None:
            cls = node[0]
            if cls not in _REGISTERED and issubclass(cls, tuple) and hasattr(cls, "_fields"):
                try:
                    jax.export.register_namedtuple_serialization(cls, serialized_name=f"{cls.__module__}.{cls.__qualname__}")
                except ValueError:  # registered elsewhere already
                    pass
                _REGISTERED.add(cls)
        for child in treedef.children():
            walk(child)

    walk(treedef)


def _load(path: pathlib.Path):
    """The stored program at ``path``, or None (absent, or failing its checksum: warned)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    checksum, payload = blob[:64], blob[64:]
    if checksum != hashlib.sha256(payload).hexdigest().encode():
        warnings.warn(f"program cache: {path} fails its checksum (truncated or edited); tracing again", stacklevel=3)
        return None
    return jax.export.deserialize(bytearray(payload))


def _store(path: pathlib.Path, exported) -> None:
    payload = bytes(exported.serialize())
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(hashlib.sha256(payload).hexdigest().encode() + payload)
    os.replace(f.name, path)  # atomic: a concurrent reader sees the old file or the whole new one


def _named(fn, wrapper):
    """``wrapper`` under ``fn``'s name, which names the programs (``jit_train_step``) in JAX's
    cache and in profiles."""
    wrapper.__name__ = wrapper.__qualname__ = getattr(fn, "__name__", "step")
    return wrapper


def compile_step(fn, args: tuple, key: dict, cache: bool = True):
    """``fn`` compiled for ``args`` (a tuple of pytrees of arrays); see the module docstring for
    ``key`` and the cache (``cache=False``: not used, as for arguments sharded over several
    devices). The result is called with arguments of the same shapes and structure."""
    if _DIRECTORY is None or not cache:
        return jax.jit(fn).lower(*args).compile()
    # The stored program takes the arguments' leaves, so that their structure (any pytree node)
    # need not be serialised; its outputs are dicts, tuples and the arguments' NamedTuples.
    leaves, treedef = jax.tree.flatten(args)
    path = _DIRECTORY / f"{_digest(key, leaves, treedef)}.exported"
    _register_named_tuples(treedef)
    exported = None
    try:
        exported = _load(path)
    except Exception as error:  # noqa: BLE001  (an unreadable program is traced again, never used)
        warnings.warn(f"program cache: cannot read {path} ({error}); tracing again", stacklevel=2)
    if exported is None:
        exported = jax.export.export(jax.jit(_named(fn, lambda *xs: fn(*jax.tree.unflatten(treedef, xs)))))(*leaves)
        try:
            _store(path, exported)
        except Exception as error:  # noqa: BLE001  (e.g. an output type export cannot name)
            warnings.warn(f"program cache: cannot store {path} ({error}); the run goes on without it", stacklevel=2)
    compiled = jax.jit(_named(fn, lambda *xs: exported.call(*xs))).lower(*leaves).compile()
    return lambda *call_args: compiled(*jax.tree.leaves(call_args))
