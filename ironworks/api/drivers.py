"""``/v1/drivers``: the enabled hardware types, their interfaces and the conductors serving them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import Response

from ironworks.api.app import ApiContext, base_url, ctx_of, json_response
from ironworks.api.serialize import links
from ironworks.db.models import Conductor
from ironworks.drivers.base import INTERFACE_KINDS
from ironworks.errors import NotFound

router = APIRouter()
_EXTRA_KINDS = {"network": ["noop"], "storage": ["noop"], "vendor": ["no-vendor"]}


def _hosts(ctx: ApiContext, name: str) -> list[str]:
    with ctx.db.read() as s:
        rows = s.execute(select(Conductor.hostname, Conductor.hardware_types).where(Conductor.online.is_(True))).all()
    return sorted(h for h, types in rows if name in (types or []))


def _driver_doc(ctx: ApiContext, name: str, base: str, detail: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "hosts": _hosts(ctx, name),
        "type": "dynamic",
        "links": links(base, "drivers", name),
        "properties": links(base, "drivers", f"{name}/properties"),
    }
    if detail:
        supported = {**_EXTRA_KINDS, **ctx.drivers.hardware_type(name).supported}
        for kind in [*INTERFACE_KINDS, *_EXTRA_KINDS]:
            impls = supported.get(kind, [])
            doc[f"default_{kind}_interface"] = impls[0] if impls else None
            doc[f"enabled_{kind}_interfaces"] = list(impls)
    return doc


@router.get("/v1/drivers", summary="List enabled drivers (hardware types)")
def list_drivers(request: Request, detail: bool = False, type: str | None = None) -> Response:
    """Enabled hardware types."""
    ctx = ctx_of(request)
    base = base_url(request, ctx.config)
    if type == "classic":
        return json_response({"drivers": []})
    return json_response({"drivers": [_driver_doc(ctx, n, base, detail) for n in ctx.drivers.enabled]})


@router.get("/v1/drivers/{name}", summary="Show a driver")
def get_driver(request: Request, name: str) -> Response:
    """One hardware type with its interfaces."""
    ctx = ctx_of(request)
    if name not in ctx.drivers.enabled:
        raise NotFound(f"Driver {name} could not be found; enabled drivers: {', '.join(ctx.drivers.enabled)}.")
    return json_response(_driver_doc(ctx, name, base_url(request, ctx.config), True))


@router.get("/v1/drivers/{name}/properties", summary="The driver_info properties a driver understands")
def driver_properties(request: Request, name: str) -> Response:
    """``driver_info`` keys and what they mean."""
    ctx = ctx_of(request)
    if name not in ctx.drivers.enabled:
        raise NotFound(f"Driver {name} could not be found.")
    props: dict[str, str] = {}
    driver = ctx.drivers.driver_for(name, {})
    for iface in driver.interfaces.values():
        props.update(getattr(iface, "properties", {}))
    return json_response(props)
