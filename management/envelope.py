"""The response layer of `/api/v3`: one middleware renders every answer in the configured format.

Handlers answer in the seed format (bare data, `{"items", "meta"}` pages, `"ok"`) and raise
`ApiError`s; this middleware (innermost in the `/api/v3` sub-app, inside Basic auth) turns them
into what `[management] api_format` asks for:

* `seed`: answers pass through; errors are `status` + `{"message"[, "code"]}`;
* `emqx` (released EMQX 3.0.0-3.2.x, whose minirest wraps every return value): HTTP 200 and
  `{"code": 0, "data": <seed body>}`, pages as `{"code": 0, "data": items, "meta": meta}`,
  actions (`"ok"` / `{"code": 0}` in the seed) as `{"code": 0}`, errors as
  `{"code": N, "message": ...}` with the error's EMQX code.

Untouched in both formats: the 401 of the auth middleware (outside this one), the router's 404
for an unknown path and aiohttp's 413 for a large body (HTTP exceptions pass through to the
root app's error middleware), and a response marked `RAW_KEY` (the OpenAPI document).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from management.common import PAGE_KEY, PAYLOAD_KEY, SETTINGS_KEY
from management.errors import ApiError, InternalError

log = logging.getLogger(__name__)

#: Set on a response to send it as it is in every format.
RAW_KEY = web.ResponseKey("raw", bool)

_UNSET = object()


def render_error(exc: ApiError, api_format: str) -> web.Response:
    if api_format == "emqx" and not exc.keep_status:
        return web.json_response(exc.emqx_body())
    return web.json_response(exc.seed_body(), status=exc.status)


def emqx_body(data: Any, page: bool) -> dict[str, Any]:
    """The released-3.x envelope of a seed body."""
    if page and isinstance(data, dict):
        return {"code": 0, "data": data.get("items", []), "meta": data.get("meta", {})}
    if data == "ok" or data == {"code": 0}:
        return {"code": 0}
    return {"code": 0, "data": data}


def _seed_payload(response: web.StreamResponse) -> Any:
    """The seed body of a handler's response: kept by `common.reply`, else parsed back (a
    handler that built its own json_response)."""
    data = response.get(PAYLOAD_KEY, _UNSET)
    if data is not _UNSET:
        return data
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return _UNSET
    body = response.body
    if not isinstance(body, bytes | bytearray):
        return _UNSET
    try:
        return json.loads(body)
    except ValueError:
        return _UNSET


def to_emqx(response: web.StreamResponse) -> web.StreamResponse:
    if response.get(RAW_KEY):
        return response
    data = _seed_payload(response)
    if data is _UNSET:
        return response
    if response.status >= 400:  # a handler that answered an error itself
        message = data.get("message", "error") if isinstance(data, dict) else str(data)
        return render_error(ApiError(response.status, str(message)), "emqx")
    is_page = bool(response.get(PAGE_KEY)) or (
        isinstance(data, dict) and set(data) == {"items", "meta"}
    )
    return web.json_response(emqx_body(data, is_page))


@web.middleware
async def format_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render the handler's answer or error in the configured format (see the module doc)."""
    api_format = request.config_dict[SETTINGS_KEY].api_format
    try:
        response = await handler(request)
    except ApiError as exc:
        return render_error(exc, api_format)
    except web.HTTPException:
        raise  # 404 unknown path, 413 too large...: the root app's error middleware
    except Exception:
        log.exception("management API: %s %s failed", request.method, request.path)
        return render_error(InternalError(), api_format)
    if api_format == "emqx":
        return to_emqx(response)
    return response
