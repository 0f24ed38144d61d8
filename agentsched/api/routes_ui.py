"""`/ui/`: the dashboard's page shell and its static files, shipped in the package.

The files under `agentsched/api/ui/` are served as they are (no build step); the
Swagger UI and ReDoc bundles of `/docs` and `/redoc` come from the `fastapi-offline`
package under `/ui/vendor/`. Nothing here needs the API key: the shell holds no data,
and the page sends `X-API-Key` on every call it makes to the API. These routes use
FastAPI's plain route class, so they are outside the key check and the OpenAPI schema.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import PurePosixPath

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute

from agentsched.api.deps import scheduler_router as router
from agentsched.errors import NotFound

UI_PACKAGE = "agentsched.api.ui"
VENDOR_PACKAGE = "fastapi_offline.static"
VENDOR_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# The page shell and its scripts may be cached briefly; vendored bundles change only
# with the installed package.
CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
VENDOR_CACHE = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


# ReDoc's footer loads its logo from a CDN; offline, that is a failed request in every
# browser console. An empty inline image takes its place.
_REDOC_LOGO = (
    b'"https://cdn.redoc.ly/redoc/logo-mini.svg"',
    b'"data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E"',
)


@cache
def _asset(package: str, name: str) -> bytes:
    data = files(package).joinpath(name).read_bytes()
    return data.replace(*_REDOC_LOGO) if name == "redoc.standalone.js" else data


def _ui_names() -> frozenset[str]:
    return frozenset(
        p.name for p in files(UI_PACKAGE).iterdir() if PurePosixPath(p.name).suffix in TYPES
    )


def _file(package: str, name: str, headers: dict[str, str]) -> Response:
    return Response(_asset(package, name), media_type=TYPES[PurePosixPath(name).suffix],
                    headers=headers)  # fmt: skip


async def ui_root(request: Request) -> Response:
    """`/ui` without its slash: the page's relative links need the slash."""
    return RedirectResponse(str(request.url.path) + "/", status_code=307)


async def ui_index() -> HTMLResponse:
    """The page shell (no data: the page fetches everything through the API)."""
    return HTMLResponse(_asset(UI_PACKAGE, "index.html"), headers=CACHE)


def _missing(name: str) -> Response:
    # A plain route: the router's error mapping is not around it, so answer here.
    return JSONResponse({"detail": str(NotFound("file", name)), "type": "not_found"}, 404)


async def ui_file(name: str) -> Response:
    """One of the dashboard's own files (an allow-list: the package's ui/ folder)."""
    if name not in _ui_names():
        return _missing(name)
    return _file(UI_PACKAGE, name, CACHE)


async def ui_vendor(name: str) -> Response:
    """A file of the Swagger UI / ReDoc bundles of `/docs` and `/redoc`."""
    if name not in VENDOR_FILES:
        return _missing(name)
    return _file(VENDOR_PACKAGE, name, VENDOR_CACHE)


for _path, _endpoint in (
    ("/ui", ui_root),
    ("/ui/", ui_index),
    ("/ui/vendor/{name}", ui_vendor),
    ("/ui/{name}", ui_file),
):
    router.add_api_route(
        _path, _endpoint, methods=["GET"], include_in_schema=False, route_class_override=APIRoute
    )
