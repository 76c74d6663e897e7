"""Test configuration: CPU only, strict rank promotion, explicit PRNG keys, opt-in float64, and one
compilation cache per test session."""

import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Catches [G] vs [G, 1] broadcasting bugs; library code must broadcast explicitly.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Many tests build the same program (the same model on the same toy data) through fresh jitted
# functions, which jit's in-memory cache cannot share. JAX's persistent cache is keyed by the
# program itself, so each distinct program compiles once per session. The directory is new for
# every session and removed at its end, so a session never reuses a compilation from another
# checkout; pytest-xdist's workers inherit it from the controller's environment.
# GAFLAX_TEST_COMPILATION_CACHE=0 turns it off.
_OWN_CACHE = None
if os.environ.get("GAFLAX_TEST_COMPILATION_CACHE", "1") != "0":
    if "GAFLAX_TEST_CACHE_DIR" not in os.environ:
        _OWN_CACHE = os.environ["GAFLAX_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="gaflax-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", os.environ["GAFLAX_TEST_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_program_cache_after_the_test():
    """An entry point called in-process (experiments.train.main, the imbalance study) turns on
    gaflax's cache of traced programs for the whole process; each test starts without it, as the
    library does, unless it turns it on itself."""
    from gaflax import programs

    programs.use_program_cache(None)
    yield
    programs.use_program_cache(None)


#: ../shared/data beside the project root (present in CI); tests that need it skip without it.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run one test with float64 enabled (the default stays float32)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True)
def _private_journal(tmp_path, monkeypatch):
    """Every test gets its own lab journal, so runs never skip because an earlier test did them."""
    monkeypatch.setenv("GAFLAX_JOURNAL", str(tmp_path / "journal.sqlite"))
