"""A consistent hash ring: which live conductor owns which node.

Each conductor gets ``replicas`` points on a 64-bit ring (hashes of ``host-i``); a node belongs to
the first point at or after the hash of its UUID. When a conductor joins or leaves, only the nodes
between its points and their predecessors move.
"""

from __future__ import annotations

import bisect
import hashlib


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Maps node UUIDs to conductor hostnames."""

    def __init__(self, hosts: list[str], *, replicas: int = 64) -> None:
        self.hosts = sorted(set(hosts))
        points = sorted((_hash(f"{h}-{i}"), h) for h in self.hosts for i in range(replicas))
        self._keys = [p for p, _ in points]
        self._owners = [h for _, h in points]

    def owner(self, node_uuid: str) -> str | None:
        """The conductor that owns ``node_uuid`` (None when no conductor is alive)."""
        if not self._keys:
            return None
        i = bisect.bisect_left(self._keys, _hash(node_uuid)) % len(self._keys)
        return self._owners[i]
