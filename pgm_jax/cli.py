"""Shared entry-point behaviour: a user error is one line on stderr and exit status 2.

User errors are bad flags (unknown flags or config keys, values of the wrong type, a config
file that does not load), caught while absl parses them, and the error types the commands
raise (`user_errors()`). A training run stopped by a NaN / Inf exits with status 1. This
module imports no JAX, so flag errors are reported at once.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags, logging

USAGE_EXIT, STOPPED_EXIT = 2, 1


class UsageError(ValueError):
    """A wrong command-line argument."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def user_errors() -> tuple[type[Exception], ...]:
    """The exception types that mean bad input (imported here, once a command has failed)."""
    from pgm_jax.checkpoint import CheckpointError
    from pgm_jax.config import ConfigError
    from pgm_jax.data import DataError
    from pgm_jax.interop import CheckpointFormatError
    from pgm_jax.sharding import MeshError

    return (UsageError, ConfigError, DataError, MeshError, CheckpointError, CheckpointFormatError)


def no_positional_args(argv: list[str]) -> None:
    """Commands take flags only; a stray word is usually a flag missing its `--`."""
    if len(argv) > 1:
        raise UsageError(f"unexpected argument {argv[1]!r}: every argument is a --flag")


def loaded_config(flag: flags.FlagHolder):
    """The ConfigDict of a `config_flags.DEFINE_config_file` flag (None if not given).

    A config file that could not be loaded raises UsageError naming it.
    """
    value = flag.value
    if value is None:
        return None
    try:
        value.keys()  # ml_collections defers a load failure to the first attribute access
    except OSError as e:
        cause = str(e.__cause__ or e).strip().splitlines()[-1].strip()
        path = flags.FLAGS[flag.name].config_filename
        raise UsageError(f"--{flag.name}={path}: cannot load it ({cause})") from None
    return value


def writable_dir(name: str, path: str) -> None:
    """`--name=path` must be a directory, or creatable: its nearest existing parent writable."""
    require(bool(path), f"--{name} is required")
    require(not os.path.exists(path) or os.path.isdir(path),
            f"--{name}={path}: exists and is not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    require(os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK),
            f"--{name}={path}: {parent} is not a writable directory")


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


def _exit(message: str, status: int = USAGE_EXIT) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _one_line(text: str) -> str:
    """The first line, plus the last of several (a wrapped exception's own message)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def _unknown_key(argv: list[str], e: Exception) -> str:
    """ml_collections' KeyError / AttributeError for `--config.a.b=` naming a missing key."""
    msg = e
    while isinstance(msg, BaseException) and msg.args:
        msg = msg.args[0]
    lines = str(msg).strip().splitlines()
    name = lines[0].strip("'\" ") if lines else "?"
    hint = f" ({lines[-1].strip()})" if len(lines) > 1 else ""
    for arg in argv[1:]:
        flag = arg.lstrip("-").split("=", 1)[0]
        if "." in flag and name in flag.split(".")[1:]:
            return (f"--{flag}: {name!r} is not a config key{hint}; pgm_jax/schema.py "
                    "documents every key")
    return f"unknown config key {name!r}{hint}; pgm_jax/schema.py documents every key"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with every failure as a one-line usage error (absl exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _exit(f"{_one_line(str(e))} (--helpfull lists the flags)")
    except (AttributeError, KeyError) as e:
        _exit(_unknown_key(argv, e))
    except Exception as e:  # a config file that raises while loading (SyntaxError, ...)
        config = next((a for a in argv[1:] if a.split("=", 1)[0].lstrip("-") == "config"),
                      "the config file")
        _exit(f"{config}: cannot load it ({type(e).__name__}: {_one_line(str(e))})")


def run(main: Callable[[list[str]], None]) -> None:
    """absl.app.run with user errors reported as `error: ...` (exit 2) and a run stopped by a
    non-finite loss as `error: ...` (exit 1), without traceback."""

    def wrapped(argv: list[str]) -> None:
        setup_logging()
        try:
            main(argv)
        except Exception as e:
            from pgm_jax.metrics import NonFiniteError

            if isinstance(e, NonFiniteError):
                _exit(str(e), STOPPED_EXIT)
            if isinstance(e, user_errors()):
                _exit(str(e))
            raise

    app.run(wrapped, flags_parser=_parse_flags)
