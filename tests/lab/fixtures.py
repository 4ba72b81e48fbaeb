"""pytest fixtures of the virtual lab; a test module opts in by importing them.

    from tests.lab.fixtures import lab_fixture, lab_ironworks_fixture  # noqa: F401

(The functions are registered under the names ``lab`` and ``lab_ironworks``; importing them under
other names keeps test parameters called ``lab`` from shadowing an import.)

``lab`` is session-scoped (setup takes about 10 s, so it is built once per test run, lazily, by the
first test that asks for it, and shared by every module that imports the fixture) and is torn down
at the end of the session, also after failures.
``lab_ironworks`` is one ``ironworks serve`` inside the lab's namespace per test module.

In CI a lab that cannot be built is a failure, never a skip: every test that needs it errors with
the step that failed and the tail of the logs that say why. Set ``IRONWORKS_LAB_KEEP=1`` to keep the
work directory (logs, serial consoles, configs) after the run; everything else is removed anyway.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.lab import Lab, LabSetupError, LabTeardownError
from tests.lab.service import IronworksInLab


class _SessionLab:
    """The one lab of a test session, shared by every module that imports the ``lab`` fixture.

    Each importing module (or conftest) gets its own session-scoped fixture definition from pytest, so
    without this a run of the integration and e2e tiers together would build two labs at once. The
    first user builds it (or records why it could not be built, and every later user fails with that);
    the last user to finish, at the end of the session, tears it down.
    """

    lab: Lab | None = None
    failure: str | None = None
    users = 0

    @classmethod
    def acquire(cls) -> Lab:
        if cls.failure is not None:
            pytest.fail(cls.failure, pytrace=False)
        if cls.lab is None:
            cls.lab = _build_lab()  # pytest.fail (and no lab) when it cannot be built
        cls.users += 1
        return cls.lab

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users == 0 and cls.lab is not None:
            the_lab, cls.lab = cls.lab, None
            the_lab.teardown()
            print(f"\nlab {the_lab.ns_name} torn down in {the_lab.timings['teardown']:.1f} s")
            if the_lab.keep_workdir:
                print(f"lab work directory kept: {the_lab.workdir}")


def _build_lab() -> Lab:
    if os.geteuid() != 0:
        _SessionLab.failure = "the lab needs root (network namespaces, libvirtd); CI runs the tests as root"
        pytest.fail(_SessionLab.failure, pytrace=False)
    keep = os.environ.get("IRONWORKS_LAB_KEEP", "") not in ("", "0")
    workdir = Path(tempfile.mkdtemp(prefix="iw-lab-"))
    the_lab = Lab(workdir, keep_workdir=keep)
    failure = None
    try:
        the_lab.setup()
    except Exception as exc:
        # the message carries the log tails; the work directory goes unless asked to keep it
        failure = str(exc) if isinstance(exc, LabSetupError) else f"lab setup failed: {type(exc).__name__}: {exc}"
        try:
            the_lab.teardown()
        except LabTeardownError as err:
            failure += f"\n{err}"
    if failure is not None:
        _SessionLab.failure = failure
        pytest.fail(failure, pytrace=False)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in the_lab.timings.items())
    print(f"\nlab {the_lab.ns_name} up in {workdir}: {timings}")
    return the_lab


@pytest.fixture(scope="session", name="lab")
def lab_fixture() -> Iterator[Lab]:
    """The virtual lab: a namespace, TCG VMs, sushy-emulator and VirtualBMC for each VM (one per session)."""
    the_lab = _SessionLab.acquire()
    try:
        yield the_lab
    finally:
        _SessionLab.release()


@pytest.fixture(scope="module", name="lab_ironworks")
def lab_ironworks_fixture(lab: Lab) -> Iterator[IronworksInLab]:
    """``ironworks serve`` (fake-hardware, redfish, ipmi) inside the lab's namespace, for one test module."""
    try:
        server = lab.start_ironworks()
    except RuntimeError as exc:
        pytest.fail(f"ironworks serve did not start inside the lab: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        print(f"\nironworks serve in the lab, last log lines:\n{server.log_tail(40)}")
