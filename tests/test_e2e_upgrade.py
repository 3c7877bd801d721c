"""End-to-end: binary upgrade (admin UPGRADE, SIGUSR2) against a real PostgreSQL 15, with
psycopg clients whose TCP connections must survive it.

A client's local port and its BackendKeyData say whether it kept its connection and its
identity; which process holds the listening socket is read from /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psycopg
from twisted.trial.unittest import TestCase

import pgdoorman
from pgdoorman.testing.cluster import free_port

from .certs import Authority
from .pgtest import ClusterMixin, PgdoormanProcess, bound, metrics_section, pool_config
from .rawclient import RawClient
from .test_metrics import scrape

TEST_BOUND = 150
PASSWORD = "pw-upgrade"


def listener_pids(port: int) -> set:
    """The processes that hold the socket listening on TCP C{port} (IPv4)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    pids.add(int(entry))
                    break
        except OSError:
            continue
    return pids


def local_port(conn) -> int:
    """The client side's port of a psycopg connection."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return sock.getsockname()[1]


def wait_gone(pid: int, seconds: float = 60) -> None:
    """Wait until process C{pid} has exited (or is a zombie)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")


def kill_later(testcase, pid: int) -> None:
    """Stop process C{pid} (a new pgdoorman, which the test did not start) at cleanup."""

    def stop():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            wait_gone(pid, 20)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)

    testcase.addCleanup(stop)


class UpgradeTests(ClusterMixin, TestCase):
    """User C{up} (pool_size 4, transaction mode) behind one pgdoorman process."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("up", PASSWORD)
            self.cluster.create_user("up_s", PASSWORD)
            self.cluster.sql("create table counted (client int, n int)")
            self.cluster.sql("grant all on counted to up")
            cls.initialised = True

    def config(self, general: str = "") -> str:
        """The config: user C{up} in transaction mode, C{up_s} in session mode
        (C{general}: more keys for [general]; shutdown_timeout is 30 s unless it says)."""
        if "shutdown_timeout" not in general:
            general += '\nshutdown_timeout = "30s"'
        users = "".join(
            f'[[pools.app.users]]\nusername = "{user}"\npassword = "{PASSWORD}"\npool_size = 4\n{more}'
            for user, more in (("up", ""), ("up_s", 'pool_mode = "session"\n'))
        )
        return pool_config(
            self.cluster,
            users,
            pool_mode="transaction",
            general=f'query_wait_timeout = "30s"\n{general}',
        )

    def start(self, general: str = "", env: "dict | None" = None, extra: str = "") -> PgdoormanProcess:
        """A pooler started by L{config}'s text (C{env}: more environment variables;
        C{extra}: more sections)."""
        pooler = PgdoormanProcess(self.config(general) + extra, os.path.abspath(self.mktemp()))
        pooler.env = env or {}
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        return pooler

    def admin(self, pooler: PgdoormanProcess):
        """An admin console connection (to whichever process listens now)."""
        conn = psycopg.connect(pooler.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True)
        self.addCleanup(conn.close)
        return conn

    def clients(self, pooler: PgdoormanProcess, count: int) -> list:
        """C{count} clients, every third with its own TimeZone, every other with an
        application_name, all with psycopg's server-side prepared statements."""
        conns = []
        for i in range(count):
            extra = {"application_name": f"app-{i}"} if i % 2 else {}
            conn = psycopg.connect(
                pooler.dsn("up", PASSWORD), autocommit=True, prepare_threshold=0, connect_timeout=30, **extra
            )
            self.addCleanup(conn.close)
            if i % 3 == 0:
                conn.execute(f"set timezone = 'Etc/GMT-{i % 12}'")
            conn.execute("select %s::int + 1", [i])
            conns.append(conn)
        return conns

    def check_clients(self, conns: list, ports: list, keys: list) -> None:
        """Each client has its connection, key, parameters and statements still."""
        for i, conn in enumerate(conns):
            self.assertEqual(local_port(conn), ports[i])
            self.assertEqual(conn.info.backend_pid, keys[i])
            self.assertEqual(conn.execute("select %s::int + 1", [i]).fetchone()[0], i + 1)
            if i % 3 == 0:
                self.assertEqual(conn.execute("show timezone").fetchone()[0], f"Etc/GMT-{i % 12}")
            name = conn.execute("select current_setting('application_name')").fetchone()[0]
            self.assertEqual(name, f"app-{i}" if i % 2 else "")

    def upgrade_and_check(self, trigger) -> None:
        """20 idle clients and one inside a transaction; C{trigger(pooler, admin)} starts
        the upgrade and returns the new process's pid."""
        sockdir = tempfile.mkdtemp(prefix="pgdu")
        self.addCleanup(shutil.rmtree, sockdir, True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.bind(os.path.join(sockdir, "notify"))
        notify.settimeout(30)
        passwd = os.path.join(sockdir, "manhole.passwd")
        with open(passwd, "w") as f:
            f.write("admin:secret\n")
        manhole, web = free_port(), free_port()
        manhole_section = f'\n[manhole]\nlisten = "tcp:{manhole}:interface=127.0.0.1"\npasswd = "{passwd}"\n'
        extra = manhole_section + metrics_section(web)
        pooler = self.start(
            f'unix_socket_dir = "{sockdir}"', env={"NOTIFY_SOCKET": notify.getsockname()}, extra=extra
        )
        old = pooler.proc.pid
        self.assertEqual(notify.recv(1000), f"READY=1\nMAINPID={old}".encode())
        local = psycopg.connect(
            host=sockdir, port=pooler.port, dbname="app", user="up", password=PASSWORD, autocommit=True
        )
        self.addCleanup(local.close)
        local_key = local.info.backend_pid
        conns = self.clients(pooler, 20)
        ports = [local_port(conn) for conn in conns]
        keys = [conn.info.backend_pid for conn in conns]
        self.cluster.sql("delete from counted where client = -1")
        busy = psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30)
        self.addCleanup(busy.close)
        busy.execute("insert into counted values (-1, 1)")
        busy_port = local_port(busy)
        # Connected (and accepted: the admin connection after it is) but not logged in.
        late = RawClient(pooler.port)
        self.addCleanup(late.close)
        admin = self.admin(pooler)
        new = trigger(pooler, admin)
        kill_later(self, new)
        self.assertNotEqual(new, old)
        # The old process serves only admin logins now.
        refused = late.login("up", "app", PASSWORD)
        self.assertEqual(
            (refused.sqlstate, refused.fields["M"]), ("58006", "is admin only mode: pooler is shut down now")
        )
        # systemd learns the new main process.
        self.assertEqual(notify.recv(1000), f"MAINPID={new}\nREADY=1".encode())
        self.check_clients(conns, ports, keys)
        self.assertEqual((local.execute("select 7").fetchone()[0], local.info.backend_pid), (7, local_key))
        busy.commit()
        self.assertEqual(busy.execute("select count(*) from counted where client = -1").fetchone()[0], 1)
        busy.commit()
        self.assertEqual(local_port(busy), busy_port)
        wait_gone(old)
        self.assertEqual(pooler.proc.wait(10), 0)
        # The clients', the manhole's and /metrics' sockets are the new process's.
        for port in (pooler.port, manhole, web):
            self.assertEqual(listener_pids(port), {new})
        self.assertIn("pg_doorman_connections", scrape(web)["families"])
        self.check_clients(conns, ports, keys)
        # Its cancel key cancels its query, sent to the new process.
        timer = threading.Timer(1.0, conns[5].cancel)
        timer.start()
        with self.assertRaises(psycopg.errors.QueryCanceled):
            conns[5].execute("select pg_sleep(20)")
        timer.join()
        self.assertEqual(conns[5].execute("select 5").fetchone()[0], 5)
        fresh = psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30)
        self.addCleanup(fresh.close)
        self.assertEqual(fresh.execute("select 1").fetchone()[0], 1)
        # The unix socket's file is still there, served by the new process.
        with psycopg.connect(
            host=sockdir, port=pooler.port, dbname="app", user="up", password=PASSWORD
        ) as conn:
            self.assertEqual(conn.execute("select 2").fetchone()[0], 2)
        self.assertEqual(local.execute("select 3").fetchone()[0], 3)

    def test_upgrade_command(self):
        """UPGRADE: a new process owns the listener; the 20 idle clients keep their TCP
        connections (same local port), keys, parameters and prepared statements; the
        client inside a transaction commits on the old process and follows; the old one
        exits. The answer says who moved and who follows."""

        def trigger(pooler, admin):
            cur = admin.execute("UPGRADE")
            self.assertEqual(
                [c.name for c in cur.description], ["success", "pid", "migrated", "waiting", "not_migrated"]
            )
            row = cur.fetchone()
            # The 20 clients and the one on the unix socket move; one follows.
            self.assertEqual((row[0],) + tuple(int(n) for n in row[2:]), ("t", 21, 1, 0))
            return int(row[1])

        self.upgrade_and_check(trigger)

    def test_sigusr2(self):
        """SIGUSR2 does what UPGRADE does."""

        def trigger(pooler, admin):
            os.kill(pooler.proc.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while True:
                # The old process keeps a duplicate until it exits.
                pids = listener_pids(pooler.port) - {pooler.proc.pid}
                if pids and "handing over the clients" in pooler.log():
                    return pids.pop()
                self.assertLess(time.monotonic(), deadline, pooler.log()[-3000:])
                time.sleep(0.05)

        self.upgrade_and_check(trigger)

    def test_counted_inserts_across_upgrade(self):
        """20 clients insert counted rows in a loop while the pooler is upgraded: the
        table holds exactly the commits they saw, and none of them saw an error."""
        pooler = self.start()
        self.cluster.sql("delete from counted where client >= 0")
        stop = threading.Event()
        commits = [0] * 20
        errors: list = []

        def run(i):
            try:
                with psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30) as conn:
                    while not stop.is_set():
                        conn.execute("insert into counted values (%s, %s)", [i, commits[i]])
                        conn.commit()
                        commits[i] += 1
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        before = sum(commits)
        row = self.admin(pooler).execute("UPGRADE").fetchone()
        kill_later(self, int(row[1]))
        wait_gone(pooler.proc.pid)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        self.assertEqual(errors, [])
        self.assertGreater(sum(commits), before)
        rows = int(self.cluster.sql("select count(*) from counted where client >= 0"))
        self.assertEqual(rows, sum(commits))
        self.assertEqual(listener_pids(pooler.port), {int(row[1])})

    def test_broken_config(self):
        """A config the new code rejects: UPGRADE answers F0000 with the checker's words,
        and the old process keeps serving (its clients and new ones)."""
        pooler = self.start()
        conn = self.clients(pooler, 1)[0]
        with open(pooler.config_path) as f:
            text = f.read()
        with open(pooler.config_path, "w") as f:
            f.write(text.replace('pool_mode = "transaction"', 'pool_mode = "statement"'))
        with self.assertRaises(psycopg.Error) as caught:
            self.admin(pooler).execute("UPGRADE")
        self.assertEqual(caught.exception.sqlstate, "F0000")
        self.assertIn("configuration check failed", str(caught.exception))
        self.assertIn("pool_mode", str(caught.exception))
        self.assertEqual(conn.execute("select 41 + 1").fetchone()[0], 42)
        self.assertEqual(listener_pids(pooler.port), {pooler.proc.pid})
        fresh = psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30)
        self.addCleanup(fresh.close)
        self.assertEqual(fresh.execute("select 1").fetchone()[0], 1)
        self.assertIn("BINARY UPGRADE ABORTED", pooler.log())

    def test_tls_and_session_clients_stay(self):
        """A TLS client and a session-mode client cannot move: UPGRADE counts them as not
        migrated; they go on working on the old process until shutdown_timeout, then get
        PgDoorman's FATAL 58006, and the old process exits."""
        certs = os.path.abspath(self.mktemp())
        ca = Authority(certs, "ca")
        cert, key = ca.issue("localhost", ("localhost", "127.0.0.1"))
        pooler = self.start(
            f'shutdown_timeout = "3s"\ntls_mode = "allow"\ntls_certificate = "{cert}"\ntls_private_key = "{key}"'
        )
        moving = psycopg.connect(pooler.dsn("up", PASSWORD), sslmode="disable", autocommit=True)
        self.addCleanup(moving.close)
        tls = psycopg.connect(pooler.dsn("up", PASSWORD), sslmode="require", autocommit=True)
        self.addCleanup(tls.close)
        session = psycopg.connect(pooler.dsn("up_s", PASSWORD), sslmode="disable", autocommit=True)
        self.addCleanup(session.close)
        session.execute("create temp table mine (n int)")
        started = time.monotonic()
        row = self.admin(pooler).execute("UPGRADE").fetchone()
        kill_later(self, int(row[1]))
        self.assertEqual(tuple(int(n) for n in row[2:]), (1, 0, 2))
        self.assertEqual(tls.execute("select 1").fetchone()[0], 1)
        session.execute("insert into mine values (1)")
        self.assertEqual(moving.execute("select 2").fetchone()[0], 2)
        wait_gone(pooler.proc.pid)
        self.assertGreater(time.monotonic() - started, 2.5)
        for conn in (tls, session):
            with self.assertRaises(psycopg.OperationalError) as caught:
                conn.execute("select 1")
            self.assertIn("pooler is shut down now", str(caught.exception))
        self.assertEqual(moving.execute("select 3").fetchone()[0], 3)

    def test_new_process_fails_to_start(self):
        """The new config passes the check but its port is taken: the new process exits
        before it is ready, UPGRADE says so, and the old process serves on."""
        pooler = self.start()
        conn = self.clients(pooler, 1)[0]
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with open(pooler.config_path) as f:
            text = f.read()
        with open(pooler.config_path, "w") as f:
            f.write(text.replace(f"port = {pooler.port}\n", f"port = {taken.getsockname()[1]}\n", 1))
        with self.assertRaises(psycopg.Error) as caught:
            self.admin(pooler).execute("UPGRADE")
        self.assertEqual(caught.exception.sqlstate, "58000")
        self.assertIn("before it was ready", str(caught.exception))
        self.assertEqual(conn.execute("select 41 + 1").fetchone()[0], 42)
        self.assertEqual(listener_pids(pooler.port), {pooler.proc.pid})
        with psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30) as fresh:
            self.assertEqual(fresh.execute("select 1").fetchone()[0], 1)

    def test_new_process_dies_during_the_hand_over(self):
        """The new process is killed while a client's transaction still runs on the old
        one: the old process listens again and serves that client and new ones."""
        pooler = self.start()
        self.clients(pooler, 2)
        busy = psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30)
        self.addCleanup(busy.close)
        busy.execute("select 1")
        row = self.admin(pooler).execute("UPGRADE").fetchone()
        self.assertEqual(tuple(int(n) for n in row[2:]), (2, 1, 0))
        os.kill(int(row[1]), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "this process serves again" not in pooler.log():
            self.assertLess(time.monotonic(), deadline, pooler.log()[-3000:])
            time.sleep(0.05)
        busy.commit()
        self.assertEqual(busy.execute("select 4").fetchone()[0], 4)
        busy.commit()
        self.assertEqual(listener_pids(pooler.port), {pooler.proc.pid})
        with psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30) as fresh:
            self.assertEqual(fresh.execute("select 1").fetchone()[0], 1)
        # Not in admin-only mode any more, and a second upgrade can be tried.
        row = self.admin(pooler).execute("UPGRADE").fetchone()
        kill_later(self, int(row[1]))
        wait_gone(pooler.proc.pid)
        self.assertEqual(busy.execute("select 5").fetchone()[0], 5)

    def test_daemonized(self):
        """Under twistd as a daemon (no -n): the upgrade moves the clients all the same,
        and the pid file names the new process once the old one has exited."""
        workdir = os.path.abspath(self.mktemp())
        pooler = PgdoormanProcess(self.config(), workdir)
        pidfile = os.path.join(workdir, "twistd.pid")
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(pgdoorman.__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        command = [sys.executable, twistd, "--pidfile", pidfile, "--logfile", pooler.logfile]
        subprocess.run(
            command + ["pgdoorman", "--config", pooler.config_path], cwd=workdir, env=env, check=True
        )
        bound(self, TEST_BOUND, pooler)
        deadline = time.monotonic() + 30
        while not listener_pids(pooler.port):
            self.assertLess(time.monotonic(), deadline, pooler.log()[-3000:])
            time.sleep(0.05)
        with open(pidfile) as f:
            old = int(f.read())
        kill_later(self, old)
        conns = self.clients(pooler, 3)
        keys = [conn.info.backend_pid for conn in conns]
        row = self.admin(pooler).execute("UPGRADE").fetchone()
        new = int(row[1])
        kill_later(self, new)
        self.assertEqual(tuple(int(n) for n in row[2:]), (3, 0, 0))
        wait_gone(old)
        deadline = time.monotonic() + 10
        while True:
            try:
                with open(pidfile) as f:
                    if int(f.read() or 0) == new:
                        break
            except OSError:
                pass
            self.assertLess(time.monotonic(), deadline, "the pid file does not name the new process")
            time.sleep(0.05)
        self.assertEqual(listener_pids(pooler.port), {new})
        for i, conn in enumerate(conns):
            self.assertEqual(
                (conn.execute("select %s::int", [i]).fetchone()[0], conn.info.backend_pid), (i, keys[i])
            )


class WorkersUpgradeTests(ClusterMixin, TestCase):
    """C{workers = 2}: the supervisor runs the upgrade, each worker hands its clients
    over through it, and the new supervisor gives each to the worker its id names."""

    hba_method = "scram-sha-256"

    def setUp(self):
        super().setUp()
        cls = type(self)
        if "initialised" not in cls.__dict__:
            self.cluster.create_user("up", PASSWORD)
            cls.initialised = True

    def test_both_workers_clients_move(self):
        """Clients of both workers keep their connections, keys and statements, one inside
        a transaction follows when it commits; a cancel reaches each worker's client; the
        old supervisor and its workers exit, and the new worker 0 gets the manhole."""
        users = f'[[pools.app.users]]\nusername = "up"\npassword = "{PASSWORD}"\npool_size = 4\n'
        general = 'query_wait_timeout = "30s"\nshutdown_timeout = "30s"\nworkers = 2'
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        with open(os.path.join(workdir, "manhole.passwd"), "w") as f:
            f.write("admin:secret\n")
        manhole = free_port()
        extra = f'\n[manhole]\nlisten = "tcp:{manhole}:interface=127.0.0.1"\npasswd = "manhole.passwd"\n'
        pooler = PgdoormanProcess(
            pool_config(self.cluster, users, pool_mode="transaction", general=general) + extra, workdir
        )
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        # The port answers once the workers listen; the supervisor's line may come after.
        banner = f"serving; listening: listener 127.0.0.1:{pooler.port} (2 workers)"
        deadline = time.monotonic() + 30
        while banner not in pooler.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn(banner, pooler.log())
        conns = []
        while len(conns) < 10 or len({conn.info.backend_pid % 2 for conn in conns}) < 2:
            self.assertLess(len(conns), 60, "every client landed on one worker")
            conn = psycopg.connect(pooler.dsn("up", PASSWORD), autocommit=True, prepare_threshold=0)
            self.addCleanup(conn.close)
            conn.execute("select %s::int", [len(conns)])
            conns.append(conn)
        ports = [local_port(conn) for conn in conns]
        keys = [conn.info.backend_pid for conn in conns]
        busy = psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30)
        self.addCleanup(busy.close)
        busy.execute("select 1")
        admin = psycopg.connect(pooler.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True)
        self.addCleanup(admin.close)
        row = admin.execute("UPGRADE").fetchone()
        new = int(row[1])
        kill_later(self, new)
        self.assertEqual((row[0],) + tuple(int(n) for n in row[2:]), ("t", len(conns), 1, 0))
        busy.commit()
        wait_gone(pooler.proc.pid)
        self.assertEqual(busy.execute("select 6").fetchone()[0], 6)
        self.assertEqual(pooler.proc.wait(10), 0)
        for i, conn in enumerate(conns):
            self.assertEqual(
                (conn.execute("select %s::int", [i]).fetchone()[0], local_port(conn)), (i, ports[i])
            )
            self.assertEqual(conn.info.backend_pid, keys[i])
        for worker in (0, 1):
            conn = next(c for c in conns if c.info.backend_pid % 2 == worker)
            timer = threading.Timer(1.0, conn.cancel)
            timer.start()
            with self.assertRaises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
        pids = listener_pids(pooler.port)
        self.assertEqual(len(pids), 3, pids)
        self.assertIn(new, pids)
        # The new worker 0 takes the manhole's port once the old worker 0 let it go.
        deadline = time.monotonic() + 20
        while not listener_pids(manhole) & pids:
            self.assertLess(time.monotonic(), deadline, pooler.log()[-3000:])
            time.sleep(0.1)
        with psycopg.connect(pooler.dsn("up", PASSWORD), connect_timeout=30) as fresh:
            self.assertEqual(fresh.execute("select 1").fetchone()[0], 1)

    def test_more_workers_after(self):
        """The new config has three workers instead of two: the new supervisor keeps the
        old sockets and binds a third; each client goes to the worker its id names modulo
        three, so its cancel still finds it; the unix socket and /metrics follow."""
        sockdir = tempfile.mkdtemp(prefix="pgdw")
        self.addCleanup(shutil.rmtree, sockdir, True)
        web = free_port()
        users = f'[[pools.app.users]]\nusername = "up"\npassword = "{PASSWORD}"\npool_size = 4\n'
        general = f'query_wait_timeout = "30s"\nworkers = 2\nunix_socket_dir = "{sockdir}"'
        extra = metrics_section(web)
        text = pool_config(self.cluster, users, pool_mode="transaction", general=general) + extra
        pooler = PgdoormanProcess(text, os.path.abspath(self.mktemp()))
        pooler.start()
        self.addCleanup(pooler.stop)
        bound(self, TEST_BOUND, pooler)
        conns = []
        for i in range(12):
            conn = psycopg.connect(pooler.dsn("up", PASSWORD), autocommit=True, prepare_threshold=0)
            self.addCleanup(conn.close)
            conn.execute("select %s::int", [i])
            conns.append(conn)
        local = psycopg.connect(host=sockdir, port=pooler.port, dbname="app", user="up", password=PASSWORD)
        self.addCleanup(local.close)
        local.autocommit = True
        conns.append(local)
        keys = [conn.info.backend_pid for conn in conns]
        pooler.write_config(text.replace("workers = 2", "workers = 3"))
        with psycopg.connect(pooler.dsn("admin", "admin-secret", "pgdoorman"), autocommit=True) as admin:
            row = admin.execute("UPGRADE").fetchone()
        new = int(row[1])
        kill_later(self, new)
        self.assertEqual(tuple(int(n) for n in row[2:]), (13, 0, 0))
        wait_gone(pooler.proc.pid)
        # The new supervisor and its three workers.
        self.assertEqual(len(listener_pids(pooler.port)), 4)
        self.assertEqual(listener_pids(web), {new})
        self.assertIn("pg_doorman_connections", scrape(web)["families"])
        for i, conn in enumerate(conns):
            self.assertEqual((conn.execute("select 1").fetchone()[0], conn.info.backend_pid), (1, keys[i]))
        for remainder in sorted({key % 3 for key in keys}):
            conn = next(c for c in conns if c.info.backend_pid % 3 == remainder)
            timer = threading.Timer(1.0, conn.cancel)
            timer.start()
            with self.assertRaises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
        with psycopg.connect(
            host=sockdir, port=pooler.port, dbname="app", user="up", password=PASSWORD
        ) as conn:
            self.assertEqual(conn.execute("select 2").fetchone()[0], 2)
