"""Reliable QoS 1/2 forwards (`cluster.outbox`) over real sockets, against a scripted peer.

The peer does the accepting side of the handshake at the version it chooses and records every
frame; it can drop its connections (a cut link) and refuse new ones for a while. Our side is a
real `Transport` with a `Forwarder`; acknowledgements are handed to `Forwarder.ack` as the
runtime does when a FORWARD_ACK arrives (`test_cluster_delivery.py` runs the whole path).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from api_support import eventually
from scripted_peer import Peer

from broker.core.message import Message
from cluster.forwarder import Forwarder
from cluster.transport import Transport, TransportConfig
from cluster.wire import (
    Body,
    MessageType,
)


@pytest.fixture
async def sender() -> AsyncIterator[tuple[Transport, Forwarder, list[int]]]:
    dropped: list[int] = []
    config = TransportConfig(backoff_min=0.05, backoff_max=0.2)
    transport = Transport("a@127.0.0.1", 1, "cookie", lambda *a: None, config=config)
    forwarder = Forwarder(transport, "a@127.0.0.1", Counter(), dropped.append)
    transport.on_link_up = forwarder.link_up
    yield transport, forwarder, dropped
    await transport.close()


async def connected(transport: Transport, peer: Peer) -> None:
    transport.send(peer.address, MessageType.GOSSIP, {"from": "a@127.0.0.1", "updates": []})
    await eventually(lambda: transport.is_up(peer.address))


def msg(i: int, qos: int = 1) -> Message:
    return Message(f"t/{i}", b"x", qos, False, {}, "c", 0.0)


async def test_qos_1_2_batches_are_numbered_and_held_until_acknowledged(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    transport, forwarder, dropped = sender
    peer = Peer(3)
    await peer.start()
    try:
        await connected(transport, peer)
        for i in range(6):  # one loop turn: QoS 1, 2 and 0 mixed, one frame
            forwarder.send(peer.address, msg(i, qos=i % 3))
        await eventually(lambda: len(peer.batches()) == 1)
        assert peer.batches() == [(1, [f"t/{i}" for i in range(6)])]
        assert forwarder.held() == 4  # the QoS 1 and 2 ones
        forwarder.send(peer.address, msg(6, qos=0))  # QoS 0 alone: not numbered
        await eventually(lambda: len(peer.batches()) == 2)
        assert peer.batches()[1] == (None, ["t/6"])
        forwarder.ack(peer.address, 1)
        assert forwarder.held() == 0 and dropped == []
    finally:
        await peer.close()


async def test_a_cut_link_gets_the_unacknowledged_batches_again_in_order(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    """Cut, then refused for a while: what was sent and not acknowledged goes again with its
    number when the link is back, then what was parked meanwhile; nothing is dropped."""
    transport, forwarder, dropped = sender
    peer = Peer(3)
    await peer.start()
    try:
        await connected(transport, peer)
        forwarder.send(peer.address, msg(0))
        await eventually(lambda: len(peer.batches()) == 1)
        forwarder.ack(peer.address, 1)
        forwarder.send(peer.address, msg(1))
        await eventually(lambda: len(peer.batches()) == 2)  # seq 2, never acknowledged
        peer.refusing = True
        peer.cut()
        await eventually(lambda: not transport.is_up(peer.address))
        forwarder.send(peer.address, msg(2))  # parked: the link is down
        forwarder.send(peer.address, msg(3, qos=2))
        await asyncio.sleep(0)
        assert forwarder.held() == 3 and forwarder.stats["forward/parked"] == 2
        peer.refusing = False
        await eventually(lambda: len(peer.batches()) == 4)
        assert peer.batches()[2:] == [(2, ["t/1"]), (3, ["t/2", "t/3"])]
        assert forwarder.stats["forward/resent"] == 1
        forwarder.ack(peer.address, 3)
        assert forwarder.held() == 0 and dropped == []
    finally:
        await peer.close()


async def test_a_dead_peer_drops_and_counts_and_a_full_buffer_holds_no_more(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    transport, forwarder, dropped = sender
    forwarder.max_held = 5
    peer = Peer(3)
    await peer.start()
    try:
        await connected(transport, peer)
        peer.refusing = True
        peer.cut()
        await eventually(lambda: not transport.is_up(peer.address))
        for i in range(7):
            forwarder.send(peer.address, msg(i))
        forwarder.flush()
        # over the bound: sent as a QoS 0 message would be (the transport drops and counts
        # them if the link cannot take them), not held
        assert forwarder.held() == 5 and forwarder.stats["forward/not_held"] == 2
        await eventually(lambda: transport.stats["dropped"] == 2)
        forwarder.forget(peer.address)  # declared dead
        assert forwarder.held() == 0 and dropped == [5]
        assert forwarder.stats["forward/held_dropped/peer_gone"] == 5
    finally:
        await peer.close()


async def test_a_version_2_peer_gets_plain_batches_and_nothing_is_held(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    """Wire compatibility: numbers and acknowledgements only on a version-3 link."""
    transport, forwarder, _ = sender
    peer = Peer(2)
    await peer.start()
    try:
        await connected(transport, peer)
        assert transport.peer_version(peer.address) == 2
        for i in range(3):
            forwarder.send(peer.address, msg(i, qos=2))
        await eventually(lambda: len(peer.batches()) == 1)
        assert peer.batches() == [(None, ["t/0", "t/1", "t/2"])]
        assert peer.frames[-1][0] == 2  # encoded in the negotiated version
        assert forwarder.held() == 0
    finally:
        await peer.close()


async def test_a_peer_that_dials_us_ends_our_backoff_towards_it() -> None:
    """A restarted peer joins by dialling us: our link to it, backing off since it died,
    reconnects at once (its join answer and the forwards held for it go out now, not after
    the backoff)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there yet: our first dial fails
    config = TransportConfig(backoff_min=60.0, backoff_max=60.0)
    a = Transport("a@127.0.0.1", 1, "cookie", lambda *x: None, config=config)
    b = Transport("b@127.0.0.1", 2, "cookie", lambda *x: None)
    try:
        a.address = ("127.0.0.1", await a.listen("127.0.0.1", 0))
        gossip: Body = {"from": "a@127.0.0.1", "updates": []}
        a.send(("127.0.0.1", port), MessageType.GOSSIP, gossip)
        await eventually(lambda: a.stats["link_failures"] == 1)
        assert not a.accepting(("127.0.0.1", port))  # backing off for a minute
        b.address = ("127.0.0.1", await b.listen("127.0.0.1", port))
        b.send(a.address, MessageType.GOSSIP, {"from": "b@127.0.0.1", "updates": []})
        await eventually(lambda: a.stats["accepted"] == 1)
        assert a.accepting(("127.0.0.1", port))
        a.send(("127.0.0.1", port), MessageType.GOSSIP, gossip)
        await eventually(lambda: a.is_up(("127.0.0.1", port)))
    finally:
        await a.close()
        await b.close()


async def test_what_is_held_follows_a_peer_that_comes_back_on_another_address(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    """A restarted peer with a new address (a new pod IP): the held messages go to it."""
    transport, forwarder, dropped = sender
    old, new = Peer(3), Peer(3)
    await old.start()
    await new.start()
    try:
        await connected(transport, old)
        old.refusing = True
        old.cut()
        await eventually(lambda: not transport.is_up(old.address))
        forwarder.send(old.address, msg(0))
        forwarder.flush()
        assert forwarder.held() == 1
        forwarder.move(old.address, new.address)  # the membership saw its new address
        await eventually(lambda: len(new.batches()) == 1)
        assert new.batches() == [(1, ["t/0"])] and dropped == []
    finally:
        await old.close()
        await new.close()


async def test_a_peer_declared_dead_within_its_grace_keeps_getting_held_messages(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    """The dead verdict closes the link (`PeerGrace.dead`: `Transport.forget`) but keeps the
    outbox: with no link, and so no negotiated version, new QoS 1/2 messages for the peer are
    still held (its outbox says it takes numbered batches), the link is dialled, and when the
    peer answers again the unacknowledged batch and the parked ones go, in order; nothing is
    dropped. QoS 0 is not held."""
    transport, forwarder, dropped = sender
    peer = Peer(3)
    await peer.start()
    try:
        await connected(transport, peer)
        forwarder.send(peer.address, msg(0))
        await eventually(lambda: len(peer.batches()) == 1)  # seq 1, never acknowledged
        peer.refusing = True
        peer.cut()
        transport.forget(peer.address)  # declared dead
        forwarder.resume(peer.address)
        assert transport.peer_version(peer.address) is None
        forwarder.send(peer.address, msg(1))
        forwarder.send(peer.address, msg(2, qos=2))
        forwarder.send(peer.address, msg(3, qos=0))  # not held: dropped and counted
        forwarder.flush()
        assert forwarder.held() == 3 and forwarder.stats["forward/parked"] == 2
        await eventually(lambda: transport.stats["dropped/FORWARD"] >= 1)
        peer.refusing = False  # back (a healed partition)
        await eventually(lambda: len(peer.batches()) == 3)
        assert peer.batches()[1:] == [(1, ["t/0"]), (2, ["t/1", "t/2"])]
        forwarder.ack(peer.address, 2)
        assert forwarder.held() == 0 and dropped == []
    finally:
        await peer.close()
