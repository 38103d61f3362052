"""On asyncio's own loop and on uvloop's a node serves plain MQTT over TCP with the lean
transport (`broker.server.socket_transport`), which is what makes an idle connection cost about
1.3 KB instead of 2.8 KB (asyncio) or 2.1 KB (uvloop) (issue 15); the memory work must not be
lost to a silent fallback. Real clients over real sockets; the node is in this process, so its
objects can be looked at. Every test runs on asyncio's loop (with the poller's own epoll and on
the `LeanSelector` that `minibroker start` uses) and on uvloop's (when installed)."""

from __future__ import annotations

import asyncio

import pytest
from loops import LOOPS, loop_policy
from rawclient import RawClient

from broker.protocol.codec import encode
from broker.protocol.packets import (
    ConnAck,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.lean_selector import LeanSelector
from broker.server.node import Node
from broker.server.socket_transport import SocketTransport, available
from broker.server.tcp import MqttConnection

# pytest-asyncio 1.x deprecates this fixture for a conftest hook that would apply to every test
# of the directory; this module alone runs on both loops.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture(params=LOOPS, scope="module")
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test of this module on each loop of `loops.LOOPS`."""
    return loop_policy(request.param)


async def test_a_tcp_client_is_served_by_the_lean_transport(node: Node) -> None:
    if not available(asyncio.get_running_loop()):
        pytest.skip("the lean transport needs asyncio's selector loop or uvloop, and epoll")
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


async def test_messages_reach_a_subscriber_in_order_one_by_one_and_in_bursts(node: Node) -> None:
    """Lone messages (each sent at the end of the read that routed it) and a burst in one
    segment (one write for the read) arrive complete and in publishing order (MQTT-4.6.0-6:
    an ordered topic's messages are delivered in the order received)."""
    if not available(asyncio.get_running_loop()):
        pytest.skip("the lean transport needs asyncio's selector loop or uvloop, and epoll")
    sub, _ = await RawClient.connect(node.tcp_port, "order-sub")
    pub, _ = await RawClient.connect(node.tcp_port, "order-pub")
    try:
        sub.send(Subscribe(1, [SubscriptionRequest("order/t", 0)]))
        assert isinstance(await sub.recv(), SubAck)
        got: list[bytes] = []
        for i in range(20):  # one at a time: each one alone in its read
            pub.send(Publish("order/t", b"lone-%d" % i))
            packet = await sub.recv()
            assert isinstance(packet, Publish)
            got.append(packet.payload)
        burst = [Publish("order/t", b"burst-%d" % i) for i in range(200)]
        pub.send_raw(b"".join(encode(p) for p in burst))
        for _ in burst:
            packet = await sub.recv()
            assert isinstance(packet, Publish)
            got.append(packet.payload)
        assert got == [b"lone-%d" % i for i in range(20)] + [p.payload for p in burst]
    finally:
        await pub.close()
        await sub.close()


async def test_on_the_lean_selector_the_node_reads_from_the_loops_own_epoll(node: Node) -> None:
    """On the loop `minibroker start` makes (`LeanSelector`), a client's socket is in the
    loop's epoll, served from its `select` (one `epoll_wait` per wake-up), not in a poller's
    own: the latency work must not be lost to a silent fallback either."""
    selector = getattr(asyncio.get_running_loop(), "_selector", None)
    if not isinstance(selector, LeanSelector):
        pytest.skip("not the LeanSelector loop")
    client, _ = await RawClient.connect(node.tcp_port, "lean-sel")
    try:
        link = node.broker.connected["lean-sel"].link
        assert isinstance(link, MqttConnection)
        transport = link.transport
        assert isinstance(transport, SocketTransport)
        assert selector.transports[transport._fd] is transport
        assert transport._poller._epoll is selector.epoll
        client.send(PingReq())
        assert isinstance(await client.recv(), PingResp)
    finally:
        await client.close()
