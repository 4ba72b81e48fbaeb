"""Fixtures of the e2e tier: the virtual lab (``lab``, ``lab_ironworks``) and the deployable test image.

The image is built once per set of inputs into ``/var/cache/ironworks-tests/e2e-images/`` (override
the cache with ``IRONWORKS_E2E_CACHE``; give a kernel package with ``IRONWORKS_E2E_KERNEL_DEB`` on a
machine without a Debian mirror). A build that cannot run fails the tests that need it, never skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.images import DEFAULT_CACHE, ImageBuildError, InstanceImage, build_instance_image
from tests.lab.fixtures import lab_fixture, lab_ironworks_fixture  # noqa: F401  (fixtures "lab", "lab_ironworks")

#: the image id the deployed image prints in its marker line
INSTANCE_IMAGE_ID = "e2e-instance"


@pytest.fixture(scope="session")
def e2e_cache() -> Path:
    """Where built images and downloaded packages are kept between runs (outside the repository)."""
    return Path(os.environ.get("IRONWORKS_E2E_CACHE") or DEFAULT_CACHE)


@pytest.fixture(scope="session")
def instance_image(e2e_cache: Path) -> InstanceImage:
    """The 1 GiB BIOS+UEFI test image (raw and qcow2, with their sha256), built or found in the cache."""
    deb = os.environ.get("IRONWORKS_E2E_KERNEL_DEB")
    try:
        return build_instance_image(image_id=INSTANCE_IMAGE_ID, cache=e2e_cache, deb=Path(deb) if deb else None)
    except ImageBuildError as exc:
        pytest.fail(f"the e2e test image could not be built: {exc}", pytrace=False)
