"""Private PostgreSQL and Redis servers in a directory of their own, on free loopback ports.

Used by the test suite and by `hypercheckout up`. PostgreSQL refuses to run as root, so when we are root its
commands run as the ``postgres`` system user (or ``nobody``), which then owns the data directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hypercheckout.processes import PortPicker, ServiceError, free_port, port_open, stop_process, tail, wait_until

INSTALL_HINT = (
    "Debian/Ubuntu: sudo apt-get install postgresql redis-server; macOS: brew install postgresql redis"
)


def find_postgres_bin(name: str) -> Path:
    """A PostgreSQL program from PATH, ``pg_config --bindir`` or /usr/lib/postgresql/*/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = []
    if shutil.which("pg_config"):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        candidates.append(Path(bindir) / name)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    candidates += [Path(d) / name for d in versions]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServiceError(f"PostgreSQL program {name!r} not found. {INSTALL_HINT}")


def _unprivileged_user() -> str | None:
    """The user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ServiceError("running as root and no 'postgres' or 'nobody' user exists to run PostgreSQL as")


def secret_beside(path: Path) -> Path:
    """Where a private server's password is kept: next to its data dir (PostgreSQL wants its own dir empty at
    initdb, and owned by another user)."""
    return path.with_name(path.name + ".password")


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (secrets), replacing it atomically. The mode is given when the file
    is created, so no other user can open it in between, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def new_secret(path: Path) -> str:
    """A random password, written to ``path`` readable by its owner only."""
    value = secrets.token_urlsafe(24)
    write_private(path, value + "\n")
    return value


class PrivatePostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1 only, with password (scram-sha-256)
    authentication: another local user cannot connect as ``postgres`` by knowing the port.

    The password is kept beside the data dir. A cluster made by an older version, with trust authentication and
    no password file, still starts and is reached without one."""

    def __init__(self, data_dir: Path, port: int | None = None, *, max_connections: int = 200,
                 durable: bool = True, options: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.max_connections = max_connections
        self.durable = durable  # False: fsync off, for throwaway test databases only
        # Extra server settings given at start (-c name=value), not written into the data dir: a standby cloned
        # from this server does not inherit them (synchronous_standby_names must not follow it to a promotion).
        self.options = list(options)
        self.user = _unprivileged_user()
        self.log_path = self.data_dir / "postgres.log"
        self.password_file = secret_beside(self.data_dir)
        self.password = read_secret(self.password_file)

    @property
    def url(self) -> str:
        credentials = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(find_postgres_bin(program)), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.data_dir, self.user)
            os.chmod(self.data_dir, 0o700)
        self.password = self.password or new_secret(self.password_file)
        # initdb reads the superuser's password from a file, as the user it runs as.
        with tempfile.TemporaryDirectory(prefix="hc-initdb-") as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(self.password + "\n")
            if self.user:
                shutil.chown(tmp, self.user)
                shutil.chown(pwfile, self.user)
            args = ["-D", str(self.data_dir), "-U", "postgres", "-A", "scram-sha-256", f"--pwfile={pwfile}",
                    "-E", "UTF8"]
            if not self.durable:
                args.append("--no-sync")
            done = self._run("initdb", *args)
        if done.returncode != 0:
            raise ServiceError(f"initdb failed in {self.data_dir}:\n{done.stderr or done.stdout}")

    def start(self) -> str:
        """Initialise (once) and start the server; returns its URL (database ``postgres``)."""
        if not self.initialised():
            self.init()
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.data_dir}",
            f"-c max_connections={self.max_connections}",
            "-c shared_buffers=256MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options += [f"-c {option}" for option in self.options]
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60",
                         "-o", " ".join(options), "start")
        if done.returncode != 0:
            raise ServiceError(f"PostgreSQL did not start:\n{done.stdout}{done.stderr}\n{tail(self.log_path)}")
        return self.url

    def stop(self, mode: str = "fast") -> subprocess.CompletedProcess[str] | None:
        """``fast``: roll back open transactions and shut down cleanly; ``immediate``: quit at once, as a crash
        does (the next start recovers from the WAL). Returns pg_ctl's run (None without a data dir): its return
        code is not 0 when no server was running or it did not stop, which a caller that meant to stop one checks."""
        if not self.initialised():
            return None
        return self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    # --- streaming replication -------------------------------------------------------------------------------------

    @property
    def is_standby(self) -> bool:
        return (self.data_dir / "standby.signal").exists()

    def clone_from(self, primary: PrivatePostgres) -> None:
        """Make this data dir a streaming-replication standby of ``primary`` (running): a base backup with its WAL,
        ``standby.signal`` and the primary's address written by pg_basebackup itself (``-R``)."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        if self.user:
            shutil.chown(self.data_dir, self.user)
        os.chmod(self.data_dir, 0o700)
        done = self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                         "-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast",
                         env={"PGPASSWORD": primary.password or ""})
        if done.returncode != 0:
            raise ServiceError(f"pg_basebackup from port {primary.port} failed:\n{done.stderr or done.stdout}")
        # A primary made synchronous with ALTER SYSTEM has that in postgresql.auto.conf, which the copy brings
        # along: promoted, this server would wait for a standby of its own that does not exist.
        auto = self.data_dir / "postgresql.auto.conf"
        lines = auto.read_text().splitlines(keepends=True)
        auto.write_text("".join(line for line in lines if not line.startswith("synchronous_standby_names")))
        # The copy has the primary's users and passwords: so does this server's password file.
        if primary.password:
            write_private(self.password_file, primary.password + "\n")
            self.password = primary.password

    def promote(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "promote")
        if done.returncode != 0:
            raise ServiceError(f"pg_ctl promote failed:\n{done.stderr or done.stdout}")

    def crash(self) -> int:
        """SIGKILL the postmaster and every process of it at once, as losing the machine would; returns its pid."""
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        victims = [pid]
        with contextlib.suppress(FileNotFoundError, ValueError):
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
            victims += [int(child) for child in children]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), timeout=10, what=f"PostgreSQL (pid {pid}) to die")
        return pid

    def running(self) -> bool:
        return self.initialised() and self._run("pg_ctl", "-D", str(self.data_dir), "status").returncode == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\tZ" in status.read_text())  # a zombie is dead, only not yet reaped


class PrivateRedis:
    """One redis-server on 127.0.0.1 with its files in ``data_dir``; keeps nothing on disk unless ``persist``.
    It requires a password, kept beside ``data_dir`` (a server started again on the same dir uses the same)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = False,
                 password: str | None = None, config: str = "") -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.persist = persist
        self.log_path = self.data_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.config = config  # more lines of redis.conf (the cluster's), written with the password
        if password is None:
            password_file = secret_beside(self.data_dir)
            password = read_secret(password_file) or new_secret(password_file)
        self.password = password

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        program = shutil.which("redis-server")
        if not program:
            raise ServiceError(f"redis-server not found. {INSTALL_HINT}")
        # The password goes in a file of its own (mode 0600), not on the command line, where `ps` shows it.
        conf = self.data_dir / "auth.conf"
        write_private(conf, f"requirepass {self.password}\n{self.config}")
        cmd = [program, str(conf), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
               "--logfile", str(self.log_path), "--daemonize", "no", "--protected-mode", "yes"]
        if self.persist:
            cmd += ["--appendonly", "yes", "--save", "60 1"]
        else:
            cmd += ["--appendonly", "no", "--save", ""]
        return cmd

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: self.process.poll() is not None or port_open(self.port), timeout=15,
                       what=f"redis-server on port {self.port}")
        except ServiceError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise ServiceError(f"redis-server exited:\n{tail(self.log_path)}")
        return self.url

    def stop(self) -> None:
        if self.process:
            stop_process(self.process, grace=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash, as a fault test wants one."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


CLUSTER_NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over (~2-3 s in all)


class PrivateRedisCluster:
    """A Redis Cluster on 127.0.0.1: ``masters`` masters with one replica each, every node a `PrivateRedis` in a
    directory of its own under ``data_dir``, all with one password (in a file beside ``data_dir``), formed by
    ``redis-cli --cluster create``. Nothing is kept on disk but each node's cluster config (nodes.conf), so a
    node killed and started again rejoins the cluster (as a replica of whoever took over its slots)."""

    def __init__(self, data_dir: Path, *, masters: int = 3, ports: PortPicker | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._pick_port = (ports or PortPicker()).pick
        password_file = secret_beside(self.data_dir)
        self.password = read_secret(password_file) or new_secret(password_file)
        ports_file = self.data_dir / "ports"
        # Each node: its port and its cluster bus port (by default port + 10000, which may be taken or too high).
        pairs = [tuple(int(p) for p in pair.split(":")) for pair in ports_file.read_text().split()] \
            if ports_file.exists() else []
        if len(pairs) != masters * 2:
            pairs = [(self._pick_port(), self._pick_port()) for _ in range(masters * 2)]
        self._config = (f"masterauth {self.password}\ncluster-enabled yes\ncluster-config-file nodes.conf\n"
                        f"cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}\n"
                        # Slots on healthy masters keep serving while one master's replica takes over.
                        "cluster-require-full-coverage no\n"
                        # A replica takes over however long it was cut off: limits are not worth an unavailable
                        # shard.
                        "cluster-replica-validity-factor 0\n")
        self.nodes = [self._node(port, bus) for port, bus in pairs]
        self._pairs = pairs
        self._ports_file = ports_file

    def _node(self, port: int, bus: int) -> PrivateRedis:
        return PrivateRedis(self.data_dir / f"node-{port}", port, password=self.password,
                            config=f"{self._config}cluster-port {bus}\n")

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://:{self.password}@{hosts}"

    def node(self, port: int) -> PrivateRedis:
        return next(n for n in self.nodes if n.port == port)

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        formed = self._ports_file.exists()
        try:
            for index in range(len(self.nodes)):
                self._start_node(index, fresh=not formed)
            write_private(self._ports_file, " ".join(f"{port}:{bus}" for port, bus in self._pairs) + "\n")
            if not formed:
                self._create()
            wait_until(self._healthy, timeout=30, what="the Redis Cluster to cover every slot")
        except ServiceError:
            self.stop()
            raise
        return self.url

    def _start_node(self, index: int, *, fresh: bool, attempts: int = 5) -> None:
        """Start a node. Its two ports were free when chosen, but any process may take one before the node binds
        it (an outgoing connection gets its port from the same range): a node of a cluster not formed yet is
        given two other ports and started again; one of a formed cluster keeps its ports (the others know them)."""
        for attempt in range(attempts):
            try:
                self.nodes[index].start()
                return
            except ServiceError as exc:
                if not fresh or "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
            port, bus = self._pick_port(), self._pick_port()
            self._pairs[index] = (port, bus)
            self.nodes[index] = self._node(port, bus)

    def _cli(self, port: int, *args: str, check: bool = True) -> str:
        program = shutil.which("redis-cli")
        if not program:
            raise ServiceError(f"redis-cli not found. {INSTALL_HINT}")
        # The password goes by environment, not on the command line, where `ps` shows it.
        done = subprocess.run([program, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True,
                              text=True, env={**os.environ, "REDISCLI_AUTH": self.password}, timeout=60)
        if check and done.returncode != 0:
            raise ServiceError(f"redis-cli {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def _create(self) -> None:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        self._cli(self.nodes[0].port, "--cluster", "create", *addresses, "--cluster-replicas", "1",
                  "--cluster-yes")

    def info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of one node ({} if it does not answer)."""
        try:
            text = self._cli(port, "cluster", "info")
        except (ServiceError, subprocess.TimeoutExpired):
            return {}
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def _cluster_nodes(self) -> list[list[str]]:
        """CLUSTER NODES as the first node that answers sees it (this object need not have started them)."""
        for node in self.nodes:
            try:
                text = self._cli(node.port, "cluster", "nodes")
            except (ServiceError, subprocess.TimeoutExpired):
                continue
            if text.strip():
                return [line.split() for line in text.splitlines() if line.strip()]
        raise ServiceError("no node of the Redis Cluster answers")

    @staticmethod
    def _port(fields: list[str]) -> int:
        return int(fields[1].split("@")[0].rsplit(":", 1)[1])

    def roles(self) -> dict[int, str]:
        """Port → "master", "slave" or "fail" for every node, as the cluster itself sees them."""
        found = {}
        for fields in self._cluster_nodes():
            flags = fields[2].split(",")
            found[self._port(fields)] = "fail" if "fail" in flags else "master" if "master" in flags else "slave"
        return found

    def master_of_slot(self, slot: int) -> int | None:
        """The port of the master serving ``slot`` now, by the cluster's own word; None while none does (its master
        failed and no replica has taken over yet)."""
        for fields in self._cluster_nodes():
            if "master" not in fields[2].split(",") or "fail" in fields[2].split(","):
                continue
            for part in fields[8:]:
                first, _, last = part.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    return self._port(fields)
        return None

    def _healthy(self) -> bool:
        """Every node that answers says the cluster is ok (all slots served); a dead node does not answer."""
        states = [info.get("cluster_state") for info in map(self.info, (n.port for n in self.nodes)) if info]
        return bool(states) and all(state == "ok" for state in states)

    def wait_healthy(self, timeout: float = 30) -> None:
        wait_until(self._healthy, timeout=timeout, what="the Redis Cluster to cover every slot", interval=0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
