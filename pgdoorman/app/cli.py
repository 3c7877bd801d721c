# -*- test-case-name: tests.test_cli -*-
"""The C{pgdoorman} command: run, check a config (C{-t}), or start a throwaway demo."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from .. import __version__

__all__ = ["main"]


def _check(path: str) -> int:
    from ..config import ConfigError, load

    try:
        config = load(path)
    except (ConfigError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    for inactive in config.inactive:
        print(f"Not acted on: {inactive}", file=sys.stderr)
    print(f"pgdoorman: the configuration file {path} syntax is ok")
    print(f"pgdoorman: configuration file {path} test is successful")
    return 0


def _run(path: str) -> int:
    from twisted.scripts.twistd import run

    from ..config import ConfigError, load

    # Checked here too, so that a bad file is one line, not under twistd's usage text.
    try:
        load(path)
    except ConfigError as e:
        print(f"pgdoorman: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"pgdoorman: {path}: cannot read config: {e.strerror}", file=sys.stderr)
        return 1

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "pgdoorman", "--config", path]
    run()
    return 0


#: The port the demo listens on unless told otherwise (PgBouncer's and PgDoorman's).
DEMO_PORT = 6432


def _port_free(port: int) -> bool:
    """Whether 127.0.0.1:C{port} can be listened on now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _demo(port: "int | None") -> int:
    """The demo: a throwaway cluster behind a pooler on C{port} (C{None}: 6432, or a free
    port if that is taken; 0: any free port). The cluster is deleted on every way out."""
    from ..testing.cluster import ClusterError, PostgresCluster, free_port

    if port is None:
        port = DEMO_PORT
        if not _port_free(port):
            print(f"pgdoorman demo: port {port} is taken; using a free port instead", flush=True)
            port = 0
    elif port and not _port_free(port):
        print(f"pgdoorman demo: port {port} is taken; pass another --port (0: any free one)", file=sys.stderr)
        return 1
    if not port:
        port = free_port()
    try:
        cluster = PostgresCluster()
    except ClusterError as e:
        print(f"pgdoorman demo: {e}", file=sys.stderr)
        return 1
    print(
        f"pgdoorman demo: starting a throwaway PostgreSQL cluster (PostgreSQL data in {cluster.basedir})",
        flush=True,
    )
    try:
        return _serve_demo(cluster, port)
    except Exception as e:
        print(f"pgdoorman demo: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.destroy()


def _serve_demo(cluster, port: int) -> int:
    from .tap import install_default_reactor

    install_default_reactor()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from ..config import demo_config
    from .service import make_service

    cluster.start()
    cluster.create_user("demo", "demo", method="scram-sha-256")
    cluster.create_database("demo", owner="demo")
    cluster.set_hba("scram-sha-256")
    config = demo_config(
        server_host=cluster.host,
        server_port=cluster.port,
        database="demo",
        user="demo",
        password="demo",
        listen_port=port,
    )
    service = make_service(config, reactor)
    service.startService()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    # Ctrl-C drains as SIGINT does in the real service: running queries finish first.
    # (Set whatever the shell did: it starts background jobs with SIGINT ignored.)
    reactor.addSystemEventTrigger("after", "startup", service.lifecycle.install_signal_handlers)
    print(
        f"pgdoorman demo: PostgreSQL {cluster.port} <- pgdoorman 127.0.0.1:{port}\n"
        f"Connect with:\n\n    psql 'postgresql://demo:demo@127.0.0.1:{port}/demo'\n\n"
        f"The admin console (SHOW POOLS, SHOW HELP):\n\n"
        f"    psql 'postgresql://admin:admin@127.0.0.1:{port}/pgdoorman'\n\n"
        "Press Ctrl-C to stop (the cluster is deleted).",
        flush=True,
    )
    reactor.run()
    return 0


def _generate(argv: list) -> int:
    """C{pgdoorman generate}: a config for a running PostgreSQL (L{pgdoorman.app.generate})."""
    from .generate import GenerateError, introspect, reference, render

    parser = argparse.ArgumentParser(
        prog="pgdoorman generate",
        description="Write a pg_doorman.toml for a running PostgreSQL: a pool per database, "
        "every login role with its secret (passthrough). Needs a superuser.",
    )
    env = os.environ.get
    parser.add_argument("--host", default=env("PGHOST", "localhost"), help="host or unix socket directory")
    parser.add_argument("-p", "--port", type=int, default=int(env("PGPORT", "5432")))
    parser.add_argument("-u", "--user", default=env("PGUSER", "postgres"))
    parser.add_argument("--password", default=env("PGPASSWORD"))
    parser.add_argument("-d", "--database", default=env("PGDATABASE", "postgres"))
    parser.add_argument("--ssl", action="store_true", help="TLS to PostgreSQL (server_tls_mode require)")
    parser.add_argument("--pool-size", type=int, default=40)
    parser.add_argument("-s", "--session-pool-mode", action="store_true", help="session pool mode")
    parser.add_argument("-o", "--output", help="file to write (default: standard output)")
    parser.add_argument("--server-host", help="server_host in the config (default: --host)")
    parser.add_argument("--no-comments", action="store_true")
    parser.add_argument(
        "--reference", action="store_true", help="every key with its default, without asking PostgreSQL"
    )
    parser.add_argument(
        "-f", "--format", choices=("toml", "yaml"), help="default: from the -o file's extension, else toml"
    )
    args = parser.parse_args(argv)
    yaml = args.format == "yaml" or (
        args.format is None and (args.output or "").lower().endswith((".yaml", ".yml"))
    )
    if args.reference and yaml:
        print("pgdoorman generate: --reference is written in TOML only", file=sys.stderr)
        return 1
    if args.reference:
        return _write(reference(), args.output, "generate")
    try:
        cluster = introspect(args.host, args.port, args.user, args.password, args.database, args.ssl)
    except GenerateError as e:
        print(f"pgdoorman generate: {e}", file=sys.stderr)
        return 1
    text = render(
        cluster,
        server_host=args.server_host or args.host,
        server_port=args.port,
        pool_size=args.pool_size,
        session=args.session_pool_mode,
        tls=args.ssl,
        comments=not args.no_comments,
        yaml=yaml,
    )
    return _write(text, args.output, "generate")


def _import_pgbouncer(argv: list) -> int:
    """C{pgdoorman import-pgbouncer}: a config from PgBouncer's (L{pgdoorman.app.pgbouncer})."""
    from .pgbouncer import PgBouncerError, convert

    parser = argparse.ArgumentParser(
        prog="pgdoorman import-pgbouncer",
        description="Write a pg_doorman.toml from a PgBouncer configuration (and its auth_file).",
    )
    parser.add_argument("ini", help="pgbouncer.ini")
    parser.add_argument("userlist", nargs="?", help="its auth_file (default: the one pgbouncer.ini names)")
    parser.add_argument("-o", "--output", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    try:
        text = convert(args.ini, args.userlist)
    except PgBouncerError as e:
        print(f"pgdoorman import-pgbouncer: {e}", file=sys.stderr)
        return 1
    return _write(text, args.output, "import-pgbouncer")


def _write(text: str, output: "str | None", command: str) -> int:
    """Write a generated config to C{output} (owner-only: it holds secrets) or stdout."""
    if output is None:
        sys.stdout.write(text)
        return 0
    with open(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    print(f"pgdoorman {command}: wrote {output}")
    return 0


def main(argv: "list[str] | None" = None) -> int:
    """Entry point of the C{pgdoorman} console script."""
    parser = argparse.ArgumentParser(
        prog="pgdoorman",
        description="PostgreSQL connection pooler. Without a command, runs in the foreground "
        "like 'twistd -n pgdoorman --config CONFIG_FILE'.",
        epilog="commands:\n"
        "  pgdoorman [CONFIG_FILE]      run in the foreground\n"
        "  pgdoorman -t [CONFIG_FILE]   check a config file and exit\n"
        "  pgdoorman demo [--port N]    a throwaway PostgreSQL with pgdoorman in front of it\n"
        "  pgdoorman generate [...]     a config for a running PostgreSQL (generate --help)\n"
        "  pgdoorman import-pgbouncer pgbouncer.ini [userlist.txt]   a config from PgBouncer's\n"
        "  twistd pgdoorman --config F  under twistd (daemon, pid file, logging options)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pgdoorman {__version__}")
    parser.add_argument(
        "config_file",
        nargs="?",
        default=os.environ.get("CONFIG_FILE", "pg_doorman.toml"),
        help="config file (default: $CONFIG_FILE or pg_doorman.toml)",
    )
    parser.add_argument("-t", "--test-config", action="store_true", help="check the config and exit")
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["demo"]:
        demo = argparse.ArgumentParser(
            prog="pgdoorman demo",
            description="Start a throwaway PostgreSQL cluster and pgdoorman in front of it.",
        )
        demo.add_argument(
            "--port", type=int, default=None, help="pooler port (default 6432, a free one if taken; 0: any)"
        )
        return _demo(demo.parse_args(args_list[1:]).port)
    if args_list[:1] == ["generate"]:
        return _generate(args_list[1:])
    if args_list[:1] == ["import-pgbouncer"]:
        return _import_pgbouncer(args_list[1:])
    args = parser.parse_args(args_list)
    if args.test_config:
        return _check(args.config_file)
    return _run(args.config_file)
