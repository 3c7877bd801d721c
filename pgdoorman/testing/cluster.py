# -*- test-case-name: tests.test_cluster -*-
"""A throwaway local PostgreSQL cluster for end-to-end tests and C{pgdoorman demo}.

Stdlib only and synchronous: it shells out to C{initdb}, C{pg_ctl} and C{psql}.
PostgreSQL refuses to run as root, so when we are root the server-side tools run
as the C{postgres} OS user through C{runuser} and every file we create for the
server is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from ..protocol.sql import quote_ident, quote_literal

__all__ = [
    "ClusterError",
    "PostgresCluster",
    "find_bindir",
    "free_port",
    "quote_ident",
    "quote_literal",
]

_DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"
_INSTALL_HINT = (
    "PostgreSQL server binaries not found; install them "
    "(Debian/Ubuntu: apt-get install -y postgresql) or set PG_BINDIR"
)
_SERVER_USER = "postgres"
_RELOAD_MARKER = b"received SIGHUP, reloading configuration files"

_INITDB_TIMEOUT = 120
# Longer than the -t 60 given to pg_ctl so pg_ctl reports its own failure first.
_PG_CTL_TIMEOUT = 90
_PSQL_TIMEOUT = 60
_RELOAD_TIMEOUT = 10.0
_LOG_TAIL_BYTES = 4000


class ClusterError(Exception):
    """A cluster operation failed; the message carries the tool's output or log tail."""


def _conninfo_value(value: object) -> str:
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conf_value(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def find_bindir() -> str:
    """Locate the PostgreSQL server binaries directory.

    Tries C{$PG_BINDIR}, then C{/usr/lib/postgresql/15/bin}, then the newest
    C{/usr/lib/postgresql/*/bin}, then the directory of C{pg_ctl} on C{PATH}.

    @raise ClusterError: none of them has C{pg_ctl}; the message says how to install it.
    """

    def usable(directory: str) -> bool:
        return os.access(os.path.join(directory, "pg_ctl"), os.X_OK)

    override = os.environ.get("PG_BINDIR")
    if override:
        if usable(override):
            return override
        raise ClusterError(f"PG_BINDIR={override!r} has no pg_ctl. {_INSTALL_HINT}")
    if usable(_DEFAULT_BINDIR):
        return _DEFAULT_BINDIR

    def version_key(directory: str) -> tuple[int, ...]:
        version = os.path.basename(os.path.dirname(directory))
        return tuple(int(part) for part in version.split(".") if part.isdigit())

    candidates = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if usable(d)]
    if candidates:
        return max(candidates, key=version_key)
    on_path = shutil.which("pg_ctl")
    if on_path:
        # Follow symlinks (e.g. /usr/local/bin/pg_ctl) to the dir that also has psql.
        return os.path.dirname(os.path.realpath(on_path))
    raise ClusterError(_INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on C{host} that was free a moment ago."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _client_env() -> dict[str, str]:
    # Stray PG* variables (PGHOST, PGPASSWORD, PGSERVICE...) would redirect or
    # authenticate our own tool invocations behind our back.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = os.devnull
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


class PostgresCluster:
    """A private PostgreSQL cluster under one base directory, listening on 127.0.0.1.

    The base directory holds C{data/} (the cluster), C{sock/} (the unix socket the
    helper itself uses to run SQL as superuser) and C{postgres.log}.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        basedir: str | None = None,
        *,
        port: int | None = None,
        bindir: str | None = None,
        superuser: str = "postgres",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = bindir or find_bindir()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                entry = pwd.getpwnam(_SERVER_USER)
            except KeyError:
                raise ClusterError(
                    f"running as root needs an OS user {_SERVER_USER!r} to run the server as. {_INSTALL_HINT}"
                ) from None
            self._owner: tuple[int, int] | None = (entry.pw_uid, entry.pw_gid)
        else:
            self._owner = None
        if basedir is None:
            basedir = tempfile.mkdtemp(prefix="pgdoorman-pg-")
            self._owns_basedir = True
        else:
            basedir = os.path.abspath(basedir)
            self._owns_basedir = not os.path.exists(basedir)
            os.makedirs(basedir, mode=0o700, exist_ok=True)
        self.basedir = basedir
        self.datadir = os.path.join(basedir, "data")
        self.socket_dir = os.path.join(basedir, "sock")
        self.logfile = os.path.join(basedir, "postgres.log")
        self.port = port if port is not None else free_port(self.host)
        self.superuser = superuser
        self.settings = dict(settings or {})
        # initdb -A trust leaves local connections trusted; set_hba may take that away.
        self._local_trust = True
        os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
        self._give_to_server(self.basedir)
        self._give_to_server(self.socket_dir)

    # -- plumbing ---------------------------------------------------------

    def _give_to_server(self, path: str) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner)

    def _write_server_file(self, path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        self._give_to_server(path)

    def _server_run(
        self, argv: list[str], timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if self._as_root:
            argv = ["runuser", "-u", _SERVER_USER, "--", *argv]
        try:
            result = subprocess.run(
                argv,
                check=False,
                # The caller's cwd may be unreadable by the postgres user.
                cwd=self.basedir,
                env=_client_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{' '.join(argv)} timed out after {timeout}s{self._log_tail()}") from e
        if check and result.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def _log_tail(self) -> str:
        try:
            with open(self.logfile, "rb") as f:
                f.seek(max(0, self._log_size() - _LOG_TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return f"\n--- tail of {self.logfile} ---\n{tail}"

    def _initialised(self) -> bool:
        return os.path.exists(os.path.join(self.datadir, "PG_VERSION"))

    def _running(self) -> bool:
        if not self._initialised():
            return False
        status = self._server_run(["pg_ctl", "status", "-D", self.datadir], _PG_CTL_TIMEOUT, check=False)
        return status.returncode == 0

    def _initdb(self) -> None:
        self._server_run(
            [
                "initdb",
                "-D",
                self.datadir,
                "-U",
                self.superuser,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                # A throwaway cluster does not need its files fsynced.
                "--no-sync",
                "--no-instructions",
            ],
            _INITDB_TIMEOUT,
        )
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("\ninclude 'pgdoorman.conf'\n")

    def _write_settings(self) -> None:
        conf = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": self.socket_dir,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **self.settings,
        }
        lines = [f"{name} = {_conf_value(value)}\n" for name, value in conf.items()]
        self._write_server_file(
            os.path.join(self.datadir, "pgdoorman.conf"),
            "# Written by pgdoorman.testing.cluster on every start; edits are lost.\n" + "".join(lines),
        )

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Initialise the cluster if needed, write its settings and start it; no-op if running."""
        if not self._initialised():
            self._initdb()
        elif self._running():
            return
        self._write_settings()
        self._server_run(
            ["pg_ctl", "start", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60"],
            _PG_CTL_TIMEOUT,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server with C{pg_ctl stop -m mode} and wait; no-op if not running."""
        if not self._running():
            return
        result = self._server_run(
            ["pg_ctl", "stop", "-D", self.datadir, "-m", mode, "-w", "-t", "60"],
            _PG_CTL_TIMEOUT,
            check=False,
        )
        # A concurrent shutdown makes pg_ctl fail even though the goal is met.
        if result.returncode != 0 and self._running():
            raise ClusterError(
                f"pg_ctl stop failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )

    def restart(self) -> None:
        """Stop (if running) and start again, re-applying settings."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete the base directory if this object created it."""
        self.stop()
        if self._owns_basedir:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- configuration ----------------------------------------------------

    def make_standby(self) -> "PostgresCluster":
        """A streaming standby of this running cluster, copied with C{pg_basebackup -R}
        over the unix socket (so this cluster's pg_hba must let the superuser replicate
        there), on its own port; not started yet."""
        standby = PostgresCluster(bindir=self.bindir, superuser=self.superuser, settings=dict(self.settings))
        try:
            self._server_run(
                [
                    "pg_basebackup",
                    "-D",
                    standby.datadir,
                    "-h",
                    self.socket_dir,
                    "-p",
                    str(self.port),
                    "-U",
                    self.superuser,
                    "-R",
                    "--checkpoint=fast",
                    "--no-sync",
                ],
                _INITDB_TIMEOUT,
            )
        except BaseException:
            standby.destroy()
            raise
        return standby

    def set_hba(
        self,
        method: str,
        *,
        users: str = "all",
        databases: str = "all",
        local_trust: bool = True,
        per_user: "dict[str, str] | None" = None,
        lines: tuple = (),
    ) -> None:
        """Rewrite pg_hba.conf so TCP logins on 127.0.0.1/::1 use C{method}, then reload.

        C{per_user} maps role names to methods that take precedence for those roles;
        C{lines} (raw pg_hba.conf lines, such as C{hostssl} rules) come before all of them.

        With C{local_trust} the unix socket stays C{trust} for everyone, so L{sql}
        keeps working whatever C{method} is; without it the socket uses C{method}
        for the same users and databases too. Returns once the postmaster has
        loaded the new file, so the next connection sees it.

        @raise ClusterError: the server rejected the new file (e.g. an unknown method).
        """
        local = "local all all trust" if local_trust else f"local {databases} {users} {method}"
        rules = [(quote_ident(user), how) for user, how in (per_user or {}).items()]
        rules.append((users, method))
        hba = f"# Written by pgdoorman.testing.cluster.PostgresCluster.set_hba.\n{local}\n"
        hba += "".join(line + "\n" for line in lines) + "".join(
            f"host {databases} {user} {address} {how}\n"
            for user, how in rules
            for address in ("127.0.0.1/32", "::1/128")
        )
        self.write_hba(hba, local_trust=local_trust)

    def write_hba(self, hba: str, *, local_trust: bool = True) -> None:
        """Make C{hba} the pg_hba.conf and reload, as L{set_hba} does; with C{local_trust}
        the text must keep unix-socket logins of the superuser trusted, so L{sql} works."""
        path = os.path.join(self.datadir, "pg_hba.conf")
        with open(path, encoding="utf-8") as f:
            previous = f.read()
        self._write_server_file(path, hba)
        running = self._running()
        if self._local_trust and running:
            # pg_hba_file_rules parses the file on disk, so a bad file is caught
            # here rather than ignored by the reload and then fatal on restart.
            errors = self.sql(
                "SELECT line_number || ': ' || error FROM pg_hba_file_rules WHERE error IS NOT NULL"
            )
            if errors:
                self._write_server_file(path, previous)
                raise ClusterError(f"invalid pg_hba.conf:\n{errors}\n---\n{hba}")
        self._local_trust = local_trust
        if running:
            self._reload()

    def enable_ssl(self, certificate: str, key: str, ca: "str | None" = None) -> None:
        """Serve TLS with the PEM C{certificate} and C{key} (copied into the data
        directory), checking client certificates against C{ca} where pg_hba.conf asks
        (C{clientcert}), then reload."""
        files = [(certificate, "server.crt"), (key, "server.key")]
        if ca is not None:
            files.append((ca, "root.crt"))
            self.settings["ssl_ca_file"] = "root.crt"
        for source, name in files:
            target = os.path.join(self.datadir, name)
            with open(source, "rb") as f:
                data = f.read()
            with open(target, "wb") as f:
                f.write(data)
            os.chmod(target, 0o600)
            self._give_to_server(target)
        self.settings.update(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
        self._write_settings()
        if self._running():
            self._reload()

    def _reload(self) -> None:
        offset = self._log_size()
        self._server_run(["pg_ctl", "reload", "-D", self.datadir, "-s"], _PG_CTL_TIMEOUT)
        deadline = time.monotonic() + _RELOAD_TIMEOUT
        while True:
            with open(self.logfile, "rb") as f:
                f.seek(offset)
                if _RELOAD_MARKER in f.read():
                    break
            if time.monotonic() > deadline:
                raise ClusterError(f"server did not log a reload{self._log_tail()}")
            time.sleep(0.02)
        # The marker is logged before the files are re-read, and the postmaster
        # accepts no connection until it has finished. Any answered connection
        # attempt, even a refused one, therefore proves the new rules are live,
        # so a caller rewriting the files right away cannot race the reload.
        self._psql("SELECT 1", database="postgres", user=None)

    # -- SQL --------------------------------------------------------------

    def sql(self, query: str, *, database: str = "postgres", user: str | None = None) -> str:
        """Run C{query} with psql over the unix socket and return its unaligned output.

        @param user: role to connect as; defaults to the superuser.
        @raise ClusterError: psql failed; the message carries its stderr.
        """
        result = self._psql(query, database=database, user=user)
        if result.returncode != 0:
            raise ClusterError(f"psql failed (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def _psql(self, query: str, *, database: str, user: str | None) -> subprocess.CompletedProcess[str]:
        argv = [
            os.path.join(self.bindir, "psql"),
            # -w: never prompt for a password on the tty; fail instead.
            "-X",
            "-A",
            "-t",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-U",
            user or self.superuser,
            "-d",
            database,
            "-c",
            query,
        ]
        try:
            return subprocess.run(
                argv,
                check=False,
                env=_client_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_PSQL_TIMEOUT,
            )
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"psql timed out after {_PSQL_TIMEOUT}s: {query}") from e

    def create_user(
        self,
        name: str,
        password: str | None = None,
        *,
        method: str = "scram-sha-256",
        superuser: bool = False,
    ) -> None:
        """Create login role C{name}; C{password} is stored hashed with C{method}.

        @param method: C{password_encryption} to hash with: C{md5} or C{scram-sha-256}.
        """
        statement = f"CREATE ROLE {quote_ident(name)} LOGIN"
        if superuser:
            statement += " SUPERUSER"
        if password is not None:
            statement += f" PASSWORD {quote_literal(password)}"
        self.sql(f"SET password_encryption = {quote_literal(method)}; {statement}")

    def password_hash(self, name: str) -> str:
        """Return the stored password verifier of role C{name} (empty if it has none)."""
        return self.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = {quote_literal(name)}")

    def create_database(self, name: str, owner: str | None = None) -> None:
        """Create database C{name}, owned by C{owner} if given."""
        statement = f"CREATE DATABASE {quote_ident(name)}"
        if owner is not None:
            statement += f" OWNER {quote_ident(owner)}"
        self.sql(statement)

    def dsn(
        self,
        *,
        user: str,
        password: str | None = None,
        database: str = "postgres",
        host: str | None = None,
        port: int | None = None,
    ) -> str:
        """Return a libpq keyword/value connection string, by default for this cluster over TCP."""
        params: dict[str, object] = {
            "host": host or self.host,
            "port": port if port is not None else self.port,
            "user": user,
            "dbname": database,
        }
        if password is not None:
            params["password"] = password
        return " ".join(f"{key}={_conninfo_value(value)}" for key, value in params.items())
