"""`hypercheckout up`: the whole topology on one machine — PostgreSQL, Redis, N replicas, nginx — in one data dir.

Processes are supervised with mirakuru: each executor starts its process in a session of its own (so a Ctrl-C
reaches only `up`, which then stops everything in order), waits until it answers (TCP or HTTP), and stops it with
SIGTERM, escalating to SIGKILL. PostgreSQL is driven by its own pg_ctl, whose ``-w`` is the readiness wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mirakuru import HTTPExecutor, TCPExecutor
from mirakuru.exceptions import ExecutorError

from hypercheckout.localservices import PrivatePostgres, PrivateRedis, PrivateRedisCluster, write_private
from hypercheckout.operations import reset_product
from hypercheckout.processes import PortPicker, ServiceError, free_port, port_open, tail
from hypercheckout.resources import resource_file
from hypercheckout.settings import Settings
from hypercheckout.store import Store, ensure_database

log = logging.getLogger(__name__)

CLUSTER_ENV = "cluster.env"
# Which of the two PostgreSQL data dirs is the primary (`failover` swaps them): {"primary": …, "standby": …}.
POSTGRES_ROLES = "postgres-roles.json"
DEFAULT_ROLES = {"primary": "postgres", "standby": "postgres-standby"}
NGINX_HINT = "Debian/Ubuntu: sudo apt-get install nginx; macOS: brew install nginx"


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path
    # Tell browsers to use https only for a year. Right for a real certificate; wrong for a self-signed one on
    # localhost, where it would outlive the cluster in every browser that saw it.
    strict_transport_security: bool = False


# Open files nginx's workers want: one per client connection and per connection to a replica (those are bounded by
# the front door's limit and the keepalive pool), plus its own files; a herd of 10,000 may land on one worker.
WANTED_FILES = 65536
HERD_CONNECTIONS = 12_000  # 10,000 clients, the connections to the replicas, and room to spare
FILES_KEPT_BACK = 1024  # log files, the listening sockets


def worker_connections_for(files: int) -> int:
    """Connections per nginx worker that ``files`` open files allow."""
    return max(1024, files - FILES_KEPT_BACK)


def raise_file_limit(wanted: int = WANTED_FILES) -> int:
    """Raise this process's open-file limit (inherited by everything `up` starts) toward ``wanted``; return what
    it got. Root may raise the hard limit too; anyone else gets at most the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def render_nginx_config(*, listen: str, upstreams: list[str], runtime_dir: str, log_dir: str,
                        purchase_concurrency: int, join_concurrency: int, overload_answers: int,
                        user: str | None = None,
                        tls: TlsFiles | None = None, files: int = WANTED_FILES,
                        template: Path | None = None) -> str:
    """The nginx.conf for these replicas, from the one template that docker-compose uses too.

    ``user`` is the account nginx's workers run as when it is started by root (None: nginx's default); ``tls``
    makes the listener https only, with that certificate; ``files`` is the open-file limit its workers may take;
    ``purchase_concurrency``, ``join_concurrency`` and ``overload_answers`` are the front door's limits (from
    Settings: the per-replica HC_FRONT_DOOR_IN_FLIGHT and HC_MAX_JOINS_IN_FLIGHT times the replicas, and
    HC_OVERLOAD_ANSWERS).
    """
    servers = "\n".join(f"        server {u} max_fails=3 fail_timeout=2s;" for u in upstreams)
    tls_directives = ""
    if tls is not None:
        listen = f"{listen} ssl"
        tls_directives = "\n".join(f"        {line}" for line in (
            f"ssl_certificate {tls.certificate};", f"ssl_certificate_key {tls.key};",
            "ssl_protocols TLSv1.2 TLSv1.3;", "ssl_session_cache shared:hc_tls:10m;",
            *(['add_header Strict-Transport-Security "max-age=31536000" always;']
              if tls.strict_transport_security else [])))
    values = {"LISTEN": listen, "UPSTREAM_SERVERS": servers, "RUNTIME_DIR": runtime_dir, "LOG_DIR": log_dir,
              "USER_DIRECTIVE": f"user {user};" if user else "", "TLS_DIRECTIVES": tls_directives,
              "WORKER_RLIMIT_NOFILE": str(files), "WORKER_CONNECTIONS": str(worker_connections_for(files)),
              "PURCHASE_CONCURRENCY": str(purchase_concurrency), "JOIN_CONCURRENCY": str(join_concurrency),
              "OVERLOAD_ANSWERS": str(overload_answers)}
    template = template or resource_file("nginx", "nginx.conf.template")
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    if "{{" in text:
        raise ServiceError(f"unfilled placeholder in {template}: {text[text.index('{{'):][:40]}")
    return text


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            parts = shlex.split(value)
            values[key.strip()] = parts[0] if parts else ""
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    lines = ["# Written by `hypercheckout up`; `hypercheckout <command> --data-dir DIR` reads it."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    write_private(path, "\n".join(lines) + "\n")


def self_signed_certificate(directory: Path) -> TlsFiles:
    """A certificate for localhost and 127.0.0.1, made with openssl on first use and kept (so a browser's
    exception for it lasts across restarts)."""
    files = TlsFiles(certificate=directory / "cert.pem", key=directory / "key.pem")
    if files.certificate.is_file() and files.key.is_file():
        return files
    program = shutil.which("openssl")
    if program is None:
        raise ClusterError("openssl not found, needed for --tls (Debian/Ubuntu: sudo apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    done = subprocess.run(
        [program, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(files.key),
         "-out", str(files.certificate)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"openssl could not make a certificate: {done.stderr.strip()}")
    os.chmod(files.key, 0o600)
    return files


def postgres_roles(data_dir: Path) -> dict[str, str]:
    path = data_dir / POSTGRES_ROLES
    if not path.is_file():
        return dict(DEFAULT_ROLES)
    roles = json.loads(path.read_text())
    if set(roles) != set(DEFAULT_ROLES) or set(roles.values()) != set(DEFAULT_ROLES.values()):
        raise ClusterError(f"{path} must name the two data dirs, {sorted(DEFAULT_ROLES.values())}")
    return roles


def write_postgres_roles(data_dir: Path, roles: Mapping[str, str]) -> None:
    (data_dir / POSTGRES_ROLES).write_text(json.dumps(dict(roles)) + "\n")


def fail_over(data_dir: Path, out: IO[str]) -> float:
    """Lose the primary (SIGKILL, every process of it) and promote the standby with PostgreSQL's own
    `pg_ctl promote`; returns the seconds the promotion took. Nothing is decided here beyond that: production
    leaves it to Patroni or CloudNativePG (docs/scaling.md)."""
    data_dir = data_dir.absolute()
    roles = postgres_roles(data_dir)
    primary = PrivatePostgres(data_dir / roles["primary"])
    standby = PrivatePostgres(data_dir / roles["standby"])
    if not standby.is_standby or not standby.running():
        raise ClusterError(f"no running standby in {standby.data_dir}: start the cluster with `up --pg-standby`")
    if not primary.running():
        raise ClusterError(f"the primary in {primary.data_dir} is not running")
    pid = primary.crash()
    print(f"primary {primary.data_dir.name} (pid {pid}) killed with SIGKILL", file=out, flush=True)
    started = time.monotonic()
    standby.promote()
    took = time.monotonic() - started
    write_postgres_roles(data_dir, {"primary": roles["standby"], "standby": roles["primary"]})
    print(f"standby {standby.data_dir.name} promoted in {took:.2f} s; it is the primary now. The next "
          f"`up --pg-standby` makes {primary.data_dir.name} a fresh standby of it.", file=out, flush=True)
    return took


class ClusterError(RuntimeError):
    """A piece of the cluster failed to start; the message carries the end of its log."""


@dataclass
class Cluster:
    data_dir: Path
    port: int = 8080
    replicas: int = 3
    stock: int | None = None
    tls: bool = False
    pg_standby: bool = False  # a second PostgreSQL as a synchronous streaming-replication standby
    redis_cluster: bool = False  # a Redis Cluster (three masters, three replicas) instead of one Redis server
    buyer_auth: str = "none"  # jwt: buyers sign in with tokens of a local issuer (DATA/issuer)
    payments: str = "simulator"  # off, or the payment simulator (priced products are paid through it)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    draw_port: Callable[[], int] = free_port  # where the servers' ports come from (a test scripts collisions)

    postgres: PrivatePostgres | None = field(default=None, init=False)
    standby: PrivatePostgres | None = field(default=None, init=False)
    redis: TCPExecutor | None = field(default=None, init=False)
    redis_nodes: PrivateRedisCluster | None = field(default=None, init=False)
    apps: list[HTTPExecutor] = field(default_factory=list, init=False)
    nginx: HTTPExecutor | TCPExecutor | None = field(default=None, init=False)
    simulator: HTTPExecutor | None = field(default=None, init=False)
    env: dict[str, str] = field(default_factory=dict, init=False)
    files: int = field(default=WANTED_FILES, init=False)  # the open-file limit `up` got for itself and nginx
    _logs: list[IO[bytes]] = field(default_factory=list, init=False)
    _ports: PortPicker = field(init=False)

    def __post_init__(self) -> None:
        # nginx binds its port last: until then no other server of this cluster may be given it.
        self._ports = PortPicker(reserved={self.port}, draw=self.draw_port)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def public_urls(self) -> str:
        """The origins the dashboard is reached at (its WebSocket accepts only these; https makes cookies Secure)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port},{scheme}://localhost:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    # --- start -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every piece, waiting for each; on any failure stop what was started and raise ClusterError."""
        self.data_dir = self.data_dir.absolute()
        self.files = raise_file_limit()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if port_open(self.port):
            raise ClusterError(f"port {self.port} is already in use; choose another with --port")
        try:
            previous = read_env_file(self.data_dir / CLUSTER_ENV)
            database_url = self._start_postgres()
            redis_url = self._start_redis()
            self.env = {
                "HC_DATABASE_URL": database_url,
                "HC_REDIS_URL": redis_url,
                # Kept across restarts so sessions and tokens stay valid; every replica must share them.
                "HC_ADMIN_TOKEN": self.environ.get("HC_ADMIN_TOKEN") or previous.get("HC_ADMIN_TOKEN")
                or secrets.token_urlsafe(18),
                "HC_COOKIE_SECRET": self.environ.get("HC_COOKIE_SECRET") or previous.get("HC_COOKIE_SECRET")
                or secrets.token_urlsafe(32),
                "HC_CLUSTER_URL": self.url,
                "HC_PUBLIC_URL": self.environ.get("HC_PUBLIC_URL") or self.public_urls,
            }
            if self.buyer_auth == "jwt":
                from hypercheckout.buyers.issuer import LocalIssuer

                issuer = LocalIssuer(self.data_dir / "issuer").ensure()
                self.env.update(issuer.settings_env(), HC_DEMO_SIGNIN=str(issuer.directory))
            if self.payments == "simulator" and not self.environ.get("HC_PAYMENTS"):
                self._start_simulator(previous)
            self._migrate()
            ports = [self._ports.pick() for _ in range(self.replicas)]
            self.env["HC_REPLICA_PORTS"] = ",".join(str(p) for p in ports)
            write_env_file(self.data_dir / CLUSTER_ENV, self.env)
            self._start_replicas(ports)
            self._start_nginx(ports)
            self._wait_for_every_replica_through_nginx()
        except BaseException:
            self.stop()
            raise

    def _log_file(self, name: str) -> IO[bytes]:
        handle = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(handle)
        return handle

    def _start_postgres(self) -> str:
        if self.environ.get("HC_DATABASE_URL"):
            return self.environ["HC_DATABASE_URL"]
        pool = int(self.environ.get("HC_DB_POOL_SIZE", "10"))
        roles = postgres_roles(self.data_dir)
        # With a standby, every commit waits until the standby has it on disk too: an acknowledged order survives
        # losing the primary. Given at start only, so the promoted standby does not wait for a standby of its own.
        sync = ["synchronous_standby_names='*'", "synchronous_commit=on"] if self.pg_standby else []
        self.postgres = PrivatePostgres(self.data_dir / roles["primary"], self._ports.pick(),
                                        max_connections=self.replicas * pool + 30,
                                        options=sync)
        if self.postgres.user:
            # As root, PostgreSQL runs as an unprivileged user who must be able to reach its directory.
            check = subprocess.run(["runuser", "-u", self.postgres.user, "--", "test", "-x", str(self.data_dir)])
            if check.returncode != 0:
                raise ClusterError(f"user {self.postgres.user!r} cannot enter {self.data_dir}; use a --data-dir "
                                   "outside private home directories")
        if self.postgres.is_standby:
            raise ClusterError(f"{self.postgres.data_dir} is a standby, not a primary; {POSTGRES_ROLES} is stale")
        try:
            url = self.postgres.start()
            if not self.pg_standby:
                return url.rsplit("/", 1)[0] + "/hypercheckout"
            self.standby = PrivatePostgres(self.data_dir / roles["standby"], self._ports.pick(),
                                           max_connections=self.replicas * pool + 30)
            if not self.standby.is_standby:
                # None yet, or the old primary of a failover: its data ends where the new primary took over (and
                # may hold commits no client was told of). A fresh copy of the primary replaces it.
                print(f"cloning {self.standby.data_dir.name} from the primary (pg_basebackup) …", file=self.out,
                      flush=True)
                self.standby.clone_from(self.postgres)
            self.standby.start()
            write_postgres_roles(self.data_dir, roles)
        except ServiceError as exc:
            raise ClusterError(str(exc)) from None
        # Both servers, in order; libpq connects to the first that accepts writes, so a replica whose connection
        # broke finds the promoted standby by itself.
        credentials = f"postgres:{self.postgres.password}@" if self.postgres.password else "postgres@"
        return (f"postgresql://{credentials}127.0.0.1:{self.postgres.port},127.0.0.1:{self.standby.port}"
                "/hypercheckout?target_session_attrs=read-write")

    def _start_redis(self) -> str:
        if self.environ.get("HC_REDIS_URL"):
            return self.environ["HC_REDIS_URL"]
        if self.redis_cluster:
            self.redis_nodes = PrivateRedisCluster(self.data_dir / "redis-cluster", ports=self._ports)
            try:
                return self.redis_nodes.start()
            except ServiceError as exc:
                raise ClusterError(str(exc)) from None
        server = PrivateRedis(self.data_dir / "redis", self._ports.pick())
        server.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = TCPExecutor(server.command(), host="127.0.0.1", port=server.port, timeout=30,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._start("redis", self.redis, server.log_path)
        return server.url

    def _migrate(self) -> None:
        settings = Settings.from_env({**self.environ, **self.env})

        async def run() -> None:
            await ensure_database(settings.database_url, timeout=settings.db_timeout)
            store = await Store.connect(settings.database_url, size=1, timeout=settings.db_timeout)
            try:
                await store.migrate()
                if self.stock is not None:
                    from hypercheckout.app import redis_client

                    client = redis_client(settings)
                    try:
                        await reset_product(store, client, settings.redis_prefix, 1, self.stock)
                    finally:
                        await client.aclose()
            finally:
                await store.close()

        asyncio.run(run())

    def _start_simulator(self, previous: Mapping[str, str]) -> None:
        """The payment simulator, delivering its webhooks through nginx as Stripe would to the shop's URL."""
        port = self._ports.pick()
        secret = previous.get("HC_STRIPE_WEBHOOK_SECRET") or "whsec_" + secrets.token_hex(16)
        key = previous.get("HC_STRIPE_API_KEY") or "sk_test_" + secrets.token_hex(16)
        self.simulator = HTTPExecutor(
            [sys.executable, "-m", "hypercheckout", "payments-simulator", "--port", str(port),
             "--api-key", key, "--webhook-secret", secret, "--webhook-url", f"{self.url}/webhooks/payments"],
            url=f"http://127.0.0.1:{port}/_simulator/faults", method="GET", timeout=30,
            stdout=self._log_file("payments-simulator"), stderr=subprocess.STDOUT)
        self._start("the payment simulator", self.simulator, self.log_dir / "payments-simulator.log")
        base = f"http://127.0.0.1:{port}"
        self.env.update(HC_PAYMENTS="simulator", HC_STRIPE_API_KEY=key, HC_STRIPE_WEBHOOK_SECRET=secret,
                        HC_STRIPE_API_BASE=base, HC_PAYMENT_PAGE_URL=base)

    def _start_replicas(self, ports: list[int]) -> None:
        """Every replica at once, each waited for in a thread of its own: a replica spends its start importing and
        connecting, and one after the other the cluster's start took as long as the replicas' starts added up."""
        named = [(f"app-{index}", port) for index, port in enumerate(ports, start=1)]
        self.apps = [self._replica(name, port) for name, port in named]
        with ThreadPoolExecutor(max_workers=len(named), thread_name_prefix="replica-start") as pool:
            started = [pool.submit(self._start, name, executor, self.log_dir / f"{name}.log")
                       for (name, _), executor in zip(named, self.apps, strict=True)]
        for future in started:
            future.result()  # the first replica that did not start, in order (the caller stops the others)

    def _replica(self, name: str, port: int) -> HTTPExecutor:
        env = {**self.environ, **self.env, "HC_PORT": str(port), "HC_REPLICA_ID": name, "HC_HOST": "127.0.0.1"}
        return HTTPExecutor(
            [sys.executable, "-m", "hypercheckout", "serve", "--data-dir", str(self.data_dir), "--port", str(port),
             "--replica-id", name],
            url=f"http://127.0.0.1:{port}/healthz", method="GET", timeout=30, envvars=env,
            stdout=self._log_file(name), stderr=subprocess.STDOUT, expected_returncode=0,
        )

    def _start_nginx(self, ports: list[int]) -> None:
        program = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
        if program is None:
            raise ClusterError(f"nginx not found. {NGINX_HINT}")
        runtime = self.data_dir / "nginx"
        runtime.mkdir(exist_ok=True)
        conf = self.data_dir / "nginx.conf"
        settings = Settings.from_env({**self.environ, **self.env})
        conf.write_text(render_nginx_config(
            listen=f"127.0.0.1:{self.port}", upstreams=[f"127.0.0.1:{p}" for p in ports],
            runtime_dir=str(runtime), log_dir=str(self.log_dir),
            # As root, nginx would drop its workers to `nobody`, who may not reach a data dir under /root: a local
            # cluster's workers stay the user who started it.
            user="root" if os.geteuid() == 0 else None,
            tls=self_signed_certificate(self.data_dir / "tls") if self.tls else None,
            files=self.files, purchase_concurrency=settings.front_door_in_flight * self.replicas,
            join_concurrency=settings.max_joins_in_flight * self.replicas, overload_answers=settings.overload_answers,
        ))
        command = [program, "-p", str(runtime), "-c", str(conf), "-e", str(self.log_dir / "nginx-error.log"),
                   "-g", "daemon off;"]
        # Readiness by TCP with https (mirakuru's HTTP check speaks plain http); every replica is then checked
        # through nginx itself.
        self.nginx = TCPExecutor(command, host="127.0.0.1", port=self.port, timeout=30,
                                 stdout=self._log_file("nginx"), stderr=subprocess.STDOUT) if self.tls else \
            HTTPExecutor(command, url=f"{self.url}/healthz", method="GET", timeout=30,
                         stdout=self._log_file("nginx"), stderr=subprocess.STDOUT)
        self._start("nginx", self.nginx, self.log_dir / "nginx-error.log")

    def _start(self, name: str, executor: TCPExecutor | HTTPExecutor, log_path: Path) -> None:
        try:
            executor.start()
        except (ExecutorError, OSError) as exc:
            raise ClusterError(f"{name} did not start ({exc.__class__.__name__}); last lines of {log_path}:\n"
                               f"{tail(log_path)}") from None

    def _wait_for_every_replica_through_nginx(self, timeout: float = 30) -> None:
        """Ready means: through nginx, every replica answers /readyz with 200 (PostgreSQL and Redis reachable)."""
        wanted = {f"app-{i}" for i in range(1, self.replicas + 1)}
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while seen != wanted:
            if time.monotonic() > deadline:
                raise ClusterError(f"replicas {sorted(wanted - seen)} not ready through nginx after {timeout:.0f} s")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2,
                                            context=self.tls_context()) as response:
                    seen.add(response.headers.get("X-Replica", ""))
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)

    def tls_context(self) -> ssl.SSLContext | None:
        """A client context that trusts this cluster's own certificate (None without --tls)."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.data_dir / "tls" / "cert.pem"))

    # --- stop --------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Replicas first (they finish in-flight requests and open batches), then nginx, Redis, PostgreSQL."""
        if self.apps:  # each drains on its own: together, the stop takes as long as the slowest drain
            with ThreadPoolExecutor(max_workers=len(self.apps), thread_name_prefix="replica-stop") as pool:
                list(pool.map(self._stop, self.apps))
        self.apps = []
        if self.nginx is not None:
            self._stop(self.nginx)
            self.nginx = None
        if self.simulator is not None:
            self._stop(self.simulator)
            self.simulator = None
        if self.redis is not None:
            self._stop(self.redis)
            self.redis = None
        if self.redis_nodes is not None:
            self.redis_nodes.stop()
            self.redis_nodes = None
        for server in (self.standby, self.postgres):
            if server is not None and server.running():
                server.stop()
        self.postgres = self.standby = None
        for handle in self._logs:
            handle.close()
        self._logs = []

    @staticmethod
    def _stop(executor: TCPExecutor | HTTPExecutor) -> None:
        try:
            executor.stop()
        except ExecutorError as exc:  # e.g. it had died already, or exited with an error: still stopped
            log.warning("%s", exc)
        except ProcessLookupError:
            pass

    # --- foreground ----------------------------------------------------------------------------------------------

    def banner(self) -> str:
        return (
            f"\nHyperCheckout is up: {self.replicas} replica(s) behind nginx\n"
            f"  API        {self.url}/purchase   (try: curl -X POST {self.url}/purchase "
            "-d '{\"user_id\": 1, \"product_id\": 1, \"quantity\": 1}')\n"
            f"  Dashboard  {self.url}/admin\n"
            + (f"  Payments   a local simulator at {self.env['HC_STRIPE_API_BASE']} (test payments only; products "
               "with a price are paid through it)\n" if self.simulator is not None else "") +
            f"  Admin token  {self.env['HC_ADMIN_TOKEN']}\n"
            + (f"  TLS        self-signed certificate {self.data_dir}/tls/cert.pem (curl --cacert it)\n"
               if self.tls else "")
            + (f"  Warning    the open-file limit could be raised only to {self.files}: nginx takes about "
               f"{worker_connections_for(self.files):,} connections per worker, fewer than a herd of 10,000 "
               "needs (raise the hard limit: ulimit -Hn, or LimitNOFILE for a service)\n"
               if worker_connections_for(self.files) < HERD_CONNECTIONS else "") +
            f"  Data dir   {self.data_dir}  (logs in logs/; `hypercheckout status --data-dir {self.data_dir}`)\n"
            "Ctrl-C stops everything.\n"
        )

    def run(self, ready: Callable[[], Any] | None = None) -> int:
        """Start, print the banner, serve until SIGINT/SIGTERM, stop. Returns the exit status."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            self.start()
        except (ClusterError, ServiceError) as exc:
            print(f"hypercheckout up: {exc}", file=sys.stderr)
            return 1
        print(self.banner(), file=self.out, flush=True)
        if ready:
            ready()
        reported: set[int] = set()
        try:
            while not stop.wait(0.5):
                for index, executor in enumerate(self.apps, start=1):
                    if index not in reported and not executor.running():
                        reported.add(index)
                        print(f"app-{index} exited; nginx routes around it (log: {self.log_dir}/app-{index}.log)",
                              file=self.out, flush=True)
        finally:
            print("stopping: replicas, nginx, Redis, PostgreSQL …", file=self.out, flush=True)
            self.stop()
        return 0
