"""The session move in two phases: the old node keeps what it surrendered until the new node
has committed it.

Why: with persistence and `durable_acks` the new node commits a moved persistent session before
its CONNACK (`broker.core.handle_connect`), but the old node let its copy go at the surrender.
A SIGKILL of the new node between the two lost the session and its queue (measured by
tests/integration/test_takeover_park.py before this module).

Theory of operation
-------------------
* **Old node H, at the surrender** (`park`): the exported state is kept here, *parked*: not a
  session (nothing serves or delivers it), with the new node B, the stamp of B's claim (from
  the owner's `surrender_session` call) and a token. The state carries `moved_from: [H,
  token]` to B. Every message that H's forwarding record sends on to B for that client
  (`cluster.handoff`; its `send` goes through `captured`) is also kept with the parked
  state.
* **New node B, after the import** (`imported`): once the session is durable here it calls
  `session_committed {client_id, token}` on H: after the commit that holds it when
  persistence waits for commits (`CommitGate.client_acks`, the same commit the CONNACK waits
  for), else at once (nothing more durable will come; without `durable_acks` the window of
  `persistence_interval` stands, as it does for every change: Persistence in the README).
  H then drops the parked state (`serve_committed`).
* **B is declared dead, leaves, or comes back as a new run before confirming**
  (`member_event`): H *reinstates* the parked state as its own session (disconnected,
  persistent, its queue, inflight window and QoS 2 stamps as surrendered; its arrival stamp
  kept), delivers the captured messages into it (`deliver_to`: the session's QoS 2 stamps
  refuse one it had already), and holds the id again at a stamp just after B's claim (one
  more in its counter): the next registration round registers it at the id's owner, where it
  beats B's entry (also at an owner that has not declared B dead yet, or that still names
  B's previous run) and a copy B restored from disk (stamp zero), and loses to a claim made
  after B's (a client that reconnected elsewhere meanwhile keeps its connection; claims are
  milliseconds apart, and a claim at the very same stamp is ordered by node name).
* A parked state whose confirmation does not come within `PARK_BOUND` seconds while B stays
  a live member is dropped (counted, logged): reinstating it while B may serve the session
  would make two; B's death is found within the detection bound, far below it.

QoS 2 once: B serves the session only after its CONNACK, which with `durable_acks` comes
after the commit, and the confirmation leaves in the same loop turn; so a reinstated copy
holds nothing B delivered. Limits: a kill of B in the loop turn between its CONNACK and the
confirmation's write leaves both copies; B's committed one loses at the owner when B comes
back, and, evicted, passes on to the winner what its client may not have had (its queue and
its unreleased inflight messages, `cluster.takeover.unreleased`), so what B committed after
the move is lost only if B never comes back; messages routed straight to B (not through H)
before its commit are lost with B's copy; H's parked state lives in memory only (H killed
meanwhile: the move is as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState
from broker.core.message import Message
from cluster.handoff import Handoff, deliver_to
from cluster.registry import Stamp, parse_stamp

log = logging.getLogger("cluster.takeover")

#: B tells H that the moved session is durable there: H drops its parked copy.
CONFIRM_METHOD = "session_committed"
#: Seconds a parked state waits for its confirmation while the new node stays live.
PARK_BOUND = 30.0
#: Parked states at most (the oldest is dropped first, counted).
MAX_PARKED = 10_000
#: The state's key that names the node it came from and the parking token.
MOVED_FROM = "moved_from"

#: (node, method, args) -> the answer or None (`ClusterSessionLocator._send`).
Send = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


class _Parked:
    __slots__ = ("captured", "parked_at", "stamp", "state", "target", "token")

    def __init__(
        self, state: SessionState, target: str, stamp: Stamp, token: list[int], now: float
    ) -> None:
        self.state = state
        self.target = target
        self.stamp = stamp
        self.token = token
        self.parked_at = now
        self.captured: list[Message] = []


class SessionParking:
    """Both ends of the two-phase move; see the module docstring."""

    def __init__(
        self,
        name: str,
        broker: Broker,
        handoff: Handoff,
        send: Send,
        spawn: Callable[[Any], None],
        hold: Callable[[str, Stamp], None],
        bound: float = PARK_BOUND,
    ) -> None:
        self.name = name
        self.broker = broker
        self.handoff = handoff
        self.send = send
        self.spawn = spawn
        #: Hold the id here again at a stamp (the locator registers it at the next round).
        self.hold = hold
        self.bound = bound
        self.parked: OrderedDict[str, _Parked] = OrderedDict()
        self.stats: Counter[str] = Counter()
        forward = handoff.send

        def forward_kept(target: str, message: Message, extra: dict[str, Any]) -> int:
            self.captured(target, message, extra)  # kept too, until `target` commits
            return forward(target, message, extra)

        handoff.send = forward_kept  # what the forwarding record sends for a moved session

    # -- the old node --------------------------------------------------------------------------

    def park(self, state: SessionState, target: str, stamp: Stamp | None) -> None:
        """Keep the state surrendered to `target` (its claim at `stamp`) until confirmed."""
        client_id = state.get("client_id")
        if not isinstance(client_id, str) or target == self.name:
            return
        clock = self.broker.hlc.now()
        token = [clock.ms, clock.counter]
        state[MOVED_FROM] = [self.name, token]
        now = asyncio.get_running_loop().time()
        self._expire(now)
        self.parked.pop(client_id, None)
        claim = stamp if stamp is not None else (clock.ms, clock.counter)
        self.parked[client_id] = _Parked(dict(state), target, claim, token, now)
        self.stats["parked"] += 1
        while len(self.parked) > MAX_PARKED:
            self.parked.popitem(last=False)
            self.stats["parked/evicted"] += 1

    def captured(self, target: str, message: Message, extra: dict[str, Any]) -> None:
        """H's forwarding record sent `message` to `target` for one client: kept as well."""
        parked = self.parked.get(extra.get("cid", ""))
        if parked is not None and parked.target == target:
            parked.captured.append(message)

    def claimed_locally(self, client_id: str) -> None:
        """The client CONNECTs here and the id's entry names no live holder: a parked copy is
        reinstated now, so the CONNECT resumes it."""
        parked = self.parked.pop(client_id, None)
        if parked is not None:
            self._reinstate(parked)

    def claimed(
        self, client_id: str, state: SessionState | None, clean_start: bool
    ) -> tuple[SessionState | None, list[Message]]:
        """A claim made here for the client answered `state`: (the state to import, messages
        to deliver into it after the import). No state from the claim (the new node did not
        answer the owner, or had none) and a parked copy here: the parked copy, and what it
        captured. A claim that brought a state, or a clean start, ends the parked copy."""
        parked = self.parked.pop(client_id, None)
        if parked is None or state is not None or clean_start:
            return state, []
        self.stats["parked/resumed"] += 1
        log.warning("client %s: taken back here from its parked copy (%s did not give it)",
                    client_id, parked.target)  # fmt: skip
        return _without_origin(parked.state), parked.captured

    def deliver(self, client_id: str, messages: list[Message]) -> int:
        """Deliver captured messages into the session of `client_id` (once it is imported)."""
        return sum(deliver_to(self.broker, client_id, m) for m in messages)

    async def serve_committed(self, args: dict[str, Any], from_node: str) -> bool:
        """`session_committed`: the new node has the session durably; drop the parked copy."""
        client_id, token = args.get("client_id"), args.get("token")
        parked = self.parked.get(client_id) if isinstance(client_id, str) else None
        if parked is None or parked.target != from_node or parked.token != token:
            return False
        del self.parked[parked.state["client_id"]]
        self.stats["confirmed"] += 1
        return True

    def member_event(self, node: str, kind: str) -> None:
        """A member event: the parked states for a node declared dead, gone, or restarted (a
        new run never had them committed) are reinstated here."""
        self._expire(asyncio.get_running_loop().time())
        if kind not in ("dead", "left", "join"):
            return
        for client_id in [cid for cid, p in self.parked.items() if p.target == node]:
            self._reinstate(self.parked.pop(client_id))

    def _reinstate(self, parked: _Parked) -> None:
        client_id = parked.state["client_id"]
        if client_id in self.broker.sessions:  # a newer claim here: that session stays
            self.stats["parked/superseded"] += 1
            return
        state = _without_origin(parked.state)
        try:
            session = self.broker.import_session(state)  # its arrival kept (not a move)
        except ValueError as exc:
            log.warning("session of %s: cannot reinstate it: %s", client_id, exc)
            return
        session.touch()  # committed by the next commit (persistence)
        self.handoff.reclaimed(client_id)
        delivered = self.deliver(client_id, parked.captured)
        ms, counter = parked.stamp
        self.hold(client_id, (ms, counter + 1))  # just after B's claim (module docstring)
        self.stats["reinstated"] += 1
        log.warning(
            "client %s: %s did not commit the session moved to it; reinstated here "
            "(%d queued, %d of %d captured messages delivered)",
            client_id, parked.target, len(state.get("queue") or ()), delivered,
            len(parked.captured),
        )  # fmt: skip

    def _expire(self, now: float) -> None:
        parked = self.parked
        while parked:
            client_id, oldest = next(iter(parked.items()))
            if oldest.parked_at + self.bound > now:
                break
            del parked[client_id]
            self.stats["parked/expired"] += 1
            log.warning("client %s: no commit confirmed by %s in %g s; its parked copy is "
                        "dropped", client_id, oldest.target, self.bound)  # fmt: skip

    # -- the new node --------------------------------------------------------------------------

    def imported(self, client_id: str, state: SessionState) -> None:
        """The state was handed to the broker (`done`): confirm to its old node once durable."""
        origin = state.get(MOVED_FROM)
        if not (isinstance(origin, list) and len(origin) == 2 and isinstance(origin[0], str)):
            return  # an old node's state: it kept nothing
        node, token = origin[0], origin[1]
        if parse_stamp(token) is None or client_id not in self.broker.sessions:
            return
        args = {"client_id": client_id, "token": token}
        gate = self.broker.commit_gate
        expiry = state.get("expiry_interval")
        if gate is not None and gate.client_acks and isinstance(expiry, int) and expiry > 0:
            gate.hold(lambda: self.spawn(self.send(node, CONFIRM_METHOD, args)))
        else:
            self.spawn(self.send(node, CONFIRM_METHOD, args))
        self.stats["confirms"] += 1


def _without_origin(state: SessionState) -> SessionState:
    return {k: v for k, v in state.items() if k != MOVED_FROM}
