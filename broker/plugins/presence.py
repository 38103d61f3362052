"""presence: client connected/disconnected events on `$SYS/brokers/<node>/clients/<clientid>/...`.

As EMQX's presence module: ``.../connected`` carries ``clientid``, ``username``, ``ipaddress``,
``proto_ver``, ``proto_name``, ``clean_start``, ``keepalive``, ``connack`` (0), ``connected_at``
and ``ts``; ``.../disconnected`` carries ``clientid``, ``username``, ``reason`` and ``ts``
(Unix seconds). Messages are not retained; QoS is ``qos`` in ``[plugins.presence]`` (0).
A missing username is ``"undefined"``, as in EMQX. A client id holding `+`, `#` or `/` would
make a wrong or invalid topic, so no event is published for it (counted in `skipped`).
"""

from __future__ import annotations

import json

from broker.core.hooks import ClientInfo
from broker.core.message import Message
from broker.plugins.base import Plugin, PluginContext
from broker.server.config import plugin_defaults

__all__ = ["PresencePlugin"]

UNDEFINED = "undefined"


class PresencePlugin(Plugin):
    name = "presence"
    description = "Client presence events on $SYS/brokers/<node>/clients/<clientid>/..."

    def __init__(self) -> None:
        super().__init__()
        self.qos = 0
        self.published = 0
        self.skipped = 0

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        self.qos = int(ctx.config.get("qos", plugin_defaults(self.name)["qos"]))
        self.attach(ctx.broker.hooks.client_connected, self.on_client_connected)
        self.attach(ctx.broker.hooks.client_disconnected, self.on_client_disconnected)

    def on_client_connected(self, client: ClientInfo) -> None:
        now = self.broker.clock()
        channel = self.broker.connected.get(client.client_id)
        payload = {
            "clientid": client.client_id,
            "username": client.username if client.username is not None else UNDEFINED,
            "ipaddress": client.peer_host,
            "proto_ver": client.protocol_level,
            "proto_name": channel.proto_name if channel is not None else "MQTT",
            "clean_start": channel.clean_start if channel is not None else True,
            "keepalive": channel.keepalive if channel is not None else 0,
            "connack": 0,
            "connected_at": int(channel.connected_at if channel is not None else now),
            "ts": int(now),
        }
        self._publish(client.client_id, "connected", payload, now)

    def on_client_disconnected(self, client: ClientInfo, reason: str) -> None:
        now = self.broker.clock()
        payload = {
            "clientid": client.client_id,
            "username": client.username if client.username is not None else UNDEFINED,
            "reason": reason or "normal",
            "ts": int(now),
        }
        self._publish(client.client_id, "disconnected", payload, now)

    def _publish(self, client_id: str, event: str, payload: dict[str, object], now: float) -> None:
        if any(c in client_id for c in "+#/"):
            self.skipped += 1
            return
        broker = self.broker
        topic = f"$SYS/brokers/{broker.node_name}/clients/{client_id}/{event}"
        data = json.dumps(payload).encode()
        broker.publish(Message(topic, data, self.qos, False, None, "", now, broker.node_name))
        self.published += 1
