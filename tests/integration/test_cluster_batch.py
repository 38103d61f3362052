"""Forwards in batches (`cluster.forwarder`) over real sockets, against peers of both versions.

A peer here is a small asyncio server that does the accepting side of the handshake and
answers HELLO_ACK with the version it chooses, then records every frame it gets. Our side is
a real `Transport` with a `Forwarder`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_support import eventually
from scripted_peer import Peer

from broker.core.message import Message
from cluster.forwarder import Forwarder
from cluster.transport import Transport, TransportConfig
from cluster.wire import (
    MessageType,
    parse_forward_batch,
)


@pytest.fixture
async def sender() -> AsyncIterator[tuple[Transport, Forwarder, list[int]]]:
    dropped: list[int] = []
    transport = Transport("a@127.0.0.1", 1, "cookie", lambda *a: None, config=TransportConfig())
    forwarder = Forwarder(transport, "a@127.0.0.1", Counter(), dropped.append)
    yield transport, forwarder, dropped
    await transport.close()


async def connected(transport: Transport, peer: Peer) -> None:
    transport.send(peer.address, MessageType.GOSSIP, {"from": "a@127.0.0.1", "updates": []})
    await eventually(lambda: transport.peer_version(peer.address) is not None)


def msg(i: int) -> Message:
    return Message(f"t/{i}", b"x", 1, False, {}, "c", 0.0)


@pytest.mark.parametrize("version", [1, 2])
async def test_batches_only_to_a_peer_of_version_2(
    sender: tuple[Transport, Forwarder, list[int]], version: int
) -> None:
    transport, forwarder, dropped = sender
    peer = Peer(version, name="old")
    await peer.start()
    try:
        # before any handshake: one FORWARD per message (any peer understands it)
        forwarder.send(peer.address, msg(0))
        await connected(transport, peer)
        assert transport.peer_version(peer.address) == version
        for i in range(1, 51):  # one loop turn
            forwarder.send(peer.address, msg(i), {"kind": "retain"} if i == 7 else None)
        await eventually(lambda: len(peer.messages()) == 51)
        assert peer.messages() == [f"t/{i}" for i in range(51)]  # in order
        types = peer.types()
        if version == 1:
            assert types[MessageType.FORWARD] == 51 and not types[MessageType.FORWARD_BATCH]
            assert peer.frames[-1][0] == 1  # encoded in the negotiated version
        else:
            assert types[MessageType.FORWARD_BATCH] == 1 and types[MessageType.FORWARD] == 1
            batch = next(b for _, t, b in peer.frames if t is MessageType.FORWARD_BATCH)
            assert parse_forward_batch(batch)[0][6][1] == {"kind": "retain"}
        assert dropped == [] and transport.stats["dropped"] == 0
    finally:
        await peer.close()


async def test_a_large_turn_is_cut_into_bounded_batches(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    transport, forwarder, _ = sender
    forwarder.max_batch = 100
    peer = Peer(2, name="old")
    await peer.start()
    try:
        await connected(transport, peer)
        for i in range(250):
            forwarder.send(peer.address, msg(i))
        await eventually(lambda: len(peer.messages()) == 250)
        assert peer.messages() == [f"t/{i}" for i in range(250)]
        assert peer.types()[MessageType.FORWARD_BATCH] == 3  # 100 + 100 + the rest at turn end
    finally:
        await peer.close()


async def test_a_dropped_batch_counts_every_message(
    sender: tuple[Transport, Forwarder, list[int]],
) -> None:
    """A peer that goes away: the batches queued for it are dropped, counted as messages."""
    transport, forwarder, _ = sender
    lost: list[tuple[MessageType, int]] = []
    transport.on_drop = lambda address, msg_type, count: lost.append((msg_type, count))
    peer = Peer(2, name="old")
    await peer.start()
    await connected(transport, peer)
    link: Any = transport._links[peer.address]
    for i in range(40):
        forwarder.send(peer.address, msg(i))
    forwarder.flush()
    assert len(link.queue) == 1  # queued; its writer runs at the next turn, too late:
    transport.forget(peer.address)
    await eventually(lambda: sum(c for _, c in lost) == 40)
    assert {t for t, _ in lost} == {MessageType.FORWARD_BATCH}
    assert transport.stats["dropped/FORWARD_BATCH"] == 40
    await peer.close()


@pytest.mark.parametrize("version", [2, 3, 4])
async def test_a_run_is_one_entry_only_for_a_peer_of_version_4(
    sender: tuple[Transport, Forwarder, list[int]], version: int
) -> None:
    """`send_run` appends a run (`cluster.runs`) as one entry, in order with the messages,
    only on a link that negotiated `RUN_VERSION`; else it does nothing and says so (the
    caller then forwards message by message). A run counts as one entry towards
    `max_batch` (202 messages in 3 entries stay pending with a bound of 4), and as its
    messages in the counts."""
    from broker.protocol.codec import encode
    from broker.protocol.packets import Publish
    from broker.protocol.runs import PublishRun
    from cluster.wire import RUN_VERSION, ForwardedRun

    transport, forwarder, dropped = sender
    forwarder.max_batch = 4
    peer = Peer(version, name="old")
    await peer.start()
    try:
        await connected(transport, peer)
        frames = b"".join(encode(Publish("r/x", b"%04d" % i)) for i in range(200))
        run = ForwardedRun(PublishRun("r/x", frames, 200, len(frames) // 200, False), "pub")
        forwarder.send(peer.address, msg(0))
        taken = forwarder.send_run(peer.address, run)
        assert taken is (version >= RUN_VERSION)
        forwarder.send(peer.address, msg(1))
        if taken:
            assert forwarder.pending() == 202
            forwarder.send_run(peer.address, run)  # the 4th entry: max_batch, sent now
            assert forwarder.pending() == 0
        await eventually(lambda: len(peer.messages()) == 2)
        batches = [b for _, t, b in peer.frames if t is MessageType.FORWARD_BATCH]
        items = [item for b in batches for item in parse_forward_batch(b)[0]]
        kinds = ["run" if isinstance(i, ForwardedRun) else i[0].topic for i in items]
        assert kinds == (["t/0", "run", "t/1", "run"] if taken else ["t/0", "t/1"])
        assert forwarder.stats["forward/batched"] == (402 if taken else 2)
        assert dropped == []
    finally:
        await peer.close()
