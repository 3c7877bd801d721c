"""The pgdoorman command and the twistd plugin as a user runs them: checking configs, refusing
bad ones with C{file: key path: problem}, and the demo."""

import os
import re
import signal
import subprocess
import sys
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


class CheckConfigTests(TestCase):
    """C{pgdoorman -t} and C{twistd pgdoorman --config} on good and bad files."""

    def run_pgdoorman(self, *args: str) -> subprocess.CompletedProcess:
        """Run C{python -m pgdoorman ARGS}."""
        return subprocess.run(
            [sys.executable, "-m", "pgdoorman", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            check=False,
        )

    def write(self, text: str) -> str:
        """Write a config file and return its path."""
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_contrib_config_is_ok(self):
        """The shipped example passes the check, with PgDoorman's two success lines."""
        result = self.run_pgdoorman("-t", CONTRIB)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("syntax is ok", result.stdout)
        self.assertIn("test is successful", result.stdout)

    def assertRejected(self, text: str, key: str, problem: str):
        """The check fails with exit 1 and C{file: key: problem} on stderr."""
        path = self.write(text)
        result = self.run_pgdoorman("-t", path)
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
            GOOD.replace("port = 6432\n", 'port = 6432\ntls_mode = "require"\ntls_certificate = "c"\ntls_private_key = "k"\n'),
            "general.tls_certificate",
            "cannot read",
        )

    def test_pg_hba_is_refused(self):
        """C{pg_hba} fails the check while access rules are not enforced."""
        self.assertRejected(
            GOOD.replace("port = 6432\n", 'port = 6432\npg_hba = "host all all 0.0.0.0/0 md5"\n'),
            "general.pg_hba",
            "client access rules are not enforced yet",
        )

    def test_tls_allow_warns_and_inactive_keys_are_listed(self):
        """C{tls_mode = "allow"} without a certificate passes with a warning; keys nothing
        acts on are listed."""
        path = self.write(GOOD.replace("port = 6432\n", 'port = 6432\ntls_mode = "allow"\nworker_threads = 8\n'))
        result = self.run_pgdoorman("-t", path)
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
        """A running pgdoorman logs the tls_mode warning and each key it does not act on."""
        from pgdoorman.testing.cluster import free_port

        text = GOOD.replace("port = 6432\n", f'port = {free_port()}\ntls_mode = "allow"\nworker_threads = 8\n')
        path = self.write(text)
        proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "pgdoorman", "--config", path],
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
            if "starting on" in line:
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        log = "".join(seen)
        self.assertIn(f"{path}: general.tls_mode: 'allow' without tls_certificate", log)
        self.assertIn(f"{path}: general.worker_threads: accepted and ignored (PgDoorman's Rust runtime)", log)


class DemoTests(TestCase):
    """C{pgdoorman demo}: a throwaway cluster behind the pooler, for people trying it out."""

    def test_demo_prints_a_working_connection_string(self):
        """The demo prints a psql command that runs queries, and Ctrl-C removes the cluster."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgdoorman", "demo", "--port", "0"],
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
        proc.send_signal(signal.SIGINT)
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            self.fail("the demo did not stop on SIGINT:\n" + "".join(seen) + proc.communicate()[0])
        self.assertEqual(proc.returncode, 0, output)
        datadir = re.search(r"PostgreSQL data in ([^)\s]+)", "".join(seen)).group(1)
        self.assertFalse(os.path.exists(datadir))
