"""Appending kernel parameters to the boot entries of GRUB and isolinux/syslinux configs.

Configs are edited as bytes, line by line: only a boot entry's kernel line changes (or, for an
isolinux label without one, an ``append`` line is added after its ``kernel`` line); every other byte,
line ending and encoding stays as it was. Parameters go before a ``---`` word when the line has one
(the Debian installer passes what follows it to the installed system), else at the end of the line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_GRUB_LINUX = re.compile(rb"^([ \t]*)(linux|linuxefi|linux16)([ \t]+\S.*|)$")
_SEPARATOR = re.compile(rb"(?<=[ \t])---(?=[ \t]|$)")
_WORDS = re.compile(rb"^([ \t]*)(\S+)(.*)$")
#: isolinux ``kernel`` targets that are not Linux kernels: COM32 modules, COMBOOT, boot sectors
_NOT_LINUX = (b".c32", b".com", b".cbt", b".bs", b".bss", b".0", b".bin")


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _split_end(line: bytes) -> tuple[bytes, bytes]:
    """The line without its line ending, and the ending (``\\n``, ``\\r\\n`` or nothing)."""
    body = line.rstrip(b"\r\n")
    return body, line[len(body) :]


def _insert(args: bytes, params: bytes) -> bytes:
    """``args`` (a kernel line's text after the command) with ``params`` before ``---`` or at the end."""
    m = _SEPARATOR.search(args)
    if m:
        return args[: m.start()] + params + b" " + args[m.start() :]
    stripped = args.rstrip(b" \t")
    gap = b" " if stripped else b""
    return stripped + gap + params + args[len(stripped) :]


def encode(params: Sequence[str]) -> bytes:
    """The parameters as one space-separated byte string."""
    return " ".join(params).encode("utf-8")


def grub_has_entry(data: bytes) -> bool:
    """Whether a GRUB config has a ``linux``/``linuxefi``/``linux16`` line."""
    return any(_GRUB_LINUX.match(_split_end(line)[0]) for line in _lines(data))


def grub_append(data: bytes, params: Sequence[str]) -> bytes:
    """``data`` with ``params`` on every ``linux``/``linuxefi``/``linux16`` line (any indentation)."""
    extra = encode(params)
    if not extra:
        return data
    out = []
    for line in _lines(data):
        body, end = _split_end(line)
        m = _GRUB_LINUX.match(body)
        if m:
            indent, cmd, rest = m.groups()
            sep = rest[: len(rest) - len(rest.lstrip(b" \t"))] or b" "
            line = indent + cmd + sep + _insert(rest.lstrip(b" \t"), extra) + end
        out.append(line)
    return b"".join(out)


def _keyword(body: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(indent, lower-cased keyword, keyword as written, rest) of an isolinux line."""
    m = _WORDS.match(body)
    if not m:
        return b"", b"", b"", body
    return m.group(1), m.group(2).lower(), m.group(2), m.group(3)


def _is_linux_kernel(rest: bytes) -> bool:
    target = rest.strip().split(b" ")[0].lower() if rest.strip() else b""
    return bool(target) and not target.endswith(_NOT_LINUX)


def _blocks(lines: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) line ranges of each ``label`` block; a block ends at the next label or menu begin/end."""
    starts = []
    bounds = []
    for i, line in enumerate(lines):
        _, kw, _, rest = _keyword(_split_end(line)[0])
        if kw == b"label":
            starts.append(i)
            bounds.append(i)
        elif kw == b"menu" and rest.strip().lower().split(b" ")[0] in (b"begin", b"end"):
            bounds.append(i)
    bounds.append(len(lines))
    return [(s, min(b for b in bounds if b > s)) for s in starts]


def isolinux_has_entry(data: bytes) -> bool:
    """Whether an isolinux/syslinux config has a label that boots a Linux kernel."""
    lines = _lines(data)
    return any(_label_kernel(lines, s, e) is not None for s, e in _blocks(lines))


def _label_kernel(lines: list[bytes], start: int, end: int) -> int | None:
    for i in range(start + 1, end):
        _, kw, _, rest = _keyword(_split_end(lines[i])[0])
        if kw in (b"kernel", b"linux") and _is_linux_kernel(rest):
            return i
    return None


def isolinux_global_append(data: bytes) -> bytes | None:
    """The arguments of the ``append`` line before the first label (labels without their own inherit it)."""
    for line in _lines(data):
        _, kw, _, rest = _keyword(_split_end(line)[0])
        if kw == b"label":
            return None
        if kw == b"append":
            return rest.strip(b" \t")
    return None


def isolinux_append(data: bytes, params: Sequence[str], *, inherited: bytes | None = None) -> bytes:
    """``data`` with ``params`` on the ``append`` line of every label that boots a Linux kernel.

    A label without an ``append`` line inherits the global one (before the first label; in this file,
    else ``inherited`` from the including file): if this file has a global ``append``, it gets the
    parameters and such labels keep inheriting it; otherwise they get an ``append`` line of their
    own holding ``inherited``'s arguments and the parameters. ``append -`` (no arguments) becomes the
    parameters.
    """
    extra = encode(params)
    if not extra:
        return data
    lines = _lines(data)
    own_global = isolinux_global_append(data) is not None
    edits: dict[int, bytes] = {}
    inserts: dict[int, bytes] = {}
    blocks = _blocks(lines)
    first_label = blocks[0][0] if blocks else len(lines)
    for i in range(first_label):
        body, end = _split_end(lines[i])
        indent, kw, word, rest = _keyword(body)
        if kw == b"append":
            edits[i] = _append_line(indent, word, rest, extra, end)
            break
    for start, stop in blocks:
        kernel = _label_kernel(lines, start, stop)
        if kernel is None:
            continue
        appended = False
        for i in range(start + 1, stop):
            body, end = _split_end(lines[i])
            indent, kw, word, rest = _keyword(body)
            if kw == b"append":
                edits[i] = _append_line(indent, word, rest, extra, end)
                appended = True
        if not appended and not own_global:
            body, end = _split_end(lines[kernel])
            indent = _keyword(body)[0]
            args = (inherited + b" " if inherited and inherited != b"-" else b"") + extra
            inserts[kernel] = indent + b"append " + args + end
    out = []
    for i, line in enumerate(lines):
        line = edits.get(i, line)
        if i in inserts and not line.endswith((b"\n", b"\r")):
            line += b"\n"
        out.append(line)
        if i in inserts:
            out.append(inserts[i])
    return b"".join(out)


def _append_line(indent: bytes, word: bytes, rest: bytes, extra: bytes, end: bytes) -> bytes:
    args = rest.lstrip(b" \t")
    sep = rest[: len(rest) - len(args)] or b" "
    if args.rstrip(b" \t") == b"-":
        return indent + word + sep + extra + args[1:] + end
    return indent + word + sep + _insert(args, extra) + end


def isolinux_includes(data: bytes) -> list[str]:
    """Files named by ``include``, ``menu include`` and ``config`` lines, as written."""
    names = []
    for line in _lines(data):
        _, kw, _, rest = _keyword(_split_end(line)[0])
        words = rest.split()
        if kw == b"menu" and len(words) >= 2 and words[0].lower() == b"include":
            names.append(words[1])
        elif kw in (b"include", b"config") and words:
            names.append(words[0])
    return [n.decode("utf-8", "surrogateescape") for n in names]
