"""Trial support for tests that need a real PostgreSQL server.

End-to-end tests must run, so a missing PostgreSQL installation is a test error
carrying the install hint from L{pgdoorman.testing.cluster.ClusterError}, never a skip.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from twisted.python import log

import pgdoorman
from pgdoorman.testing.cluster import PostgresCluster, free_port

__all__ = ["ClusterMixin", "PgdoormanProcess"]

# The one class whose cluster is up. Trial runs a class's tests together, so a
# different class asking for its cluster means the previous class is finished.
_active: type["ClusterMixin"] | None = None


def _tear_down_active() -> None:
    global _active
    if _active is not None:
        cls, _active = _active, None
        cls.tearDownClass()


# The last cluster class has no successor to tear it down.
atexit.register(_tear_down_active)


class ClusterMixin:
    """Give each test class its own running L{PostgresCluster} as C{cls.cluster}.

    Mix in before C{twisted.trial.unittest.TestCase}. Trial, unlike pyunit,
    never calls C{setUpClass}/C{tearDownClass}, so L{setUp} drives them: the
    first test of a class starts the cluster, the first test of the next
    cluster class (or interpreter exit) destroys it. Subclasses overriding
    C{setUp} must call C{super().setUp()}.
    """

    hba_method = "trust"
    cluster: PostgresCluster

    @classmethod
    def setUpClass(cls) -> None:
        """Start a cluster for this class and apply C{hba_method} to TCP logins."""
        cluster = PostgresCluster()
        try:
            cluster.start()
            cluster.set_hba(cls.hba_method)
        except BaseException:
            cluster.destroy()
            raise
        cls.cluster = cluster

    @classmethod
    def tearDownClass(cls) -> None:
        """Destroy this class's cluster, if it is up."""
        cluster = cls.__dict__.get("cluster")
        if cluster is not None:
            del cls.cluster
            cluster.destroy()

    def setUp(self) -> None:
        """Make sure this class's cluster is the one running."""
        global _active
        super().setUp()  # type: ignore[misc]
        cls = type(self)
        # __dict__, not getattr: a subclass must not reuse its parent's cluster.
        if "cluster" not in cls.__dict__:
            _tear_down_active()
            cls.setUpClass()
        _active = cls


class PgdoormanProcess:
    """A pgdoorman run as C{python -m pgdoorman CONFIG} (so C{twistd -n pgdoorman}) in a
    child process, from the same pgdoorman package the tests import.

    @param config_text: the TOML config (YAML if C{config_name} ends in C{.yaml});
        C{{port}} in it is replaced by a free port.
    """

    def __init__(self, config_text: str, workdir: str, config_name: str = "pg_doorman.toml") -> None:
        self.port = free_port()
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.config_path = os.path.join(self.workdir, config_name)
        self.write_config(config_text)
        self.logfile = os.path.join(self.workdir, "pgdoorman.log")
        self.proc: subprocess.Popen | None = None
        #: More environment variables for the process.
        self.env: dict = {}

    def write_config(self, config_text: str) -> None:
        """(Re)write the config file."""
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(config_text.replace("{port}", str(self.port)))

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(pgdoorman.__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env)
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgdoorman", self.config_path],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgdoorman exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    # Polling a port of the ephemeral range can connect the socket to
                    # itself (TCP simultaneous open) before anything listens there.
                    if sock.getsockname() == sock.getpeername():
                        raise ConnectionRefusedError("connected to itself")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgdoorman did not listen in time:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM the process and wait for it; returns its exit status. Processes that
        run this config too (a binary upgrade's new process, its workers) are stopped as
        well, so that a test that failed half-way leaves none behind."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in self._followers():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return proc.returncode

    def _followers(self) -> list:
        """The other live processes whose command line names this config file."""
        found = []
        needle = self.config_path.encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if needle in args:
                found.append(int(entry))
        return found

    def log(self) -> str:
        """What the process wrote so far."""
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def rss_kib(self) -> int:
        """Resident set size of the process, in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def admin_rows(self, command: str) -> list:
        """The rows of an admin console command, as dicts of column to value."""
        # Imported here: the PyPy run uses this module but has no psycopg.
        import psycopg

        with psycopg.connect(
            self.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True, prepare_threshold=None
        ) as conn:
            cursor = conn.execute(command)
            names = [column.name for column in cursor.description]
            return [{name: row[i] for i, name in enumerate(names)} for row in cursor.fetchall()]

    def url(self, user: str, password: str, database: str = "app") -> str:
        """A postgresql:// URL to this pgdoorman (asyncpg takes only URLs)."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def dsn(self, user: str, password: str | None = None, database: str = "app") -> str:
        """A libpq connection string to this pgdoorman."""
        parts = [f"host=127.0.0.1 port={self.port} dbname={database} user={user}"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)


def pool_config(
    cluster: PostgresCluster,
    users: str,
    *,
    database: str = "app",
    server_database: str = "postgres",
    pool_mode: str = "session",
    general: str = 'query_wait_timeout = "5s"',
) -> str:
    """A pgdoorman TOML config in front of C{cluster}; C{users} is the users' TOML text
    (C{[[pools.app.users]]} tables), C{{port}} stays for L{PgdoormanProcess} to fill in."""
    return f"""
[general]
host = "127.0.0.1"
port = {{port}}
admin_username = "admin"
admin_password = "admin-secret"
{general}

[pools.{database}]
server_host = "127.0.0.1"
server_port = {cluster.port}
server_database = "{server_database}"
pool_mode = "{pool_mode}"

{users}
"""


def metrics_section(port: int) -> str:
    """The config section that serves C{/metrics} on 127.0.0.1:C{port}."""
    return f'\n[prometheus]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'


def run_clients(testcase, client, count: int, bound: float = 120) -> list:
    """Run the coroutines C{client(i)}, for every i below C{count}, at once and within
    C{bound} seconds; fail C{testcase} if any of them raised, else return their results."""

    async def main():
        return await asyncio.gather(*(client(i) for i in range(count)), return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(main(), bound))
    errors = [r for r in results if isinstance(r, BaseException)]
    testcase.assertEqual(errors, [], f"{len(errors)} of {count} clients failed, first: {errors[:3]!r}")
    return results


class Deadline(Exception):
    """A test ran past its time bound."""


def bound(testcase, seconds: int, pooler: "PgdoormanProcess") -> None:
    """Fail C{testcase} with L{Deadline}, quoting the end of C{pooler}'s log, if it runs
    longer than C{seconds} (SIGALRM, so blocking client calls are interrupted too)."""

    def expired(signum, frame):
        raise Deadline(f"test ran longer than {seconds} s; pooler log:\n{pooler.log()[-3000:]}")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    testcase.addCleanup(signal.signal, signal.SIGALRM, previous)
    testcase.addCleanup(signal.alarm, 0)


class Sampler:
    """Counts the PostgreSQL sessions of a role every C{interval} seconds in a thread."""

    def __init__(self, cluster, role: str, interval: float = 0.5) -> None:
        self.cluster = cluster
        self.role = role
        self.interval = interval
        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> int:
        """The role's sessions right now."""
        return int(self.cluster.sql(f"select count(*) from pg_stat_activity where usename = '{self.role}'"))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.count())
            except Exception as e:  # the cluster may be restarting; keep sampling
                log.msg(f"sampler: {e}")
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def pgbench_pooled(testcase, cluster, dsn: str, mode: str, *, role: str, servers: int) -> None:
    """pgbench -M C{mode} -c 50 -j 2 -T 10 through the pooler at C{dsn}: no failed
    transaction, and PostgreSQL never sees more than C{servers} sessions of C{role}."""
    with Sampler(cluster, role, interval=1.0) as sampler:
        result = subprocess.run(
            ["pgbench", "-n", "-M", mode, "-c", "50", "-j", "2", "-T", "10", "-d", dsn],
            capture_output=True,
            text=True,
            timeout=90,
        )
    output = result.stdout + result.stderr
    testcase.assertEqual(result.returncode, 0, output)
    testcase.assertRegex(result.stdout, r"number of failed transactions: 0 \(0\.000%\)")
    processed = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
    testcase.assertGreater(processed, 0)
    testcase.assertGreaterEqual(len(sampler.samples), 5)
    testcase.assertLessEqual(max(sampler.samples), servers, sampler.samples)
