"""A claim in flight when the client id's owner is killed goes to the stand-in at once
(`cluster.link_loss`, issue 14): two CONNECTs with one id end with one connection, and the
loser gets DISCONNECT 0x8E (MQTT-3.1.4-3, across nodes) before the killed owner is declared
dead.

Real node processes started with the CLI on loopback. The owner O of the id is frozen
(SIGSTOP: its kernel still takes both claims into its socket buffers, nothing answers), two
clients CONNECT with that id on B and on C, then O is SIGKILLed: its kernel closes its
sockets, B's and C's links to O end, a new dial is refused, and the pending claims fail and
are retried at the next node of the id's rendezvous order among the members, where they meet.
(Before, each claim waited for the RPC timeout or O's dead verdict, whichever came first; a
CONNECT whose claim timed out went on alone, and the pair was resolved only by the
registration after the verdict. So the loser's 0x8E never came before both B and C had
declared O dead: that is what the test asserts, by the node logs read when the 0x8E arrives.)
Only processes started here are signalled, by their PIDs; every wait is bounded; nothing
asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rawclient import RawClient
from test_cluster_first_sync import banner, launch
from test_cluster_processes import TIMEOUT, NodeProc, node_list, reap, until

from broker.protocol.constants import MQTT_5, ReasonCode
from broker.protocol.packets import ConnAck, Connect, Disconnect, Packet
from cluster.registry import owner_of

pytestmark = pytest.mark.cluster

OWNER, B, C = "ko@127.0.0.1", "kb@127.0.0.1", "kc@127.0.0.1"


@pytest.fixture
def nodes() -> Iterator[list[NodeProc]]:
    started: list[NodeProc] = []
    yield started
    reap(started)


def owned_by_o() -> str:
    for i in range(1000):
        cid = f"inflight-{i}"
        if owner_of(cid, [OWNER, B, C]) == OWNER:
            return cid
    raise AssertionError("no client id owned by OWNER")


async def open_connect(port: int, cid: str) -> RawClient:
    """Send CONNECT without waiting for the CONNACK (it waits for the claim)."""
    client = await RawClient.open(port, MQTT_5)
    client.send(Connect(cid, protocol_level=MQTT_5, clean_start=True))
    return client


async def next_packet(client: RawClient) -> Packet | None:
    try:
        return await client.recv(3 * TIMEOUT)
    except (EOFError, ConnectionError, TimeoutError):
        return None


async def test_claim_in_flight_to_a_killed_owner_meets_the_other_at_the_stand_in(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[cluster]\ndead_hold = 60\n", encoding="utf-8")
    o = await banner(launch(OWNER, tmp_path, config), tmp_path)
    nodes.append(o)
    join = ("--join", f"127.0.0.1:{o.ports['cluster']}")
    b = await banner(launch(B, tmp_path, config, *join), tmp_path)
    nodes.append(b)
    c = await banner(launch(C, tmp_path, config, *join), tmp_path)
    nodes.append(c)
    for node in (o, b, c):
        await until(lambda n=node: _all_running(n), 3 * TIMEOUT)  # type: ignore[misc]
    cid = owned_by_o()
    os.kill(o.proc.pid, signal.SIGSTOP)  # our own child, by its PID
    one = await open_connect(b.mqtt, cid)
    two = await open_connect(c.mqtt, cid)
    try:
        await asyncio.sleep(0.3)  # both claims are in O's socket buffers (not an assertion)
        o.proc.kill()  # our own child, by its PID
        killed = time.monotonic()
        o.proc.wait(TIMEOUT)
        acks = await asyncio.gather(one.recv(3 * TIMEOUT), two.recv(3 * TIMEOUT))
        assert all(isinstance(a, ConnAck) and a.reason_code == 0 for a in acks), acks
        waits = {asyncio.ensure_future(next_packet(x)): x for x in (one, two)}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        # What B and C had logged when the first of the two connections heard something.
        dead_seen = [f"node {OWNER} is dead" in (tmp_path / f"{n}.log").read_text() for n in (B, C)]
        print(f"first packet after the CONNACKs {time.monotonic() - killed:.3f} s after the kill")
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        first = done.pop()
        packet, loser = first.result(), waits[first]
        winner = two if loser is one else one
        assert isinstance(packet, Disconnect), packet
        assert packet.reason_code == ReasonCode.SESSION_TAKEN_OVER
        assert not all(dead_seen), "the pair was resolved only after O's dead verdict"
        assert not await winner.closed(timeout=1.0) and not winner.pending
    finally:
        await one.close()
        await two.close()


async def _all_running(node: NodeProc) -> bool:
    return sorted(await node_list(node)) == sorted([OWNER, B, C])
