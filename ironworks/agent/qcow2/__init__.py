"""Streaming qcow2 -> raw: the image's bytes are decoded in file order, as they arrive over HTTP.

qcow2 (QEMU's ``docs/interop/qcow2.txt``) maps guest clusters to host clusters through two levels of
tables: the header names the L1 table, each L1 entry an L2 table, each L2 entry a data cluster, a
deflate-compressed cluster, or "zeros". The decoder learns the map while the file goes by: once the L1
table has passed it knows where the L2 tables are, once an L2 table has passed it knows where the data
it maps lies, and data whose place is known is written to its guest offset as it arrives. Guest ranges
the tables leave unallocated or mark as zeros are zeroed on the target (``qemu-img convert -n`` does
the same), so the device reads back exactly what ``qemu-img convert -O raw`` would produce.

Bytes that pass before the table that maps them (an L1 table moved to the end of the file by a
resize, an L2 table copied on write after a snapshot) are spilled to a sparse temporary file at their
host offset, so the spill never exceeds the image, and are written out when their table arrives.
Once every L2 table has been read, bytes nothing maps (refcounts, snapshots, freed clusters) are
dropped instead.

Features the decoder leaves to ``qemu-img`` (zstd compression, extended L2 entries, an image marked
corrupt, unknown incompatible features) raise :class:`Unsupported` from the header, before anything
is written. What Ironworks never reads (backing files, external data files, encryption) and malformed
or hostile images raise ImageError. Standard library only: it runs in the ramdisk.

``header`` judges the header, ``decoder`` places the data, ``spill`` keeps what came too early.
"""

from ironworks.agent.qcow2.decoder import Decoder, Target
from ironworks.agent.qcow2.header import MAGIC, Header, Unsupported, header_bytes, parse_header

__all__ = ["MAGIC", "Decoder", "Header", "Target", "Unsupported", "header_bytes", "parse_header"]
