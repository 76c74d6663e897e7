"""Test configuration: CPU only, strict rank promotion, explicit PRNG keys, opt-in float64."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Catches [G] vs [G, 1] broadcasting bugs; library code must broadcast explicitly.
jax.config.update("jax_numpy_rank_promotion", "raise")

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
