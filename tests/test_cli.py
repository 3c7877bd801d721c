"""The pgdoorman command and the twistd plugin as a user runs them: checking configs, refusing
bad ones with C{file: key path: problem}, and the demo."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import TestCase

import pgdoorman

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pgdoorman.__file__)))
CONTRIB = os.path.join(ROOT, "contrib", "pg_doorman.toml")

GOOD = """
[general]
host = "127.0.0.1"
port = 6432
admin_username = "admin"
admin_password = "secret"

[pools.app]
server_host = "127.0.0.1"
server_port = 5432
pool_mode = "session"
connect_timeout = 2000

[[pools.app.users]]
username = "app"
password = "md5f1f5ecae0b1cd9bc5b1c2a5b4e11a4a9"
pool_size = 5
"""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _demo_leftovers(before: frozenset = frozenset()) -> list:
    """Demo cluster directories in the temp dir, and processes running in them, that are
    not in C{before} (what L{_demo_leftovers} returned earlier)."""
    tmp = tempfile.gettempdir()
    dirs = {os.path.join(tmp, n) for n in os.listdir(tmp) if n.startswith("pgdoorman-pg-")}
    found = sorted(dirs - before)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        found += [f"process {pid} in {d}" for d in dirs - before if d in cmdline]
    return found


def run_pgdoorman(*args: str) -> subprocess.CompletedProcess:
    """Run C{python -m pgdoorman ARGS} from this source tree; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "pgdoorman", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )


class CheckConfigTests(TestCase):
    """C{pgdoorman -t} and C{twistd pgdoorman --config} on good and bad files."""

    def write(self, text: str) -> str:
        """Write a config file and return its path."""
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_contrib_config_is_ok(self):
        """The shipped example passes the check, with PgDoorman's two success lines."""
        result = run_pgdoorman("-t", CONTRIB)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("syntax is ok", result.stdout)
        self.assertIn("test is successful", result.stdout)

    def assertRejected(self, text: str, key: str, problem: str):
        """The check fails with exit 1 and C{file: key: problem} on stderr."""
        path = self.write(text)
        result = run_pgdoorman("-t", path)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{path}: {key}: {problem}", result.stderr)

    def test_wrong_type(self):
        """A string where an integer belongs."""
        self.assertRejected(
            GOOD.replace("pool_size = 5", 'pool_size = "five"'),
            "pools.app.users[0].pool_size",
            "expected an integer, got 'five'",
        )

    def test_missing_required_key(self):
        """admin_password is required."""
        self.assertRejected(
            GOOD.replace('admin_password = "secret"\n', ""),
            "general.admin_password",
            "required key is missing",
        )

    def test_unknown_pool_mode(self):
        """Statement mode does not exist."""
        self.assertRejected(
            GOOD.replace('pool_mode = "session"', 'pool_mode = "statement"'),
            "pools.app.pool_mode",
            "expected one of 'transaction', 'session', got 'statement'",
        )

    def test_tls_files_are_checked(self):
        """C{tls_mode = "require"} with a certificate file that is not there fails the check,
        naming the key and the file."""
        self.assertRejected(
            GOOD.replace(
                "port = 6432\n",
                'port = 6432\ntls_mode = "require"\ntls_certificate = "c"\ntls_private_key = "k"\n',
            ),
            "general.tls_certificate",
            "cannot read",
        )

    def test_pg_hba_lines_are_checked(self):
        """C{-t} reads the pg_hba rules: good ones pass, a bad line fails naming the rules
        file and the line."""
        rules = os.path.abspath(self.mktemp())
        with open(rules, "w") as f:
            f.write("host all all 0.0.0.0/0 md5\n")
        good = GOOD.replace("port = 6432\n", f'port = 6432\npg_hba = {{ path = "{rules}" }}\n')
        result = run_pgdoorman("-t", self.write(good))
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(rules, "a") as f:
            f.write("host all all 10.0.0.1 md5\n")
        self.assertRejected(good, "general.pg_hba.path", f'{rules}: line 2: invalid IP mask "md5"')

    def test_tls_allow_warns_and_inactive_keys_are_listed(self):
        """C{tls_mode = "allow"} without a certificate passes with a warning; keys nothing
        acts on are listed."""
        path = self.write(
            GOOD.replace("port = 6432\n", 'port = 6432\ntls_mode = "allow"\nworker_threads = 8\n')
        )
        result = run_pgdoorman("-t", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"Warning: {path}: general.tls_mode: 'allow' without tls_certificate", result.stderr)
        self.assertIn(
            f"Not acted on: {path}: general.worker_threads: accepted and ignored (PgDoorman's Rust runtime)",
            result.stderr,
        )

    def test_bad_duration(self):
        """A duration with an unknown unit."""
        self.assertRejected(
            GOOD.replace("port = 6432\n", 'port = 6432\nquery_wait_timeout = "5 parsecs"\n'),
            "general.query_wait_timeout",
            "expected a duration",
        )

    def test_twistd_refuses_bad_config(self):
        """twistd stops before starting anything, with the same message and a non-zero exit."""
        path = self.write(GOOD.replace("pool_size = 5", "pool_size = -1"))
        result = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "twistd"),
                "-n",
                "--pidfile=",
                "pgdoorman",
                "--config",
                path,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            check=False,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(f"{path}: pools.app.users[0].pool_size:", result.stdout + result.stderr)

    def test_twistd_logs_what_is_not_acted_on_at_start(self):
        """A running pgdoorman logs the tls_mode warning and each key it does not act on,
        and one line with its version, listeners and pools."""
        from pgdoorman.testing.cluster import free_port

        text = GOOD.replace(
            "port = 6432\n", f'port = {free_port()}\ntls_mode = "allow"\nworker_threads = 8\n'
        )
        path = self.write(text)
        proc = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "twistd"),
                "-n",
                "--pidfile=",
                "pgdoorman",
                "--config",
                path,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "serving; listening" in line:
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        log = "".join(seen)
        # One line says what runs.
        self.assertIn(f"pgdoorman {pgdoorman.__version__} serving; listening: listener 127.0.0.1:", log)
        self.assertIn("pools: app: app (session, 5)", log)
        self.assertIn(f"{path}: general.tls_mode: 'allow' without tls_certificate", log)
        self.assertIn(f"{path}: general.worker_threads: accepted and ignored (PgDoorman's Rust runtime)", log)

    def test_ten_broken_configs(self):
        """Ten ways to break a config: each is one line naming the file and what is wrong,
        and exit 1."""
        broken = [
            (GOOD.replace("pool_size = 5", 'pool_size = "five"'), "pools.app.users[0].pool_size"),
            (GOOD.replace('admin_password = "secret"\n', ""), "general.admin_password"),
            (GOOD.replace('pool_mode = "session"', 'pool_mode = "statement"'), "pools.app.pool_mode"),
            (GOOD.replace("connect_timeout = 2000", 'connect_timeout = "2 fortnights"'), "connect_timeout"),
            (GOOD.replace("port = 6432", "port = 70000"), "general.port"),
            (GOOD.replace("[general]", "[general]\npatroni_api_urls = []"), "general.patroni_api_urls"),
            (GOOD.replace("[general]", '[general]\ntls_certificate = "/nonexistent.pem"'), "tls"),
            (
                GOOD.replace("[general]", '[general]\npg_hba.content = "host all all 1.2.3.4/99 md5"'),
                "pg_hba",
            ),
            (GOOD.replace("pool_size = 5", "pool_size = 0"), "pools.app.users[0].pool_size"),
            (GOOD + "\n[general\n", "(syntax)"),
        ]
        for text, where in broken:
            path = self.write(text)
            result = run_pgdoorman("-t", path)
            self.assertEqual(result.returncode, 1, (where, result.stdout))
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, (where, result.stderr))
            self.assertIn(path, lines[0])
            self.assertIn(where, lines[0])

    def test_run_with_a_bad_file_is_one_line(self):
        """C{pgdoorman FILE} with a bad or missing file: one line naming the problem, exit
        1, no usage text."""
        bad = self.write("[general]\nport = 'x'\n")
        for path, words in ((bad, "general.port"), (bad + ".missing", "cannot read")):
            result = run_pgdoorman(path)
            self.assertEqual(result.returncode, 1)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn(words, result.stderr)
            self.assertNotIn("Usage", result.stderr + result.stdout)

    def test_version_and_help(self):
        """C{--version} says the version; C{--help} lists the commands."""
        result = run_pgdoorman("--version")
        self.assertEqual(
            (result.returncode, result.stdout.strip()), (0, f"pgdoorman {pgdoorman.__version__}")
        )
        text = run_pgdoorman("--help").stdout
        for command in ("pgdoorman demo", "pgdoorman -t", "twistd pgdoorman"):
            self.assertIn(command, text)


def _listening(port: int = 0):
    """A socket listening on 127.0.0.1:C{port}, or C{None} if that port is taken already."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


class DemoTests(TestCase):
    """C{pgdoorman demo}: a throwaway cluster behind the pooler, for people trying it out."""

    def test_taken_port_asked_for(self):
        """C{--port} of a port in use: one line, exit 1, and no PostgreSQL started."""
        taken = _listening()
        self.addCleanup(taken.close)
        before = frozenset(_demo_leftovers())
        result = run_pgdoorman("demo", "--port", str(taken.getsockname()[1]))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("is taken", result.stderr)
        self.assertNotIn("PostgreSQL data in", result.stdout)
        self.assertEqual(_demo_leftovers(before), [])

    def test_demo_prints_a_working_connection_string(self):
        """The demo (6432 taken: on another port, which it says) prints psql commands for
        the pool and the admin console that work; Ctrl-C lets a running query finish, then
        stops and removes the cluster."""
        taken = _listening(6432)
        if taken is not None:
            self.addCleanup(taken.close)
        before = frozenset(_demo_leftovers())
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgdoorman", "demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        url = None
        seen = []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"psql '(postgresql://[^']+)'", line)
            if found:
                url = found.group(1)
        self.assertIsNotNone(url, "".join(seen))
        result = subprocess.run(
            ["psql", "-X", "-A", "-t", "-w", url, "-c", "select 6 * 7", "-c", "select current_user"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        self.assertEqual((result.returncode, result.stdout.split()), (0, ["42", "demo"]), result.stderr)
        self.assertIn("port 6432 is taken; using a free port instead", "".join(seen))
        admin = None
        while admin is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            found = re.search(r"psql '(postgresql://admin:[^']+)'", line)
            if found:
                admin = found.group(1)
        result = subprocess.run(
            ["psql", "-X", "-A", "-t", "-w", admin, "-c", "SHOW VERSION"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        # Ctrl-C while a query runs: it finishes, then the demo stops.
        running = subprocess.Popen(
            ["psql", "-X", "-A", "-t", "-w", url, "-c", "select pg_sleep(1.5), 'finished'"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while True:
            clients = subprocess.run(
                ["psql", "-X", "-A", "-t", "-w", admin, "-c", "SHOW CLIENTS"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
            # The demo user's client, linked to a server (the admin's own is active too).
            if any(
                line.split("|")[1:3] == ["demo", "demo"] and "|active|" in line
                for line in clients.splitlines()
            ):
                break
            self.assertLess(time.monotonic(), deadline, clients)
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
        self.assertEqual((running.returncode, out.strip()), (0, "|finished"), err)
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            self.fail("the demo did not stop on SIGINT:\n" + "".join(seen) + proc.communicate()[0])
        self.assertEqual(proc.returncode, 0, output)
        datadir = re.search(r"PostgreSQL data in ([^)\s]+)", "".join(seen)).group(1)
        self.assertFalse(os.path.exists(datadir))
        # Neither its cluster's directory nor any of its PostgreSQL processes is left.
        self.assertEqual(_demo_leftovers(before), [])
