"""Request/response calls between nodes over the cluster links, with ids and timeouts.

A call sends RPC_REQUEST `{id, method, args}` over our link to the peer; the peer runs the
method and answers RPC_RESPONSE `{id, ok, result | error}` over its link to our advertised
address. The caller waits on a future keyed by `id` for at most `timeout` seconds:

* the node is not a live member, or its link drops the request: `NodeUnreachable`;
* no answer in time (or the node dies meanwhile): `RpcTimeout` / `NodeUnreachable`;
* the method failed over there (unknown method, an exception): `RemoteError`.

All three are `RpcError`s. On the serving side a method is looked up first in the table that
`register()` fills (the cluster's own methods, such as `retained_dump`), then handed to the
injected fallback `rpc_handler(method, args)` (the management queries). Each request runs in a
task of its own; at most `max_concurrent` run at once per node, more are answered `busy`.
Arguments and results must be msgpack-able plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.wire import (
    Address,
    Body,
    MessageType,
    WireError,
    get_int,
    get_str,
    rpc_request_body,
    rpc_response_body,
)

__all__ = [
    "MethodHandler",
    "NodeUnreachable",
    "RemoteError",
    "RpcEndpoint",
    "RpcError",
    "RpcHandler",
    "RpcTimeout",
]

log = logging.getLogger(__name__)

#: The injected handler of everything not registered: (method, args) -> result.
RpcHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: A registered method: (args, calling node's name) -> result.
MethodHandler = Callable[[dict[str, Any], str], Awaitable[Any]]
#: How the endpoint sends a frame: (address, type, body) -> False if dropped.
Sender = Callable[[Address, MessageType, Body], bool]


class RpcError(Exception):
    """A call that did not produce a result."""


class NodeUnreachable(RpcError):
    """The node is not a live member, or the request could not be sent to it."""


class RpcTimeout(RpcError):
    """The node did not answer within the timeout."""


class RemoteError(RpcError):
    """The method raised (or does not exist) on the remote node."""


class RpcEndpoint:
    """Both sides of the RPC of one node: pending calls and the method table."""

    def __init__(
        self, node: str, send: Sender, fallback: RpcHandler | None, max_concurrent: int = 256
    ) -> None:
        self.node = node
        self.send = send
        self.fallback = fallback
        self.max_concurrent = max_concurrent
        self.methods: dict[str, MethodHandler] = {}
        self.stats: dict[str, int] = {"calls": 0, "timeouts": 0, "served": 0, "busy": 0}
        self._ids = itertools.count(1)
        #: The id of the last request made (calls up to it were sent before a given moment).
        self.last_id = 0
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        #: The address each pending call was sent to (`nodes_at`).
        self._sent_to: dict[int, Address] = {}
        self._serving: set[asyncio.Task[None]] = set()

    def register(self, method: str, handler: MethodHandler) -> None:
        """Serve `method` with `handler(args, from_node)` (replaces an earlier one)."""
        self.methods[method] = handler

    # -- calling ---------------------------------------------------------------------------

    async def call(
        self, node: str, address: Address, method: str, args: dict[str, Any], timeout: float
    ) -> Any:
        request_id = self.last_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.stats["calls"] += 1
        try:
            sent = self.send(
                address, MessageType.RPC_REQUEST, rpc_request_body(request_id, method, args)
            )
        except WireError as exc:
            raise RemoteError(f"cannot send {method} to {node}: {exc}") from exc
        if not sent:
            raise NodeUnreachable(node)
        self._pending[request_id] = (node, future)
        self._sent_to[request_id] = address
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            self.stats["timeouts"] += 1
            raise RpcTimeout(f"{node} did not answer {method} within {timeout:g} s") from None
        finally:
            self._pending.pop(request_id, None)
            self._sent_to.pop(request_id, None)

    def handle_response(self, from_node: str, body: Body) -> None:
        try:
            request_id = get_int(body, "id")
        except WireError:
            return
        pending = self._pending.get(request_id)
        if pending is None or pending[0] != from_node or pending[1].done():
            return  # late (timed out) or not ours
        future = pending[1]
        if body.get("ok") is True:
            future.set_result(body.get("result"))
        else:
            future.set_exception(RemoteError(f"{from_node}: {body.get('error')}"))

    def fail_node(self, node: str, up_to: int | None = None) -> int:
        """The node died or left: its pending calls (those with ids up to `up_to`, if given)
        fail now rather than at their timeout; returns how many."""
        failed = 0
        for request_id, (pending_node, future) in list(self._pending.items()):
            if pending_node != node or future.done():
                continue
            if up_to is None or request_id <= up_to:
                future.set_exception(NodeUnreachable(node))
                failed += 1
        return failed

    def nodes_at(self, address: Address) -> set[str]:
        """The nodes of the calls pending at `address`."""
        return {self._pending[i][0] for i, a in self._sent_to.items() if a == address}

    def pending_to(self, node: str) -> bool:
        """Some call to `node` waits for its answer."""
        return any(n == node and not f.done() for n, f in self._pending.values())

    # -- serving ---------------------------------------------------------------------------

    async def dispatch(self, method: str, args: dict[str, Any], from_node: str) -> Any:
        """Run one method here (also how a node calls itself)."""
        handler = self.methods.get(method)
        if handler is not None:
            return await handler(args, from_node)
        if self.fallback is None:
            raise LookupError(f"no RPC method {method!r}")
        return await self.fallback(method, args)

    def handle_request(self, from_node: str, reply_to: Address, body: Body) -> None:
        try:
            request_id = get_int(body, "id")
            method = get_str(body, "method")
        except WireError:
            return
        args = body.get("args")
        if not isinstance(args, dict):
            args = {}
        if len(self._serving) >= self.max_concurrent:
            self.stats["busy"] += 1
            self._reply(reply_to, rpc_response_body(request_id, error="busy"))
            return
        task = asyncio.get_running_loop().create_task(
            self._serve(request_id, method, args, from_node, reply_to)
        )
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(
        self, request_id: int, method: str, args: dict[str, Any], from_node: str, reply_to: Address
    ) -> None:
        try:
            result = await self.dispatch(method, args, from_node)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cluster RPC %s from %s failed: %r", method, from_node, exc)
            self._reply(
                reply_to, rpc_response_body(request_id, error=f"{type(exc).__name__}: {exc}")
            )
            return
        self.stats["served"] += 1
        try:
            self._reply(reply_to, rpc_response_body(request_id, result))
        except WireError as exc:  # not msgpack-able, or too large for a frame
            log.error("cluster RPC %s: cannot send the result to %s: %s", method, from_node, exc)
            self._reply(reply_to, rpc_response_body(request_id, error=f"bad result: {exc}"))

    def _reply(self, address: Address, body: Body) -> None:
        if not self.send(address, MessageType.RPC_RESPONSE, body):
            log.info("cluster RPC: response to %s:%d dropped", *address)

    async def close(self) -> None:
        for _node, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(NodeUnreachable("cluster stopped"))
        tasks = list(self._serving)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
