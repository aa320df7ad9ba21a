"""Shared entry-point behaviour: user errors become one line on stderr and exit status 2."""

from __future__ import annotations

import logging as py_logging
import sys
from collections.abc import Callable

from absl import app, logging

from pgm_jax.checkpoint import CheckpointError
from pgm_jax.config import ConfigError
from pgm_jax.data import DataError
from pgm_jax.interop import CheckpointFormatError
from pgm_jax.sharding import MeshError

USER_ERRORS = (ConfigError, DataError, MeshError, CheckpointError, CheckpointFormatError)


class UsageError(ValueError):
    """A wrong command-line argument."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


class _QuietLibraries(py_logging.Filter):
    """Drops INFO chatter of orbax / grain / jax internals; warnings and errors pass."""

    NOISY = ("/orbax/", "/grain/", "/jax/", "/jaxlib/", "/tensorstore/")

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or not any(
            p in record.pathname for p in self.NOISY
        )


def setup_logging() -> None:
    """INFO logging for pgm_jax, WARNING and above for the libraries it uses."""
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())


def run(main: Callable[[list[str]], None]) -> None:
    """absl.app.run with user errors reported as `error: ...` (exit 2), no traceback."""

    def wrapped(argv: list[str]) -> None:
        setup_logging()
        try:
            main(argv)
        except (UsageError, *USER_ERRORS) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)
