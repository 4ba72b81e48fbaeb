"""Discovery documents: ``GET /`` and ``GET /v1``, the shapes Ironic clients negotiate with."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ironworks.api import versions
from ironworks.api.app import base_url, ctx_of, json_response

router = APIRouter()


def _version_doc(base: str) -> dict[str, Any]:
    return {
        "id": "v1",
        "links": [{"href": f"{base}/v1/", "rel": "self"}],
        "status": "CURRENT",
        "min_version": versions.fmt(versions.MIN_VERSION),
        "version": versions.fmt(versions.MAX_VERSION),
    }


@router.get("/", summary="API root: the versions this service speaks")
def root(request: Request) -> Response:
    """Ironic's root document."""
    base = base_url(request, ctx_of(request).config)
    doc = _version_doc(base)
    return json_response(
        {
            "name": "OpenStack Ironic API",
            "description": "Ironworks speaks the Bare Metal API v1 of OpenStack Ironic.",
            "default_version": doc,
            "versions": [doc],
        }
    )


@router.get("/v1", summary="API v1 document: resources and media types")
@router.get("/v1/", include_in_schema=False)
def v1(request: Request) -> Response:
    """Ironic's v1 document."""
    base = base_url(request, ctx_of(request).config)

    def link(kind: str) -> list[dict[str, str]]:
        return [{"href": f"{base}/v1/{kind}/", "rel": "self"}, {"href": f"{base}/{kind}/", "rel": "bookmark"}]

    return json_response(
        {
            "id": "v1",
            "links": [{"href": f"{base}/v1/", "rel": "self"}],
            "media_types": [{"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"}],
            "nodes": link("nodes"),
            "ports": link("ports"),
            "drivers": link("drivers"),
            "lookup": link("lookup"),
            "heartbeat": link("heartbeat"),
            "version": _version_doc(base),
        }
    )
