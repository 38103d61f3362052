"""The web dashboard: static ES modules + CSS from `management/dashboard/`, served under
`/dashboard/` on the management listener (`[management] dashboard = true`, the default).

The page reads only the public `/api/v3` (HTTP Basic with an app id/secret the user types in) and
opens MQTT over WebSocket to the node's ws listener. No build step and no CDN: every asset is a
file in that directory, and the Content-Security-Policy below forbids loading anything else.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

ASSETS = Path(__file__).with_name("dashboard")
PREFIX = "/dashboard"

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
TEXT_SUFFIXES = frozenset({".html", ".js", ".css", ".svg", ".json"})

#: Same-origin scripts, styles and API calls; WebSocket to the node's MQTT listener (any port).
CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def resolve(relative: str) -> Path | None:
    """The asset file for a path below /dashboard/, or None (missing, hidden, or outside)."""
    if not relative or relative.endswith("/"):
        relative += "index.html"
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    path = ASSETS.joinpath(*parts)
    if path.suffix not in CONTENT_TYPES or not path.is_file():
        return None
    try:
        path.resolve().relative_to(ASSETS.resolve())
    except ValueError:
        return None
    return path


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PREFIX + "/")


async def asset(request: web.Request) -> web.Response:
    path = resolve(request.match_info["path"])
    if path is None:
        raise web.HTTPNotFound()
    response = web.Response(body=path.read_bytes(), content_type=CONTENT_TYPES[path.suffix])
    if path.suffix in TEXT_SUFFIXES:
        response.charset = "utf-8"
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if path.suffix == ".html":
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
    return response


def add_dashboard(app: web.Application) -> None:
    """Serve the dashboard from `app` (the management application)."""
    app.router.add_get(PREFIX, redirect)
    app.router.add_get(PREFIX + "/{path:.*}", asset)
