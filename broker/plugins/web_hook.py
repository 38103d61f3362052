"""web_hook: POST client and message events as JSON to a URL (EMQX's emqx_web_hook).

Events and bodies (EMQX 3.x field names; a missing username is ``"undefined"``):

  client.connected     ``{"action": "client_connected", "client_id", "username", "ipaddress",
                       "proto_ver", "keepalive", "connected_at", "node"}``
  client.disconnected  ``{"action": "client_disconnected", "client_id", "username", "reason",
                       "node"}``
  session.subscribed   ``{"action": "session_subscribed", "client_id", "username", "topic",
                       "opts": {"qos"}, "node"}``
  message.publish      ``{"action": "message_publish", "from_client_id", "from_username",
                       "topic", "qos", "retain", "payload", "ts", "node"}``

The hooks never wait for the network: an event goes into a bounded queue (``queue_size``,
default 10000) and one worker task posts the events in order with an aiohttp ClientSession.
A full queue drops the event (`dropped`, logged). A failed POST (connection error, timeout, or
a status other than 2xx) is retried up to ``max_retries`` times (default 3), waiting
``retry_backoff`` seconds (default 0.5) doubled after each attempt and capped at 30 s; after the
last attempt the event is given up (`failed`). The payload is sent as text (``encode_payload =
"plain"``, invalid UTF-8 replaced) or base64 (``"base64"``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

import aiohttp

from broker.core.hooks import ClientInfo
from broker.core.message import Message
from broker.plugins.base import Plugin, PluginContext, PluginLoadError
from broker.server.config import WEB_HOOK_EVENTS, plugin_defaults

__all__ = ["WebHookPlugin"]

log = logging.getLogger(__name__)

UNDEFINED = "undefined"
MAX_BACKOFF = 30.0


class WebHookPlugin(Plugin):
    name = "web_hook"
    description = "POSTs client and message events as JSON to a URL"

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self.events: frozenset[str] = frozenset(WEB_HOOK_EVENTS)
        self.max_retries = 3
        self.retry_backoff = 0.5
        self.timeout = 5.0
        self.base64_payload = False
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1)
        self._worker: asyncio.Task[None] | None = None
        self.posted = 0
        self.retried = 0
        self.failed = 0
        self.dropped = 0

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        cfg = {**plugin_defaults(self.name), **ctx.config}
        self.url = str(cfg["url"])
        if not self.url:
            raise PluginLoadError("no URL: set url in [plugins.web_hook]")
        self.events = frozenset(cfg["events"])
        self.max_retries = int(cfg["max_retries"])
        self.retry_backoff = float(cfg["retry_backoff"])
        self.timeout = float(cfg["timeout"])
        self.base64_payload = cfg["encode_payload"] == "base64"
        self.queue = asyncio.Queue(int(cfg["queue_size"]))
        hooks = ctx.broker.hooks
        if "client.connected" in self.events:
            self.attach(hooks.client_connected, self.on_client_connected)
        if "client.disconnected" in self.events:
            self.attach(hooks.client_disconnected, self.on_client_disconnected)
        if "session.subscribed" in self.events:
            self.attach(hooks.session_subscribed, self.on_session_subscribed)
        if "message.publish" in self.events:
            self.attach(hooks.message_publish, self.on_message_publish)

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if not self.queue.empty():
            log.warning("web_hook: %d events not posted at stop", self.queue.qsize())

    # -- hooks: build the event, queue it, never wait -----------------------------------

    def on_client_connected(self, client: ClientInfo) -> None:
        channel = self.broker.connected.get(client.client_id)
        self._enqueue(
            {
                "action": "client_connected",
                "client_id": client.client_id,
                "username": _username(client.username),
                "ipaddress": client.peer_host,
                "proto_ver": client.protocol_level,
                "keepalive": channel.keepalive if channel is not None else 0,
                "connected_at": int(channel.connected_at if channel else self.broker.clock()),
            }
        )

    def on_client_disconnected(self, client: ClientInfo, reason: str) -> None:
        self._enqueue(
            {
                "action": "client_disconnected",
                "client_id": client.client_id,
                "username": _username(client.username),
                "reason": reason or "normal",
            }
        )

    def on_session_subscribed(self, client: ClientInfo, topic: str, qos: int) -> None:
        self._enqueue(
            {
                "action": "session_subscribed",
                "client_id": client.client_id,
                "username": _username(client.username),
                "topic": topic,
                "opts": {"qos": qos},
            }
        )

    def on_message_publish(self, message: Message) -> Message | None:
        channel = self.broker.connected.get(message.publisher)
        if self.base64_payload:
            payload = base64.b64encode(message.payload).decode("ascii")
        else:
            payload = message.payload.decode("utf-8", errors="replace")
        self._enqueue(
            {
                "action": "message_publish",
                "from_client_id": message.publisher,
                "from_username": _username(channel.username if channel is not None else None),
                "topic": message.topic,
                "qos": message.qos,
                "retain": message.retain,
                "payload": payload,
                "ts": int(message.timestamp * 1000),
            }
        )
        return message

    def _enqueue(self, event: dict[str, Any]) -> None:
        event["node"] = self.broker.node_name
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("web_hook: queue full, %d events dropped so far", self.dropped)

    # -- the worker ---------------------------------------------------------------------

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                event = await self.queue.get()
                await self._post(session, event)

    async def _post(self, session: aiohttp.ClientSession, event: dict[str, Any]) -> None:
        delay = self.retry_backoff
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retried += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            try:
                async with session.post(self.url, json=event) as response:
                    if 200 <= response.status < 300:
                        self.posted += 1
                        return
                    problem = f"HTTP {response.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.debug("web_hook: %s failed (%s), attempt %d", event["action"], problem, attempt + 1)
        self.failed += 1
        log.warning(
            "web_hook: giving up %s after %d attempts: %s",
            event["action"],
            self.max_retries + 1,
            problem,
        )


def _username(username: str | None) -> str:
    return username if username is not None else UNDEFINED
