"""A client id unique in the cluster: taking a client and its session over from another node.

Theory of operation
-------------------
When a client CONNECTs on node B (and is authenticated), B's broker asks its `session_locator`
(`broker.core.cluster_port`) before opening the session; `ClusterSessionLocator` is that
locator. It calls RPC `surrender_session {client_id, clean_start}` on every other live node at
once. A node that has a connection with that client id closes it with 0x8E (Session taken over);
a node that has its session exports it (`Session.export_state`: subscriptions, queued and
inflight messages, QoS 2 ids awaiting PUBREL), discards it (its routes are withdrawn) and
returns the state, unless the new connection starts clean (then nothing is carried). B imports
the state (re-subscribing, so routes are announced here), and the CONNACK says session present.

At most one node should hold the session; after a partition there may be two, and the one
disconnected last (`disconnected_at`) wins, the other is discarded. A node that does not answer
within the timeout is skipped: the CONNECT goes on with what the others gave (a client on a
node cut off by a partition keeps its connection there until the partition heals).

Limits: messages routed to the old node between its surrender and the new node's route
announcement reaching the publishers are lost (QoS 0) or dropped (QoS 1/2, counted), as they
would be for any route change; two connections of the same client id racing on two nodes at
the same moment may both stay up (each asks the other before either has a session).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from broker.core.cluster_port import SessionState, TakeoverDone

if TYPE_CHECKING:
    from broker.core.broker import Broker

log = logging.getLogger(__name__)

#: The RPC method a node serves to give a client up.
SURRENDER_METHOD = "surrender_session"
#: Session state larger than this (payloads and topics, roughly) loses its newest queued
#: messages (counted as dropped) so that the answer fits in one cluster frame.
MAX_STATE_BYTES = 8 * 1024 * 1024

#: (node, method, args, timeout) -> result; raises on failure (`ClusterNode.call`).
Call = Callable[[str, str, dict[str, Any], float], Awaitable[Any]]


def surrender_args(client_id: str, clean_start: bool) -> dict[str, Any]:
    return {"client_id": client_id, "clean_start": clean_start}


def serve_surrender(
    broker: Broker, args: dict[str, Any], from_node: str, max_bytes: int = MAX_STATE_BYTES
) -> SessionState | None:
    """The `surrender_session` RPC method on the node that may hold the client."""
    client_id = args.get("client_id")
    clean_start = args.get("clean_start", False)
    if not isinstance(client_id, str) or not client_id or not isinstance(clean_start, bool):
        raise ValueError("surrender_session needs client_id (str) and clean_start (bool)")
    state = broker.surrender_session(client_id, from_node, clean_start=clean_start)
    if state is not None:
        dropped = trim_state(state, max_bytes)
        if dropped:
            broker.metrics.counters["messages/dropped"] += dropped
            log.warning("session of %s: %d queued messages dropped to fit the move to %s",
                        client_id, dropped, from_node)  # fmt: skip
    return state


def trim_state(state: SessionState, max_bytes: int) -> int:
    """Drop the newest queued messages of an exported state until it is about `max_bytes`;
    returns how many were dropped."""
    size = 0
    for item in state.get("inflight") or ():
        size += _message_size(item[1])
    queue: list[Any] = state.get("queue") or []
    keep = 0
    for item in queue:
        size += _message_size(item[0])
        if size > max_bytes:
            break
        keep += 1
    dropped = len(queue) - keep
    if dropped:
        state["queue"] = queue[:keep]
    return dropped


def _message_size(message: Any) -> int:
    if not isinstance(message, dict):
        return 0
    payload, topic = message.get("payload", b""), message.get("topic", "")
    return 64 + (len(payload) if isinstance(payload, bytes) else 0) + len(str(topic))


def pick_state(states: Iterable[SessionState | None]) -> SessionState | None:
    """The state to keep when several nodes answered: at most one should have one; else the
    session disconnected last."""
    found = [s for s in states if isinstance(s, dict)]
    if len(found) > 1:
        log.warning("client %s had a session on %d nodes; keeping the latest",
                    found[0].get("client_id"), len(found))  # fmt: skip
    best: SessionState | None = None
    for state in found:
        if best is None or _disconnected_at(state) > _disconnected_at(best):
            best = state
    return best


def _disconnected_at(state: SessionState) -> float:
    value = state.get("disconnected_at")
    return float(value) if isinstance(value, int | float) else float("-inf")


class ClusterSessionLocator:
    """The broker's `session_locator` in a cluster: every other live node gives the client up.

    `peers()` names the other live nodes; `call` is `ClusterNode.call`. `done` always runs,
    with None when nobody had the session or nobody answered in time.
    """

    def __init__(self, peers: Callable[[], list[str]], call: Call, timeout: float = 3.0) -> None:
        self.peers = peers
        self.call = call
        self.timeout = timeout
        self.stats: dict[str, int] = {"takeovers": 0, "sessions_moved": 0, "failures": 0}
        self._pending: dict[asyncio.Task[None], TakeoverDone] = {}

    def takeover(self, client_id: str, clean_start: bool, done: TakeoverDone) -> bool:
        peers = self.peers()
        if not peers:
            return False
        self.stats["takeovers"] += 1
        answered = False

        def once(state: SessionState | None) -> None:
            nonlocal answered
            if not answered:
                answered = True
                done(state)

        task = asyncio.get_running_loop().create_task(
            self._run(peers, client_id, clean_start, once)
        )
        self._pending[task] = once
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)

    async def _run(
        self, peers: list[str], client_id: str, clean_start: bool, done: TakeoverDone
    ) -> None:
        state: SessionState | None = None
        args = surrender_args(client_id, clean_start)
        try:
            answers = await asyncio.gather(*(self._ask(peer, args) for peer in peers))
            state = pick_state(answers)
            if state is not None:
                self.stats["sessions_moved"] += 1
        finally:
            done(state)  # also when cancelled (the node stops): the CONNECT goes on alone

    async def _ask(self, peer: str, args: dict[str, Any]) -> SessionState | None:
        try:
            answer = await self.call(peer, SURRENDER_METHOD, args, self.timeout)
        except Exception as exc:  # unreachable, timeout, remote error: that node is skipped
            self.stats["failures"] += 1
            log.info("takeover of %s: %s did not answer: %s", args["client_id"], peer, exc)
            return None
        return answer if isinstance(answer, dict) else None

    def close(self) -> None:
        """Cancel the takeovers in progress; their CONNECTs go on alone (`done(None)`)."""
        for task, once in list(self._pending.items()):
            task.cancel()
            once(None)
