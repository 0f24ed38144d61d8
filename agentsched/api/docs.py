"""`/docs` and `/redoc` from packaged assets, for apps on machines without internet.

FastAPI's own pages load Swagger UI and ReDoc (and Google Fonts) from a CDN. These
pages load the bundles `routes_ui` serves from the `fastapi-offline` package; `assets`
is the URL path of those files (`<router prefix>/ui/vendor`), which an app that mounts
the router elsewhere passes itself.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse


def add_offline_docs(app: FastAPI, assets: str = "/api/scheduler/ui/vendor") -> None:
    """Serve `/docs` (Swagger UI) and `/redoc` of `app` with no request leaving the host.

    Create `app` with `docs_url=None, redoc_url=None` so FastAPI's CDN pages are not
    registered first.
    """
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
        )

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
