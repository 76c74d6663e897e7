"""Process-wide settings of the entry points (the library sets none of them itself)."""

from __future__ import annotations

import os
import pathlib

import jax

from gaflax import programs

#: Programs that compile faster than this are not written to the cache.
CACHE_MIN_COMPILE_SECONDS = 0.2


def compilation_cache_dir() -> pathlib.Path | None:
    """``$GAFLAX_COMPILATION_CACHE`` (``0`` or empty: no cache), else
    ``$XDG_CACHE_HOME/gaflax/jax`` (``~/.cache/gaflax/jax``)."""
    setting = os.environ.get("GAFLAX_COMPILATION_CACHE")
    if setting is not None:
        return None if setting in ("", "0") else pathlib.Path(setting).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "gaflax" / "jax"


def enable_compilation_cache() -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache, so that a repeated run or each job of a
    multirun loads its compiled steps instead of compiling them again, and gaflax's cache of
    traced programs (``gaflax.programs``, in its ``programs/`` folder), so that a run whose
    programs were traced before skips the tracing too. A directory set already
    (``jax_compilation_cache_dir``, ``JAX_COMPILATION_CACHE_DIR``, the tests') is used as it is.
    Returns the directory in use, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        directory = pathlib.Path(current)
    else:
        directory = compilation_cache_dir()
        if directory is None:
            programs.use_program_cache(None)
            return None
        directory.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    programs.use_program_cache(directory / "programs")
    return directory
