"""Connections to PostgreSQL: one pool per host of a multi-host URL, the database created when missing, and which
errors mean "PostgreSQL is not there right now"."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

import aiopg
import psycopg2
import psycopg2.errors

from hypercheckout.checkout.errors import CheckoutError, statement_cancelled, unavailable
from hypercheckout.store import aiopg_fix

aiopg_fix.apply()  # before any connection exists: see the module

log = logging.getLogger(__name__)

# Errors that mean "the database is not there right now", as opposed to a bug in a statement.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)


def split_hosts(url: str) -> list[str]:
    """``postgresql://u:p@h1:1,h2:2/db?q`` → one URL per host, same credentials, database and options."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [urlunsplit(parts._replace(netloc=f"{credentials}{at}{host}")) for host in hosts.split(",")]


def server_address(url: str) -> str:
    """``postgresql://u:p@h1:1,h2:2/db?q`` → ``h1:1,h2:2/db``: where, without the credentials."""
    parts = urlsplit(url)
    return f"{parts.netloc.rpartition('@')[2]}{parts.path}"


async def _create_pool(url: str, size: int, timeout: float) -> aiopg.Pool:
    """A pool with its ``size`` connections already open: a replica's first burst must not wait for PostgreSQL to
    start a backend per connection (one fork each, milliseconds apiece on a busy machine), so every connection is
    opened now, before the replica reports ready. One that fails to open is left to be opened when needed."""
    pool = await aiopg.create_pool(url, minsize=1, maxsize=size, timeout=timeout, connect_timeout=max(1, int(timeout)))
    opened = await asyncio.gather(*(pool.acquire() for _ in range(size)), return_exceptions=True)
    for conn in opened:
        if not isinstance(conn, BaseException):
            await pool.release(conn)
    return pool


def _raise_if_cancelled_by_server(exc: asyncio.CancelledError) -> None:
    """aiopg reports a statement that PostgreSQL cancelled (statement_timeout, pg_cancel_backend) as
    ``CancelledError``, although nobody cancelled this task. Left alone it would pass every ``except Exception``
    and end a batch's task with its waiters unanswered. The cancelled statement failed, so its transaction did not
    commit (PostgreSQL does not act on a cancel while it commits): nothing was sold. A real cancellation of the
    task (``cancelling()`` > 0) goes on as it is."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 0:
        raise statement_cancelled() from exc


def _answer_for(exc: BaseException) -> CheckoutError:
    """The answer for a connection error. One raised while an answer was already on its way out (closing the cursor
    of a connection that broke during COMMIT) must not replace that answer: "outcome unknown" must not become
    "nothing was sold"."""
    earlier = exc.__context__
    while earlier is not None:
        if isinstance(earlier, CheckoutError):
            return earlier
        earlier = earlier.__context__
    return unavailable()


async def ensure_database(url: str, *, timeout: float = 5.0) -> bool:
    """Create the database named in ``url`` when the server says it does not exist. True if it was created.

    A fresh local PostgreSQL has only ``postgres``; creating ours on first start keeps `serve` zero-configuration.
    With several hosts, each is asked in turn (see ``Store``: aiopg cannot move past a host that is down).
    """
    missing = None
    failure: BaseException | None = None
    for candidate in split_hosts(url):
        try:
            conn = await aiopg.connect(candidate, timeout=timeout)
        except psycopg2.OperationalError as exc:
            if "does not exist" in str(exc):
                missing = candidate
                break
            failure = exc  # down, or a standby refused by target_session_attrs
            continue
        except CONNECTION_ERRORS as exc:
            failure = exc
            continue
        await conn.close()
        return False
    if missing is None:
        raise unavailable(address=server_address(url)) from failure
    parts = urlsplit(missing)
    name = parts.path.lstrip("/")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise CheckoutError(400, "invalid_request", f"refusing to create a database named {name!r}")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        async with aiopg.connect(admin_url, timeout=timeout) as admin, admin.cursor() as cur:
            # Identifiers cannot be parameters; the name was checked to be alphanumeric above.
            await cur.execute(f'CREATE DATABASE "{name}"')
    except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
        # Another replica won the race: told so by name when its database was committed before our check, and as a
        # duplicate row of pg_database's name index when both checks passed at once.
        return False
    except CONNECTION_ERRORS as exc:
        raise unavailable(address=server_address(admin_url)) from exc
    log.info("created database %s", name)
    return True
