"""The floor below the floor: a 1:1 port-forward in plain CPython, without Twisted.

One epoll loop, non-blocking sockets, each chunk sent on at once. No pooling, framing,
reactor or protocol objects: what remains is the interpreter's cost of one recv and one send
per chunk plus the kernel's loopback work. Its CPU per transaction in the harness is the
lowest any CPython pooler could reach; `forward.py` adds Twisted on top of it.

    python bench/rawforward.py --listen 6435 --to 127.0.0.1:55432
"""

import argparse
import select
import socket


def _send(sock: socket.socket, data: bytes) -> None:
    """Send all of C{data}, waiting for room when the peer is slow (rare in this benchmark)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            select.select([], [sock], [], 10)


def _open(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> None:
    """Forward until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=6435, help="port on 127.0.0.1 (default 6435)")
    parser.add_argument("--to", default="127.0.0.1:55432", help="PostgreSQL host:port")
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", args.listen), backlog=1000)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    socks: dict = {}
    peers: dict = {}
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                client, _ = listener.accept()
                server = socket.create_connection((host, int(port)))
                for sock in (client, server):
                    _open(sock)
                    socks[sock.fileno()] = sock
                    poller.register(sock.fileno(), select.EPOLLIN)
                peers[client.fileno()] = server
                peers[server.fileno()] = client
                continue
            sock = socks.get(fd)
            if sock is None:
                continue
            try:
                data = sock.recv(65536)
                if data:
                    _send(peers[fd], data)
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            peer = peers.pop(fd)
            peers.pop(peer.fileno(), None)
            for each in (sock, peer):
                socks.pop(each.fileno(), None)
                poller.unregister(each.fileno())
                each.close()


if __name__ == "__main__":
    main()
