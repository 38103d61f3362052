"""On asyncio's own loop a node serves plain MQTT over TCP with the lean transport
(`broker.server.socket_transport`), which is what makes an idle connection cost about 1.3 KB
instead of 2.8 KB (issue 15); the memory work must not be lost to a silent fallback. A real
client over a real socket; the node is in this process, so its objects can be looked at."""

from __future__ import annotations

import asyncio

import pytest
from rawclient import RawClient

from broker.protocol.packets import ConnAck, PingReq, PingResp
from broker.server.node import Node
from broker.server.socket_transport import SocketTransport, available
from broker.server.tcp import MqttConnection


async def test_a_tcp_client_is_served_by_the_lean_transport(node: Node) -> None:
    if not available(asyncio.get_running_loop()):
        pytest.skip("the lean transport needs asyncio's selector loop and epoll (Linux)")
    client, ack = await RawClient.connect(node.tcp_port, "lean-1")
    try:
        assert isinstance(ack, ConnAck) and ack.reason_code == 0
        channel = node.broker.connected["lean-1"]
        link = channel.link
        assert isinstance(link, MqttConnection)
        assert type(link.transport) is SocketTransport
        assert link.transport.get_write_buffer_size() == 0
        assert link.transport._buffer is None  # idle: no write buffer object
        client.send(PingReq())
        assert isinstance(await client.recv(), PingResp)
    finally:
        await client.close()
    for _ in range(200):  # the close reaches the node: its channel goes
        if "lean-1" not in node.broker.connected:
            break
        await asyncio.sleep(0.01)
    assert "lean-1" not in node.broker.connected
