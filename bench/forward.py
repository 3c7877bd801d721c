"""The floor: a plain 1:1 Twisted port-forward, with pgdoorman's reactor and eager write.

Each client connection gets its own PostgreSQL connection and bytes are copied both ways,
with no pooling, framing or bookkeeping. Its CPU per transaction in the harness is what any
pooler on Twisted starts from; pgdoorman's cost above it is the pooling itself.

    python bench/forward.py --listen 6433 --to 127.0.0.1:55432
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pgdoorman.net.fastwrite import eager_writer  # noqa: E402
from pgdoorman.net.reactor import install  # noqa: E402


def main() -> None:
    """Forward until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=6433, help="port on 127.0.0.1 (default 6433)")
    parser.add_argument("--to", default="127.0.0.1:55432", help="PostgreSQL host:port")
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)
    reactor = install()
    from twisted.internet import protocol

    class Upstream(protocol.Protocol):
        """The PostgreSQL side of one forwarded connection."""

        def __init__(self, downstream) -> None:
            self.downstream = downstream

        def connectionMade(self) -> None:
            """Flush what the client sent meanwhile."""
            self.write = eager_writer(self.transport)
            self.downstream.upstream = self
            for chunk in self.downstream.pending:
                self.write(chunk)

        def dataReceived(self, data: bytes) -> None:
            """Copy to the client."""
            self.downstream.write(data)

        def connectionLost(self, reason=None) -> None:
            """Close the client too."""
            self.downstream.transport.loseConnection()

    class Downstream(protocol.Protocol):
        """The client side of one forwarded connection."""

        def connectionMade(self) -> None:
            """Open the PostgreSQL side."""
            self.pending = []
            self.upstream = None
            self.write = eager_writer(self.transport)
            factory = protocol.ClientFactory()
            factory.buildProtocol = lambda addr: Upstream(self)
            reactor.connectTCP(host, int(port), factory)

        def dataReceived(self, data: bytes) -> None:
            """Copy to PostgreSQL (or keep it until connected)."""
            if self.upstream is None:
                self.pending.append(data)
            else:
                self.upstream.write(data)

        def connectionLost(self, reason=None) -> None:
            """Close the PostgreSQL side too."""
            if self.upstream is not None:
                self.upstream.transport.loseConnection()

    reactor.listenTCP(args.listen, protocol.Factory.forProtocol(Downstream), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
