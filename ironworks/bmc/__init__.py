"""Clients of baseboard management controllers, one module per protocol.

Each module is the boundary to one protocol's library or tool: it takes a connection's endpoint,
returns plain values, and translates every third-party error into the ``Bmc*`` classes of
``ironworks.errors``, so nothing above it sees the library underneath.
"""
