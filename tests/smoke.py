"""Smoke test of the installed package, run by tox's smoke env from outside the source tree.

Starts C{twistd -n pgdoorman --config <contrib config on a free port>}, checks it answers the
PostgreSQL startup phase, stops it with SIGTERM and checks it exits cleanly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if sock.getsockname() != sock.getpeername():
                return sock
            # A port of the ephemeral range, polled before anything listens there,
            # can connect to itself.
            sock.close()
            raise ConnectionRefusedError("connected to itself")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(source_tree: str) -> int:
    """Run the smoke test; return the exit status."""
    import pgdoorman

    installed = os.path.realpath(pgdoorman.__file__)
    if installed.startswith(os.path.join(os.path.realpath(source_tree), "pgdoorman") + os.sep):
        print(f"FAIL: pgdoorman imported from the source tree: {installed}")
        return 1
    port = _free_port()
    with open(os.path.join(source_tree, "contrib", "pg_doorman.toml")) as f:
        text = re.sub(r"(?m)^port = \d+", f"port = {port}", f.read(), count=1)
    workdir = tempfile.mkdtemp(prefix="pgdoorman-smoke-")
    config = os.path.join(workdir, "pg_doorman.toml")
    with open(config, "w") as f:
        f.write(text)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "pgdoorman", "--config", config],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        sock = _connect(port, time.monotonic() + 30)
        with sock:
            sock.sendall(struct.pack("!ii", 8, 80877103))
            if sock.recv(1) != b"N":
                print("FAIL: SSLRequest was not answered with N")
                return 1
            body = struct.pack("!i", 196608) + b"user\x00nobody\x00database\x00nosuchdb\x00\x00"
            sock.sendall(struct.pack("!i", len(body) + 4) + body)
            reply = sock.recv(4096)
            if not reply.startswith(b"E") or b"C3D000\x00" not in reply:
                print(f"FAIL: unexpected reply to an unknown database: {reply!r}")
                return 1
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode("utf-8", "replace")
        shutil.rmtree(workdir, ignore_errors=True)
    # twistd re-raises the signal that stopped it, so that its parent sees why it ended.
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"FAIL: twistd exited with {proc.returncode}:\n{output}")
        return 1
    print(f"smoke: installed twistd plugin served on port {port} and stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
