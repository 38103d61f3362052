"""The management API's errors, each carrying both of its renderings.

An error is raised once by a handler and rendered by the response layer (`management.envelope`)
in the configured format, so the mapping to EMQX's codes lives here and nowhere else:

* seed format: HTTP `status` and `{"message": message}` (plus `"code"` where the seed contract
  shows one: publish/subscribe errors and bad parameters);
* released EMQX 3.x format: HTTP 200 and `{"code": code, "message": message}` with the return
  codes of emqx-management's `emqx_mgmt.hrl` (101 badrpc ... 115 bad topic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The return codes of EMQX 3.x (include/emqx_mgmt.hrl).
CODE_NODE_DOWN = 101  # badrpc: the node does not answer (or is not in the cluster)
CODE_OTHER = 102  # unknown error
CODE_MISSING_PARAM = 107
CODE_BAD_PARAM = 108
CODE_BAD_JSON = 109
CODE_ALREADY_LOADED = 110
CODE_NOT_LOADED = 111
CODE_SESSION_NOT_FOUND = 112  # client not online / no session
CODE_BAD_TOPIC = 115

#: The EMQX code of an error raised with a bare HTTP status (no explicit code).
_CODE_OF_STATUS = {400: CODE_BAD_PARAM, 503: CODE_NODE_DOWN}


class ApiError(Exception):
    """An expected failure: `status` and `message` (seed), `code` (EMQX).

    `ApiError(status, message)` picks the EMQX code from the status; `ApiError(status, message,
    code)` also shows the code in the seed body. The subclasses below preset all three.
    """

    #: rendered with its HTTP status in both formats (EMQX's own 404s were real HTTP 404s)
    keep_status = False

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.seed_code = code is not None
        self.code = code if code is not None else _CODE_OF_STATUS.get(status, CODE_OTHER)

    def seed_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.seed_code:
            body["code"] = self.code
        return body

    def emqx_body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class MissingParams(ApiError):
    def __init__(self, names: list[str]) -> None:
        super().__init__(400, f"missing mandatory params: {names}")
        self.code = CODE_MISSING_PARAM


class BadParam(ApiError):
    """A parameter of the wrong type or out of range: `bad_<name>`."""

    def __init__(self, name: str, *, show_code: bool = True) -> None:
        super().__init__(400, f"bad_{name}", CODE_BAD_PARAM)
        self.seed_code = show_code


class BadJson(ApiError):
    def __init__(self) -> None:
        super().__init__(400, "bad_json", CODE_BAD_JSON)


class BadTopic(ApiError):
    def __init__(self) -> None:
        super().__init__(400, "bad_topic", CODE_BAD_TOPIC)


class SessionNotFound(ApiError):
    def __init__(self) -> None:
        super().__init__(404, "session_not_found", CODE_SESSION_NOT_FOUND)


class ClientNotFound(ApiError):
    """Kick of a client connected nowhere (EMQX: 112 client not online)."""

    def __init__(self) -> None:
        super().__init__(404, "not_found")
        self.code = CODE_SESSION_NOT_FOUND


class NodeNotFound(ApiError):
    """A node name that is not a cluster member (EMQX's rpc answers badrpc: 101)."""

    def __init__(self) -> None:
        super().__init__(404, "not_found")
        self.code = CODE_NODE_DOWN


class NodeDownError(ApiError):
    def __init__(self) -> None:
        super().__init__(503, "nodedown")
        self.code = CODE_NODE_DOWN


class AlreadyLoaded(ApiError):
    def __init__(self) -> None:
        super().__init__(409, "already_started")
        self.code = CODE_ALREADY_LOADED


class NotLoaded(ApiError):
    def __init__(self) -> None:
        super().__init__(409, "not_started")
        self.code = CODE_NOT_LOADED


class PluginLoadFailed(ApiError):
    """The plugin refused to start (missing file, missing setting...): the reason is the message.

    409: the request is valid but the node's state (its configuration) prevents it; fixing the
    configuration and retrying succeeds. Not a 500: nothing in the server is broken.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(409, reason or "load_failed")


class PluginRouteNotLoaded(ApiError):
    """A route of a plugin (auth_clientid, auth_username) on a node where it is not loaded:
    EMQX registered such routes with the plugin and answered a plain HTTP 404 while it was not
    running, so the status is kept in the emqx format too."""

    keep_status = True

    def __init__(self) -> None:
        super().__init__(404, "plugin_not_loaded")


class InternalError(ApiError):
    def __init__(self) -> None:
        super().__init__(500, "internal_error")


def from_reason(reason: str, detail: str = "") -> ApiError:
    """The error for a query's `{"error": reason[, "detail": text]}` result."""
    simple: dict[str, Callable[[], ApiError]] = {
        "session_not_found": SessionNotFound,
        "bad_topic": BadTopic,
        "already_started": AlreadyLoaded,
        "not_started": NotLoaded,
    }
    if reason in simple:
        return simple[reason]()
    if reason == "not_found":
        return ApiError(404, "not_found")
    if reason == "load_failed":
        return PluginLoadFailed(detail)
    if reason in ("bad_payload", "bad_as", "bad_level"):
        return BadParam(reason[4:])
    if reason == "retain_not_supported":
        return ApiError(400, reason, CODE_BAD_PARAM)
    return InternalError()
