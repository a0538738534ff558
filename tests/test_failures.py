"""The CLI's errors name their real cause: one line per class of failure, and no OSError taken for Redis's."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import psycopg2
import pytest
import redis.exceptions

from hypercheckout.checkout.errors import out_of_stock, unavailable
from hypercheckout.failures import PortInUse, explain
from hypercheckout.migrations.runner import MigrationError
from hypercheckout.processes import free_port
from hypercheckout.resources import resource_dir, resource_file
from hypercheckout.settings import Settings, SettingsError
from tests.helpers import run_cli, settings_env


def raised_from(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause  # as `raise error from cause` leaves it
    return error


@pytest.mark.parametrize(("error", "message", "exit_code"), [
    (SettingsError("HC_PORT='x': not a number"), "configuration error: HC_PORT='x': not a number", 2),
    (PortInUse("127.0.0.1", 8080), "port in use: 127.0.0.1:8080 is in use by another process; choose another "
                                   "port (--port or HC_PORT)", 1),
    (raised_from(unavailable(address="db.internal:5432/shop"), ConnectionRefusedError(111, "Connection refused")),
     "PostgreSQL unreachable at db.internal:5432/shop: [Errno 111] Connection refused", 1),
    (psycopg2.OperationalError("connection to server at \"h\", port 1 failed: timeout expired\nmore"),
     'PostgreSQL unreachable: connection to server at "h", port 1 failed: timeout expired', 1),
    (raised_from(unavailable("the issuer's keys", dependency="the issuer's keys"), TimeoutError()),
     "the issuer's keys unreachable: TimeoutError", 1),
    (out_of_stock(1, 0, 2), "out_of_stock: product 1 has 0 left, 2 requested", 1),
    (redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1."),
     "Redis unreachable: Error 111 connecting to 127.0.0.1:1.", 1),
    (redis.exceptions.ResponseError("NOSCRIPT"), "Redis refused a command: NOSCRIPT", 1),
    (MigrationError("0014 failed: boom\ndetail"), "0014 failed: boom", 1),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/nginx.conf.template"),
     "missing file: /x/nginx.conf.template (No such file or directory)", 1),
    (PermissionError(errno.EACCES, "Permission denied", "/x/cluster.env"),
     "file not readable or writable: /x/cluster.env (Permission denied)", 1),
    (OSError(errno.EADDRINUSE, "Address already in use"), "port in use: Address already in use", 1),
    (OSError(errno.ENOSPC, "No space left on device", "/x/log"), "system error: /x/log: No space left on device", 1),
])
def test_each_class_of_failure_has_its_own_line(error: BaseException, message: str, exit_code: int) -> None:
    failure = explain(error)
    assert failure is not None and (failure.message, failure.exit_code) == (message, exit_code)
    assert "Redis" not in message or isinstance(error, redis.exceptions.RedisError)


def test_a_bug_is_not_explained_away() -> None:
    assert explain(KeyError("products")) is None
    assert explain(AssertionError()) is None


def test_a_missing_package_folder_or_file_is_a_missing_file_naming_its_path() -> None:
    assert (resource_dir("templates") / "shop.html").is_file()
    with pytest.raises(FileNotFoundError) as folder:
        resource_dir("no-such-folder")
    with pytest.raises(FileNotFoundError) as file:
        resource_file("nginx", "no-such.template")
    for raised, name in ((folder, "no-such-folder"), (file, "no-such.template")):
        line = explain(raised.value).message
        assert line.startswith("missing file: ") and Path(line.split()[2]).name == name


def test_postgresql_down_is_named_with_its_address_and_never_its_password(settings: Settings) -> None:
    port = free_port()
    env = {**settings_env(settings), "HC_DATABASE_URL": f"postgresql://shop:s3cret@127.0.0.1:{port}/shop",
           "HC_DB_TIMEOUT": "2"}
    done = run_cli("status", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith(f"hypercheckout: PostgreSQL unreachable at 127.0.0.1:{port}/shop: ")
    assert "s3cret" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_redis_down_is_named_as_redis(settings: Settings) -> None:
    env = {**settings_env(settings), "HC_REDIS_URL": f"redis://127.0.0.1:{free_port()}"}
    done = run_cli("unban", "--user", "1", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("hypercheckout: Redis unreachable: ") and "Traceback" not in done.stderr


def test_a_replica_on_a_port_in_use_says_so_and_names_the_port(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--port", str(port), "--host", "127.0.0.1", env=settings_env(settings))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"hypercheckout: port in use: 127.0.0.1:{port} is in use by another process; choose another port (--port "
        "or HC_PORT)")
    assert "Redis" not in done.stderr and "Unclosed" not in done.stderr


def test_a_bad_setting_is_a_configuration_error() -> None:
    done = run_cli("status", env={"HC_RATE_LIMIT": "abc"})
    assert done.returncode == 2
    assert done.stderr.startswith("hypercheckout: configuration error: HC_RATE_LIMIT='abc'")
