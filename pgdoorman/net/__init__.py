"""The Twisted edges (layer 3): the Protocols for clients (L{frontend}) and servers
(L{backend}), the eager write, socket options, cancel forwarding and the reactor. They move
bytes; what the bytes mean is decided in L{pgdoorman.session} and L{pgdoorman.pool}."""
