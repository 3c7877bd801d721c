"""The sans-IO session core: what a client and a server connection know and decide, with no
transport in sight. The Twisted Protocols of L{pgdoorman.net.frontend} and L{pgdoorman.net.backend}
feed it bytes and events and write what it returns.

This package is layer 1: it imports the codec (L{pgdoorman.protocol}) and attrs, never Twisted.
"""
