"""Firmware update for real: tarballs served over loopback HTTP, runme.sh run by bash."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from ironworks.agent.errors import FirmwareError, UnsafeArchive
from ironworks.agent.firmware import update_firmware


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _tarball(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> str:  # type: ignore[assignment]
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_runme_runs_in_its_work_dir_and_its_output_is_streamed(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    work = tmp_path / "work"
    work.mkdir()
    script = b"echo flashing $(cat payload/fw.bin)\ntouch marker\ntest -f marker && echo marker in $(pwd)\necho done\n"
    checksum = _tarball(root / "fw.tgz", {"runme.sh": script, "payload/fw.bin": b"v2.1"})
    lines: list[str] = []
    result = update_firmware(f"{url}/fw.tgz", checksum, timeout=30, output=lines.append, workdir_root=str(work))
    assert result["exit_code"] == 0
    assert lines[0] == "flashing v2.1" and lines[-1] == "done"
    assert lines[1].startswith(f"marker in {work}/firmware-")
    assert result["output_tail"].endswith("done")
    assert list(work.iterdir()) == []  # the work dir is gone


def test_failing_runme_raises_with_the_tail(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    script = b"for i in $(seq 1 100); do echo line $i; done\necho oops >&2\nexit 1\n"
    checksum = _tarball(root / "bad.tar.gz", {"runme.sh": script})
    with pytest.raises(FirmwareError, match="exited with 1") as err:
        update_firmware(f"{url}/bad.tar.gz", checksum, timeout=30, output=lambda _: None, workdir_root=str(tmp_path))
    tail = err.value.context["output_tail"].splitlines()
    assert len(tail) == 40 and tail[-1] == "oops" and tail[0] == "line 62"


def test_timeout_kills_runme(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    checksum = _tarball(root / "slow.tgz", {"runme.sh": b"echo start\nsleep 60\n"})
    with pytest.raises(FirmwareError, match="did not finish"):
        update_firmware(f"{url}/slow.tgz", checksum, timeout=1, output=lambda _: None, workdir_root=str(tmp_path))


def test_checksum_mismatch_runs_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    _tarball(root / "fw.tgz", {"runme.sh": b"touch /tmp/never\n"})
    with pytest.raises(FirmwareError, match="checksum"):
        update_firmware(f"{url}/fw.tgz", "0" * 64, timeout=5, output=lambda _: None, workdir_root=str(tmp_path))


def _sym(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("files", "extra"),
    [
        ({"runme.sh": b"true", "../escape": b"x"}, []),
        ({"runme.sh": b"true", "/abs/escape": b"x"}, []),
        ({"runme.sh": b"true"}, [_sym("out", "../../..")]),
        ({"runme.sh": b"true"}, [_sym("hl", "/etc/passwd", tarfile.LNKTYPE)]),
        ({"runme.sh": b"true"}, [_sym("fifo", "", tarfile.FIFOTYPE)]),
        ({"nested/runme.sh": b"true"}, []),
        ({"runme.sh": b"true", "big": bytes(4096)}, []),
    ],
)
def test_hostile_tarballs_are_refused_before_anything_runs(
    files: dict[str, bytes], extra: list[tarfile.TarInfo], served: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = served
    files = {k: (b"touch " + str(tmp_path / "ran").encode() if k.endswith("runme.sh") else v) for k, v in files.items()}
    checksum = _tarball(root / "evil.tgz", files, extra)
    work = tmp_path / "deep" / "er" / "work"
    work.mkdir(parents=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchive):
        update_firmware(
            f"{url}/evil.tgz",
            checksum,
            timeout=5,
            output=lambda _: None,
            workdir_root=str(work),
            max_unpacked_bytes=2048,
        )
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing ran, nothing left behind


def test_update_firmware_runs_on_the_python_the_ramdisk_ships(served: tuple[str, Path], tmp_path: Path) -> None:
    """The ramdisk's agent runs on Debian 12's python3 (3.11.2, before tarfile's extraction filters):
    the update must work there too, and a setuid bit in the tarball must not survive the unpacking."""
    system_python = Path("/usr/bin/python3")
    if not system_python.is_file():
        pytest.fail("/usr/bin/python3 (Debian's python3, what the ramdisk carries) is missing")
    url, root = served
    setuid = tarfile.TarInfo("payload/tool")
    setuid.size, setuid.mode = 0, 0o4777
    script = b"stat -c 'mode %a' payload/tool\necho flashed\n"
    checksum = _tarball(root / "fw.tgz", {"runme.sh": script}, [setuid])
    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from ironworks.agent.firmware import update_firmware\n"
        "r = update_firmware(sys.argv[2], sys.argv[3], timeout=30, output=print, workdir_root=sys.argv[4])\n"
        "print('exit', r['exit_code'])\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [str(system_python), "-c", code, str(repo), f"{url}/fw.tgz", checksum, str(work)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["mode 755", "flashed", "exit 0"], done.stdout
