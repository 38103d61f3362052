"""Helpers shared by the `test_api_*` tests (this module holds no tests).

`api` fixture: a whole node (`NodeApp` via `app_factory`) and a client for its management API,
once through aiohttp's in-process test client (`TestClient` on the same application object the
node serves) and once over real HTTP against the node's management port. Both give `Reply`s.
Answers are checked against the OpenAPI schemas (`check`), so field names and JSON types are
tested on every call that uses it.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiomqtt
import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.app import NodeApp
from management.openapi import SCHEMAS

TIMEOUT = 5.0
NODE = "test@127.0.0.1"
ADMIN = ("admin", "public")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any
    text: str


class Api:
    """A management API client; `auth=None` sends no credentials."""

    def __init__(
        self, session: aiohttp.ClientSession | TestClient[Any, Any], app: NodeApp, mode: str
    ) -> None:
        self.session = session
        self.app = app
        self.mode = mode  # "test_client" or "real_http"

    async def request(
        self,
        method: str,
        path: str,
        *,
        auth: tuple[str, str] | None = ADMIN,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        all_headers = dict(headers or {})
        if auth is not None:
            all_headers.update(basic(*auth))
        kwargs: dict[str, Any] = {"headers": all_headers}
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        async with asyncio.timeout(TIMEOUT):
            async with self.session.request(method, path, **kwargs) as response:
                text = await response.text()
                body: Any = None
                if response.content_type == "application/json":
                    body = await response.json()
                return Reply(response.status, body, response.headers, text)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> Reply:
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        """The body of a 200 answer."""
        reply = await self.request(method, path, **kw)
        assert reply.status == 200, (method, path, reply.status, reply.text)
        return reply.body

    @property
    def tcp_port(self) -> int:
        return self.app.node.tcp_port


def check(value: Any, schema: str) -> None:
    """Validate `value` against `SCHEMAS[schema]` (array of it if the name ends with `[]`)."""
    if schema.endswith("[]"):
        target: dict[str, Any] = {
            "type": "array",
            "items": {"$ref": f"#/components/schemas/{schema[:-2]}"},
        }
    elif schema.startswith("page:"):
        target = {
            "type": "object",
            "required": ["items", "meta"],
            "properties": {
                "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{schema[5:]}"}},
                "meta": {"$ref": "#/components/schemas/meta"},
            },
        }
    else:
        target = {"$ref": f"#/components/schemas/{schema}"}
    jsonschema.validate(value, {**target, "components": {"schemas": SCHEMAS}})


AppFactory = Callable[..., Any]


async def make_api(app: NodeApp, mode: str) -> AsyncIterator[Api]:
    """A client of `app`'s management API: "test_client" (in-process) or "real_http"."""
    if mode == "test_client":
        assert app.management is not None
        client: TestClient[Any, Any] = TestClient(TestServer(app.management.build_app()))
        await client.start_server()
        try:
            yield Api(client, app, mode)
        finally:
            await client.close()
    else:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base) as session:
            yield Api(session, app, mode)


@pytest.fixture(name="api", params=["test_client", "real_http"])
async def api_fixture(
    request: pytest.FixtureRequest, app_factory: AppFactory
) -> AsyncIterator[Api]:
    """`api`: the management API of a fresh node, in both transports (a test module imports
    `api_fixture` to use it)."""
    app = await app_factory()
    async for client in make_api(app, request.param):
        yield client


def mqtt(api: Api, client_id: str, *, v5: bool = False, **kwargs: Any) -> aiomqtt.Client:
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    kwargs.setdefault("timeout", TIMEOUT)
    return aiomqtt.Client(
        "127.0.0.1", api.tcp_port, identifier=client_id, protocol=protocol, **kwargs
    )


async def next_message(client: aiomqtt.Client, timeout: float = TIMEOUT) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(aiter(client.messages))


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll until `predicate()` holds (AssertionError after `timeout`)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout}s") from None


#: Values for a route's path parameters (this node, a client id, a plugin, an app...).
PATH_VALUES = {
    "node": NODE,
    "clientid": "nobody",
    "topic": "t",
    "plugin": "presence",
    "who": "x",
    "appid": "admin",
    "username": "nobody",
}


def concrete(path: str) -> str:
    """A route path with its parameters filled in from PATH_VALUES."""
    return re.sub(r":(\w+)", lambda m: PATH_VALUES[m.group(1)], path)


def q(text: str) -> str:
    """Percent-encode a path parameter (client id, topic, node)."""
    from urllib.parse import quote

    return quote(text, safe="")
