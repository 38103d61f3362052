"""What the takeover's RPCs carry: the method names, the limits, and the exported session
state a holder gives up (`serve_surrender`, trimmed to fit one frame; `pick_state` when several
nodes answered).

Why a module of its own: these are the takeover's vocabulary and its one data shape, shared by
the claimant and holder (`cluster.takeover`), the owner (`cluster.takeover_owner`), the
registration rounds (`cluster.takeover_rounds`) and the ports that register the methods
(`cluster.ports`); none of those has to import another for them. `cluster.takeover` re-exports
them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState
from broker.core.session import Session
from cluster.registry import Stamp

log = logging.getLogger("cluster.takeover")

#: The RPC method a node serves to give a client up.
SURRENDER_METHOD = "surrender_session"
#: The owner's methods: a CONNECT's claim, holders registering again, sessions that ended.
CLAIM_METHOD = "registry_claim"
REGISTER_METHOD = "registry_register"
RELEASE_METHOD = "registry_release"
#: A holder that lost a conflict drops the client id.
EVICT_METHOD = "session_evict"
#: A claim older than this many claim timeouts (by its stamp) is refused: its caller gave up.
STALE_CLAIMS = 2
#: Entries per `registry_register` / `registry_release` call.
BATCH = 2_000
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


def view_of(nodes: Iterable[str]) -> tuple[str, ...]:
    """A member list as one comparable value (the view a registration was confirmed under)."""
    return tuple(sorted(nodes))


def chunks(entries: dict[str, Stamp]) -> list[dict[str, Stamp]]:
    """`entries` in pieces of at most `BATCH`, one RPC each."""
    items = list(entries.items())
    return [dict(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]


def parse_winners(value: Any) -> dict[str, str]:
    """`to` of `session_evict` and of `registry_register`'s answer: client id -> the node that
    holds it now (malformed pairs are left out: their queue is then counted as dropped)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def log_released(session: Session, how: str) -> None:
    """Name the QoS 2 messages a copy that goes had released but not seen completed (awaiting
    PUBCOMP): they are not passed on as messages, as the client has them if the PUBREL
    reached it (a copy that asks takes the exchange over instead, `cluster.takeover_heal`).
    This line is how a loss there would be traced in a node's log."""
    released = [e.message for e in session.inflight.values() if e.awaiting_comp]
    if released:
        log.info("client %s: its %s copy had %d released awaiting PUBCOMP, not passed on: %s",
                 session.client_id, how, len(released),
                 ", ".join(repr(m.payload[:24]) for m in released[:8]))  # fmt: skip
