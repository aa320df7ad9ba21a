"""Test set-up: 8 fake CPU devices, configured before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Persistent compilation cache: the same tiny programs are compiled by many tests and by the
# subprocess tests' entry points; caching them keeps `make test` short.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/pgm_jax_test_jax_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path

import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()  # grain workers read absl flags


def shared_dir() -> Path:
    """The project's shared material (`../shared` beside the checkout; PGM_SHARED_DIR wins)."""
    env = os.environ.get("PGM_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def require_fixtures() -> Path:
    """The reference fixtures directory; fails the test (never skips it) when it is missing,
    so that parity cannot pass unnoticed on a checkout without `../shared`."""
    d = shared_dir() / "fixtures"
    if not d.is_dir():
        pytest.fail(f"reference fixtures not found at {d}: put the project's shared/ beside "
                    "the checkout or set PGM_SHARED_DIR", pytrace=False)
    return d


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_fixtures()
