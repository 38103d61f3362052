"""What every `/api/v3` handler shares: state keys, errors, parameters, pagination, node calls."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from management.apps import AppStore

# Re-exported (`X as X`): handlers import these from here, as before errors had their module.
from management.errors import CODE_BAD_JSON as CODE_BAD_JSON
from management.errors import CODE_BAD_PARAM as CODE_BAD_PARAM
from management.errors import CODE_BAD_TOPIC as CODE_BAD_TOPIC
from management.errors import CODE_MISSING_PARAM as CODE_MISSING_PARAM
from management.errors import CODE_SESSION_NOT_FOUND as CODE_SESSION_NOT_FOUND
from management.errors import ApiError as ApiError
from management.errors import (
    BadJson,
    BadParam,
    MissingParams,
    NodeDownError,
    NodeNotFound,
    from_reason,
)
from management.queries import is_error
from management.view import ClusterView, NodeDown, UnknownNode


@dataclass(slots=True)
class ApiSettings:
    max_row_limit: int = 10000
    metrics_auth: bool = False
    #: Largest request body in bytes (aiohttp's client_max_size); larger is answered 413.
    max_body_size: int = 1_048_576
    #: "seed" (the 3.0-beta shapes) or "emqx" (released 3.x: `{"code": 0, "data": ...}`).
    api_format: str = "seed"


VIEW_KEY: web.AppKey[ClusterView] = web.AppKey("view")
APPS_KEY = web.AppKey("apps", AppStore)
SETTINGS_KEY = web.AppKey("settings", ApiSettings)


#: On a handler's response: its seed body as data, and whether it is a page (for the envelope).
PAYLOAD_KEY: web.ResponseKey[Any] = web.ResponseKey("payload")
PAGE_KEY = web.ResponseKey("page", bool)


def reply(data: Any, status: int = 200) -> web.Response:
    """A seed-format JSON answer that keeps `data` for the response layer (management.envelope
    re-wraps it for the EMQX format without parsing the body again)."""
    response = web.json_response(data, status=status)
    response[PAYLOAD_KEY] = data
    return response


def check_result(result: Any) -> Any:
    """Raise the ApiError matching a query's `{"error": ...}` result; else return it."""
    reason = is_error(result)
    if reason is not None:
        raise from_reason(reason, str(result.get("detail", "")))
    return result


def view_of(request: web.Request) -> ClusterView:
    return request.config_dict[VIEW_KEY]


async def node_call(request: web.Request, node: str, query: str, args: dict[str, Any]) -> Any:
    """One node's answer; 404 for a node not in the cluster, 503 for one that does not answer."""
    view = view_of(request)
    if not view.is_known(node):
        raise NodeNotFound()
    try:
        return await view.call(node, query, args)
    except UnknownNode:
        raise NodeNotFound() from None
    except NodeDown:
        raise NodeDownError() from None


async def all_rows(request: web.Request, query: str, args: dict[str, Any]) -> list[Any]:
    """The rows of `query` from every running node, concatenated in node order."""
    return [row for _node, rows in await view_of(request).call_all(query, args) for row in rows]


# -- parameters ----------------------------------------------------------------------------------


async def params(request: web.Request) -> dict[str, Any]:
    """Body merged with the query string; the query string wins.

    A body that parses as a JSON object is JSON whatever its Content-Type says (as in EMQX:
    `curl -d '{...}'` sends application/x-www-form-urlencoded); otherwise a form body is read
    as a form, and anything else is 400 bad_json (109).
    """
    out: dict[str, Any] = {}
    if request.can_read_body:
        raw = await request.read()
        if raw.strip():
            body = _json_object(raw)
            if body is not None:
                out.update(body)
            elif request.content_type == "application/x-www-form-urlencoded":
                out.update((await request.post()).items())
            else:
                raise BadJson()
    out.update(request.query.items())
    return out


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not JSON
        return None
    return body if isinstance(body, dict) else None


async def json_array(request: web.Request) -> list[Any]:
    """A body that must be a JSON array (the batch endpoints), whatever its Content-Type."""
    raw = await request.read() if request.can_read_body else b""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadJson() from None
    if not isinstance(body, list):
        raise BadJson()
    return body


def missing(p: dict[str, Any], *names: str) -> None:
    absent = [n for n in names if p.get(n) in (None, "")]
    if absent:
        raise MissingParams(absent)


def as_int(value: Any, name: str, lo: int, hi: int) -> int:
    """An integer parameter given as a JSON number or a query-string digit string."""
    if isinstance(value, bool):
        raise BadParam(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise BadParam(name) from None
    if not isinstance(value, int) or not lo <= value <= hi:
        raise BadParam(name)
    return value


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise BadParam(name)


def as_number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise BadParam(name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadParam(name) from None
    if not math.isfinite(number):
        raise BadParam(name)
    return number


def as_str(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise BadParam(name)


# -- pagination ----------------------------------------------------------------------------------


def _positive(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParam(key[1:], show_code=False) from None  # "bad_page" / "bad_limit"
    if value < 1:
        raise BadParam(key[1:], show_code=False)
    return value


def paginate(request: web.Request, rows: list[Any]) -> web.Response:
    """`{"items", "meta": {page, limit, count}}`; `_limit` defaults to and is capped at
    `max_row_limit`; `count` is the number of rows in scope; a page past the end is empty."""
    cap = request.config_dict[SETTINGS_KEY].max_row_limit
    page = _positive(request, "_page", 1)
    limit = min(_positive(request, "_limit", cap), cap)
    start = (page - 1) * limit
    items = rows[start : start + limit]
    response = reply({"items": items, "meta": {"page": page, "limit": limit, "count": len(rows)}})
    response[PAGE_KEY] = True
    return response
