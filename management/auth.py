"""HTTP Basic authentication against the API apps (AppID = user, AppSecret = password)."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web
from aiohttp.typedefs import Handler

from management.common import APPS_KEY

REALM = 'Basic realm="minibroker"'

#: The AppID that authenticated the request (used as the default `by` of a ban).
APP_ID_KEY: web.RequestKey[str] = web.RequestKey("app_id")


def unauthorized() -> web.Response:
    return web.json_response(
        {"message": "unauthorized"}, status=401, headers={"WWW-Authenticate": REALM}
    )


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    app_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return app_id, secret


async def authenticated(request: web.Request) -> bool:
    """Check the request's credentials; on success remember the AppID on the request."""
    credentials = basic_credentials(request)
    if credentials is None:
        return False
    app_id, secret = credentials
    if not await request.config_dict[APPS_KEY].authenticate(app_id, secret):
        return False
    request[APP_ID_KEY] = app_id
    return True


@web.middleware
async def basic_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not await authenticated(request):
        return unauthorized()
    return await handler(request)
