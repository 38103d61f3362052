"""The management HTTP application: `/status`, `/metrics` and the `/api/v3` sub-app.

One route table (`management.routes.ROUTES`) drives everything: the aiohttp router (each path
with and without a trailing slash), `GET /api/v3/` (EMQX's list_all_api) and the OpenAPI document.
Handlers live in `handlers_*`; they reach the nodes through the `ClusterView` only.

Errors: every failure is a JSON body `{"message": ...}`. An unknown path or method is a 404
`not_found`; an unexpected exception is logged and answered 500 `internal_error`, never with a
traceback. Inside `/api/v3`, `management.envelope` renders answers and errors in the configured
format (`[management] api_format`: the seed's, or released EMQX 3.x's `{"code", "data"}`).
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.typedefs import Handler

from management.apps import AppStore
from management.auth import authenticated, basic_auth_middleware, unauthorized
from management.common import APPS_KEY, SETTINGS_KEY, VIEW_KEY, ApiError, ApiSettings
from management.envelope import RAW_KEY, format_middleware
from management.openapi import openapi_document
from management.prometheus import exposition
from management.routes import ROUTES
from management.view import ClusterView

log = logging.getLogger(__name__)

API_PREFIX = "/api/v3"


async def openapi_json(request: web.Request) -> web.Response:
    response = web.json_response(openapi_document(ROUTES, API_PREFIX))
    response[RAW_KEY] = True  # a document about the API, the same in both formats
    return response


# -- middlewares ---------------------------------------------------------------------------------


def _not_found() -> web.Response:
    return web.json_response({"message": "not_found"}, status=404)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors everywhere; 404 for unknown paths and methods; no traceback ever leaks."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.seed_body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            return _not_found()
        if exc.status < 400:
            raise
        reason = re.sub(r"\W+", "_", exc.reason.lower()).strip("_") or "error"
        return web.json_response({"message": reason}, status=exc.status)
    except Exception:
        log.exception("management API: %s %s failed", request.method, request.path)
        return web.json_response({"message": "internal_error"}, status=500)


# -- outside /api/v3 -----------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    view = request.config_dict[VIEW_KEY]
    text = f"Node {view.local_node} is started\nminibroker is running"
    return web.Response(text=text, content_type="text/plain")


async def prometheus_metrics(request: web.Request) -> web.Response:
    if request.config_dict[SETTINGS_KEY].metrics_auth and not await authenticated(request):
        return unauthorized()
    body, content_type = await exposition(request.config_dict[VIEW_KEY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


# -- the application -----------------------------------------------------------------------------


def make_api_app() -> web.Application:
    """The `/api/v3` sub-app: Basic auth, the response format, then the route table."""
    api = web.Application(middlewares=[basic_auth_middleware, format_middleware])
    for route in ROUTES:
        for path in route.aiohttp_paths():
            api.router.add_route(route.method, path, route.handler, name=None)
    api.router.add_get("/openapi.json", openapi_json)
    return api


def make_app(
    view: ClusterView, apps: AppStore, settings: ApiSettings | None = None
) -> web.Application:
    """The whole management app (what the node serves on its management listener)."""
    settings = settings or ApiSettings()
    # client_max_size: a larger body is refused with 413 (JSON, via error_middleware) when read.
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_size)
    app[VIEW_KEY] = view
    app[APPS_KEY] = apps
    app[SETTINGS_KEY] = settings
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", prometheus_metrics)
    app.add_subapp(API_PREFIX, make_api_app())
    return app
