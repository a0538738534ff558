"""What the CLI says when a command fails for a reason outside the code: one line that names the real cause.

Each class of failure has its own message: a bad setting, PostgreSQL or Redis unreachable, a missing or unreadable
file, a port in use. Anything else is a bug and keeps its traceback. Twice an error was named after the wrong cause
(a PostgreSQL timeout, then a missing package file, reported as Redis), because one broad ``except`` took every
``OSError`` for Redis's; here the narrow classes are tried first and no broad one names a service.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import psycopg2
import redis.exceptions

from hypercheckout.checkout.errors import CheckoutError, Unreachable
from hypercheckout.migrations.runner import MigrationError
from hypercheckout.settings import SettingsError

USAGE = 2  # as argparse: the command line or the environment was wrong
FAILED = 1


class PortInUse(Exception):
    """A server could not bind its address: another process holds it."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host or '*'}:{port} is in use by another process; choose another port (--port or HC_PORT)")
        self.host = host
        self.port = port


@dataclass(frozen=True)
class Failure:
    message: str
    exit_code: int = FAILED


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__ if exc is not None else "no answer"


def explain(exc: BaseException) -> Failure | None:
    """The one-line message and exit code for ``exc``; None for a failure that is not a known class (a bug)."""
    if isinstance(exc, SettingsError):
        return Failure(f"configuration error: {exc}", USAGE)
    if isinstance(exc, PortInUse):
        return Failure(f"port in use: {exc}")
    if isinstance(exc, Unreachable):
        at = f" at {exc.address}" if exc.address else ""
        return Failure(f"{exc.dependency} unreachable{at}: {_first_line(exc.__cause__)}")
    if isinstance(exc, CheckoutError):
        return Failure(f"{exc.code}: {exc.message}")
    if isinstance(exc, psycopg2.OperationalError):
        return Failure(f"PostgreSQL unreachable: {_first_line(exc)}")
    if isinstance(exc, MigrationError):
        return Failure(_first_line(exc))
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return Failure(f"Redis unreachable: {_first_line(exc)}")
    if isinstance(exc, redis.exceptions.RedisError):
        return Failure(f"Redis refused a command: {_first_line(exc)}")
    if isinstance(exc, OSError):
        return _os_failure(exc)
    return None


def _os_failure(exc: OSError) -> Failure:
    where = f": {exc.filename}" if exc.filename else ""
    reason = exc.strerror or _first_line(exc)
    if exc.errno == errno.EADDRINUSE:
        return Failure(f"port in use: {reason}")
    if isinstance(exc, FileNotFoundError):
        return Failure(f"missing file{where} ({reason})")
    if isinstance(exc, PermissionError):
        return Failure(f"file not readable or writable{where} ({reason})")
    if isinstance(exc, TimeoutError):
        return Failure(f"timed out{where}: {reason}")
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return Failure(f"not the file or folder expected{where} ({reason})")
    return Failure(f"system error{where}: {reason}")
