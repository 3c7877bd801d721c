# -*- test-case-name: tests.test_cli -*-
"""The C{pgdoorman} command: run, check a config (C{-t}), or start a throwaway demo."""

from __future__ import annotations

import argparse
import os
import signal
import sys

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

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "pgdoorman", "--config", path]
    run()
    return 0


def _demo(port: int) -> int:
    from .tap import install_default_reactor

    install_default_reactor()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from ..config import demo_config
    from ..testing.cluster import PostgresCluster, free_port
    from .service import make_service

    cluster = PostgresCluster()
    print(
        f"pgdoorman demo: starting a throwaway PostgreSQL cluster (PostgreSQL data in {cluster.basedir})",
        flush=True,
    )
    try:
        cluster.start()
        cluster.create_user("demo", "demo", method="scram-sha-256")
        cluster.create_database("demo", owner="demo")
        cluster.set_hba("scram-sha-256")
    except Exception:
        cluster.destroy()
        raise
    reactor.addSystemEventTrigger("after", "shutdown", cluster.destroy)
    if not port:
        port = free_port()
    config = demo_config(
        server_host=cluster.host,
        server_port=cluster.port,
        database="demo",
        user="demo",
        password="demo",
        listen_port=port,
    )
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = make_service(config, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    # A shell starts background jobs with SIGINT ignored, and Twisted only takes over a
    # SIGINT that Python handles: the demo promises Ctrl-C stops it, so it always does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        f"pgdoorman demo: PostgreSQL {cluster.port} <- pgdoorman 127.0.0.1:{port}\n"
        f"Connect with:\n\n    psql 'postgresql://demo:demo@127.0.0.1:{port}/demo'\n\n"
        "Press Ctrl-C to stop (the cluster is deleted).",
        flush=True,
    )
    reactor.run()
    return 0


def main(argv: "list[str] | None" = None) -> int:
    """Entry point of the C{pgdoorman} console script."""
    parser = argparse.ArgumentParser(
        prog="pgdoorman",
        description="PostgreSQL connection pooler. Without a command, runs in the foreground "
        "like 'twistd -n pgdoorman --config CONFIG_FILE'.",
    )
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
        demo.add_argument("--port", type=int, default=6432, help="pooler port (0: any free port)")
        return _demo(demo.parse_args(args_list[1:]).port)
    args = parser.parse_args(args_list)
    if args.test_config:
        return _check(args.config_file)
    return _run(args.config_file)
