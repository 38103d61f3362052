"""What every `/api/v3` handler shares: state keys, errors, parameters, pagination, node calls."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from management.apps import AppStore
from management.queries import is_error
from management.view import ClusterView, NodeDown, UnknownNode

# EMQX 3.x management error codes that API.md keeps in some bodies.
CODE_NODE_DOWN = 101
CODE_OTHER = 102
CODE_MISSING_PARAM = 107
CODE_BAD_PARAM = 108
CODE_BAD_JSON = 109
CODE_SESSION_NOT_FOUND = 112
CODE_BAD_TOPIC = 115


@dataclass(slots=True)
class ApiSettings:
    max_row_limit: int = 10000
    metrics_auth: bool = False
    #: Largest request body in bytes (aiohttp's client_max_size); larger is answered 413.
    max_body_size: int = 1_048_576


VIEW_KEY: web.AppKey[ClusterView] = web.AppKey("view")
APPS_KEY = web.AppKey("apps", AppStore)
SETTINGS_KEY = web.AppKey("settings", ApiSettings)


class ApiError(Exception):
    """Answer with `{"message": message[, "code": code]}` and `status`."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message}
        if self.code is not None:
            body["code"] = self.code
        return web.json_response(body, status=self.status)


#: A query's `{"error": reason}` -> (HTTP status, EMQX code or None).
REASONS: dict[str, tuple[int, int | None]] = {
    "not_found": (404, None),
    "session_not_found": (404, CODE_SESSION_NOT_FOUND),
    "bad_topic": (400, CODE_BAD_TOPIC),
    "bad_payload": (400, CODE_BAD_PARAM),
    "bad_as": (400, CODE_BAD_PARAM),
    "bad_level": (400, CODE_BAD_PARAM),
    "retain_not_supported": (400, CODE_BAD_PARAM),
    "already_started": (409, None),
    "not_started": (409, None),
    "load_failed": (500, None),
}


def check_result(result: Any) -> Any:
    """Raise the ApiError matching a query's `{"error": ...}` result; else return it."""
    reason = is_error(result)
    if reason is not None:
        status, code = REASONS.get(reason, (500, None))
        known = reason in REASONS
        raise ApiError(status, reason if known else "internal_error", code)
    return result


def view_of(request: web.Request) -> ClusterView:
    return request.config_dict[VIEW_KEY]


async def node_call(request: web.Request, node: str, query: str, args: dict[str, Any]) -> Any:
    """One node's answer; 404 for a node not in the cluster, 503 for one that does not answer."""
    view = view_of(request)
    if not view.is_known(node):
        raise ApiError(404, "not_found")
    try:
        return await view.call(node, query, args)
    except UnknownNode:
        raise ApiError(404, "not_found") from None
    except NodeDown:
        raise ApiError(503, "nodedown") from None


async def all_rows(request: web.Request, query: str, args: dict[str, Any]) -> list[Any]:
    """The rows of `query` from every running node, concatenated in node order."""
    return [row for _node, rows in await view_of(request).call_all(query, args) for row in rows]


# -- parameters ----------------------------------------------------------------------------------


async def params(request: web.Request) -> dict[str, Any]:
    """Body (JSON object, or a form) merged with the query string; the query string wins."""
    out: dict[str, Any] = {}
    if request.can_read_body:
        if request.content_type == "application/x-www-form-urlencoded":
            out.update((await request.post()).items())
        else:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: 400
                    raise ApiError(400, "bad_json", CODE_BAD_JSON) from None
                if not isinstance(body, dict):
                    raise ApiError(400, "bad_json", CODE_BAD_JSON)
                out.update(body)
    out.update(request.query.items())
    return out


async def json_array(request: web.Request) -> list[Any]:
    """A body that must be a JSON array (the batch endpoints), whatever its Content-Type."""
    raw = await request.read() if request.can_read_body else b""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "bad_json", CODE_BAD_JSON) from None
    if not isinstance(body, list):
        raise ApiError(400, "bad_json", CODE_BAD_JSON)
    return body


def missing(p: dict[str, Any], *names: str) -> None:
    absent = [n for n in names if p.get(n) in (None, "")]
    if absent:
        raise ApiError(400, f"missing mandatory params: {absent}")


def as_int(value: Any, name: str, lo: int, hi: int) -> int:
    """An integer parameter given as a JSON number or a query-string digit string."""
    if isinstance(value, bool):
        raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM) from None
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM)
    return value


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM)


def as_number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM) from None
    if not math.isfinite(number):
        raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM)
    return number


def as_str(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ApiError(400, f"bad_{name}", CODE_BAD_PARAM)


# -- pagination ----------------------------------------------------------------------------------


def _positive(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"bad{key}") from None  # "bad_page" / "bad_limit"
    if value < 1:
        raise ApiError(400, f"bad{key}")
    return value


def paginate(request: web.Request, rows: list[Any]) -> web.Response:
    """`{"items", "meta": {page, limit, count}}`; `_limit` defaults to and is capped at
    `max_row_limit`; `count` is the number of rows in scope; a page past the end is empty."""
    cap = request.config_dict[SETTINGS_KEY].max_row_limit
    page = _positive(request, "_page", 1)
    limit = min(_positive(request, "_limit", cap), cap)
    start = (page - 1) * limit
    items = rows[start : start + limit]
    return web.json_response(
        {"items": items, "meta": {"page": page, "limit": limit, "count": len(rows)}}
    )
