"""The ``ironworks`` command: server entry points and operator commands."""
