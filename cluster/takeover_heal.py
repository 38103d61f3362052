"""A session copy resumed here while members were out of reach, folded with theirs when they
come back.

Why: the claim's fold (`cluster.takeover_fold`) folds the copies a CONNECT can reach. A client
served on the far side of a partition and then back at this node's own copy is resumed here
as that copy was; at the heal, the forwards the far side held for this node arrive, and the
far side's copy had delivered many of them (measured, long profile isolate_sub: about 100 of
3,000 QoS 2 messages delivered twice per run). So:

* A resume here that is not a clean start, while members are suspect or dead
  (`apart_nodes`) or the claim could not reach the session's holder (the owner's answer
  names it), holds the id (`broker.core.late_hold`): its late QoS 2 copies are parked. A
  fresh copy starts its packet ids at a random point (`fresh_beside`).
* While one of those members is healing (its link up, not yet seen alive: `linked_dead`), a
  copy here that resumes as it is also holds back its queued QoS 2 messages
  (`LateHold.hold_queue`, before the CONNECT goes on): for the seconds after a heal two
  copies live and a message published then reaches both (measured, long_partition: 3 QoS 2
  twice in a rehearsal). Only then: a member dead for good has no link, so it delays no
  resume's queue.
* When one of those members is alive again (or joins: restarted), this node asks it for its
  copy (`session_collect`, at the stamp of the claim that brought the session here: a newer
  claim there refuses) and folds what it gets into the session (`LateHold.fold_in`). A copy
  there that was evicted meanwhile (the heal's registration resolved the duplicate first)
  still answers with the QoS 2 records it had (`gave_up`, kept `GAVE_UP_TTL` seconds).
* The QoS 2 exchanges that copy had released and not seen completed go on here: a PUBREL
  for the old packet id (`Session.adopt_released`). A kill just after a release left one
  whose PUBREL never reached the client, which (paho) still holds the message.
* Once every such member answered, what was parked is delivered, each message once.
* A member that leaves or is forgotten is not waited for; nor, once all are back, any past
  `HOLD_MAX` seconds (the sweep asks again first); nor for a session that ended. What was
  parked is then delivered (a repeat is possible, nothing is lost), or dropped and counted
  when the session is gone. While a member stays apart (dead for good, remembered for an
  hour), copies parked for `PARK_MAX` seconds are delivered and the hold goes on.

A steady cluster pays nothing (no member apart: no hold); a resume during a partition or a
restart costs one `session_collect` per held id when the member comes back (`ASKS_AT_ONCE`
in flight at a time).
`ClusterSessionLocator` inherits `HealFold` first; this module never imports `cluster.takeover`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState
from broker.core.session import Session
from broker.core.session_fold import SEEN_ONLY, delivered_qos2, released_qos2
from cluster.registry import Stamp
from cluster.rpc import RemoteError, RpcError
from cluster.takeover_fold import COLLECT_METHOD
from cluster.takeover_wire import Call

log = logging.getLogger("cluster.takeover")

#: Seconds a held id waits at most, once its members are all back, for their answers.
HOLD_MAX = 120.0
#: Seconds parked copies wait at most while a member is still apart (one that never comes
#: back, or is forgotten only after `dead_reclaim_time`): the held forwards of a heal arrive
#: with it, so copies parked longer came from a link that dropped elsewhere.
PARK_MAX = 20.0
#: Seconds an evicted copy's QoS 2 records are kept for a held copy that asks for them.
GAVE_UP_TTL = 30.0
#: Evicted copies' records kept at most (the oldest go first).
GAVE_UP_MAX = 10_000
#: Asks in flight at once: a member back after a restart may be asked for thousands of ids.
ASKS_AT_ONCE = 32


class Apart:
    """One held id: the members it waits for, and since when."""

    __slots__ = ("asking", "parked_seen", "since", "waiting")

    def __init__(self, nodes: list[str], since: float) -> None:
        self.waiting = set(nodes)
        self.asking: set[str] = set()
        self.since = since
        #: When a sweep first saw copies parked (None: none seen since the last flush).
        self.parked_seen: float | None = None


class HealFold:
    """Held ids and their folds; mixed into `ClusterSessionLocator`, whose `__init__` sets
    `apart` and `gave_up`."""

    name: str
    broker: Broker
    live_nodes: Callable[[], list[str]]
    call: Call
    timeout: float
    stats: dict[str, int]
    held: dict[str, Stamp]
    #: client id -> what its hold waits for.
    apart: dict[str, Apart]
    #: client id -> (expires, QoS 2 records) of a copy evicted here.
    gave_up: OrderedDict[str, tuple[float, list[Any], list[Any]]]
    #: Members that are suspect or dead (`ClusterNode.apart_nodes`, set by `cluster.ports`).
    apart_nodes: Callable[[], list[str]] = staticmethod(lambda: [])
    #: Members not live whose link is up again (`CopyCollector.linked_dead`).
    linked_dead: Callable[[], list[str]]
    _ask_slots: asyncio.Semaphore | None = None

    if TYPE_CHECKING:  # `CopyCollector` and `ClusterSessionLocator` define them

        def _spawn(self, coro: Any) -> None: ...
        def members_changed(self, node: str, kind: str) -> None: ...

    else:

        def members_changed(self, node: str, kind: str) -> None:
            """Ask a member that came back for its copies of the held ids; one that left is
            not waited for. Then the other mixins' work."""
            if self.apart:
                self.apart_event(node, kind)
            super().members_changed(node, kind)

    def hold_apart(self, client_id: str, clean_start: bool, also: Iterable[str] = ()) -> None:
        """A CONNECT resumes (or opens) `client_id` here: hold it while members are apart
        (and `also` nodes: a holder the claim could not reach, not yet seen dead). Called
        before a copy here resumes as it is: while one of them is healing (its link up, not
        yet seen alive) the copy's queued QoS 2 messages are held back too."""
        if clean_start:
            return
        nodes = sorted({node for node in (*self.apart_nodes(), *also) if node != self.name})
        if not nodes:
            return
        hold = self.apart.get(client_id)
        if hold is None:
            self.apart[client_id] = Apart(nodes, time.monotonic())
        else:
            hold.waiting.update(nodes)
        late_hold = self.broker.late_hold
        late_hold.hold(client_id)
        self.stats["apart/held"] += 1
        log.info("client %s resumed while %s out of reach: its late QoS 2 copies wait",
                 client_id, ", ".join(sorted(nodes)))  # fmt: skip
        healing = sorted(set(nodes) & set(self.linked_dead()))
        session = self.broker.sessions.get(client_id)
        if healing and session is not None and session.queue:
            # Called before the copy here resumes: a message published just after the heal
            # went to both copies; hold its queue's QoS 2 until the fold (`LateHold`).
            held = late_hold.hold_queue(session)
            if held:
                self.stats["apart/queue_held"] += held
                log.info("client %s: %d queued QoS 2 messages wait too, %s healing",
                         client_id, held, ", ".join(healing))  # fmt: skip

    def apart_event(self, node: str, kind: str) -> None:
        """A member came back (ask it for its copies of the held ids) or left (not waited for)."""
        if kind in ("alive", "join"):
            for client_id, hold in self.apart.items():
                if node in hold.waiting and node not in hold.asking:
                    hold.asking.add(node)
                    self._spawn(self._ask(node, client_id))
        elif kind == "left":
            for client_id in [c for c, h in self.apart.items() if node in h.waiting]:
                self._answered(client_id, node)

    async def _ask(self, node: str, client_id: str) -> None:
        """Fold `node`'s copy of `client_id` into the one here (none: nothing to fold)."""
        stamp = self.held.get(client_id)
        if stamp is None or client_id not in self.broker.sessions:
            self._answered(client_id, node)
            return
        args = {"client_id": client_id, "stamp": list(stamp), "node": self.name}
        try:
            async with self._asks():
                state = await self.call(node, COLLECT_METHOD, args, self.timeout)
        except RemoteError as exc:  # it cannot say (a node of the previous version)
            log.info("client %s: %s gave no copy: %s", client_id, node, exc)
            state = None
        except RpcError as exc:  # gone again: asked at its next return
            hold = self.apart.get(client_id)
            if hold is not None:
                hold.asking.discard(node)
            log.info("client %s: %s not asked for its copy: %s", client_id, node, exc)
            return
        session = self.broker.sessions.get(client_id)
        if isinstance(state, dict) and session is not None:
            self._fold_in(session, node, state)
        self._answered(client_id, node)

    def _asks(self) -> asyncio.Semaphore:
        if self._ask_slots is None:
            self._ask_slots = asyncio.Semaphore(ASKS_AT_ONCE)
        return self._ask_slots

    def _fold_in(self, session: Session, node: str, state: SessionState) -> None:
        try:
            carried, repeats = self.broker.late_hold.fold_in(session, state, self.broker.clock())
        except (TypeError, ValueError, IndexError) as exc:
            log.warning("client %s: the copy from %s not folded: %s", session.client_id, node, exc)
            return
        self.broker.metrics.counters["messages/dropped"] += repeats
        self.stats["apart/folded"] += 1
        log.info("client %s: the copy from %s folded in (%d QoS 2 records, %d messages "
                 "carried, %d had already)", session.client_id, node,
                 len(state.get("qos2_seen") or ()), carried, repeats)  # fmt: skip

    def _answered(self, client_id: str, node: str) -> None:
        hold = self.apart.get(client_id)
        if hold is None:
            return
        hold.waiting.discard(node)
        hold.asking.discard(node)
        if not hold.waiting:
            self._release(client_id)

    def _release(self, client_id: str) -> None:
        self.apart.pop(client_id, None)
        broker = self.broker
        delivered, dropped = broker.late_hold.release(
            client_id, broker.sessions.get(client_id), broker.clock()
        )
        broker.metrics.counters["messages/dropped"] += dropped
        if delivered or dropped:
            log.info("client %s: %d parked QoS 2 copies delivered, %d dropped (had already)",
                     client_id, delivered, dropped)  # fmt: skip

    def sweep_holds(self, now: float | None = None) -> None:
        """The periodic round: a held id whose session is gone, or that waits only for
        members forgotten since, is released; a member back whose ask failed is asked again;
        past `HOLD_MAX` with every member it waits for back, the hold ends. Evicted copies'
        records past `GAVE_UP_TTL` are forgotten."""
        now = time.monotonic() if now is None else now
        apart = set(self.apart_nodes())
        live = set(self.live_nodes())
        for client_id, hold in list(self.apart.items()):
            hold.waiting &= apart | live
            back = hold.waiting - apart
            overdue = back == hold.waiting and now - hold.since > HOLD_MAX
            if client_id not in self.broker.sessions or not hold.waiting or overdue:
                self._release(client_id)
            else:
                for node in back - hold.asking:
                    hold.asking.add(node)
                    self._spawn(self._ask(node, client_id))
                self._flush_overdue(client_id, hold, now)
        while self.gave_up and next(iter(self.gave_up.values()))[0] <= now:
            self.gave_up.popitem(last=False)

    def _flush_overdue(self, client_id: str, hold: Apart, now: float) -> None:
        """Copies parked for `PARK_MAX` seconds are delivered; the hold goes on."""
        broker = self.broker
        if not broker.late_hold.holds_any(client_id):
            hold.parked_seen = None
        elif hold.parked_seen is None:
            hold.parked_seen = now
        elif now - hold.parked_seen >= PARK_MAX:
            hold.parked_seen = None
            session = broker.sessions.get(client_id)
            delivered, dropped = broker.late_hold.flush(client_id, session, broker.clock())
            broker.metrics.counters["messages/dropped"] += dropped
            log.info("client %s: %d parked QoS 2 copies delivered after %.0f s, still waiting"
                     " for %s", client_id, delivered, PARK_MAX,
                     ", ".join(sorted(hold.waiting)))  # fmt: skip

    def fresh_beside(self, client_id: str, holders: list[str]) -> None:
        """A persistent claim of `client_id` found no copy it could take, so the session here
        is fresh, while an old copy may live on (`holders`: one the owner could not reach; or
        on a node dead now, back from disk later). The client may still hold a QoS 2 message
        that copy released just before (paho keeps it across a reconnect): the packet ids here
        start at a random point, so that this copy does not reuse that message's id before the
        old copy's exchange is taken over here (`Session.adopt_released`, when the holder
        answers the hold's ask)."""
        session = self.broker.sessions.get(client_id)
        if session is not None and not session.inflight and not session.queue:
            session.start_packet_ids_at(random.randint(1, 65535))
        if holders:
            log.info("client %s: a fresh copy, its holder %s out of reach", client_id,
                     ", ".join(holders))  # fmt: skip

    # -- the copy over there ------------------------------------------------------------------

    def giving_up(self, session: Session) -> None:
        """`session`'s copy is evicted here: keep its QoS 2 records and its released
        exchanges for a while, for a held copy elsewhere that asks for them
        (`session_collect` finds no copy then)."""
        if session.qos2_seen is None or not session.expiry_interval:
            return
        state = session.export_state()
        seen = [list(stamp) for stamp in delivered_qos2(state)]
        released = released_qos2(state)
        self.gave_up.pop(session.client_id, None)
        self.gave_up[session.client_id] = (time.monotonic() + GAVE_UP_TTL, seen, released)
        while len(self.gave_up) > GAVE_UP_MAX:
            self.gave_up.popitem(last=False)

    def records_of_gone(self, client_id: str) -> SessionState | None:
        """What `session_collect` answers for an id evicted here lately: its records, and the
        exchanges it had released and not seen completed (taken over by the asker)."""
        kept = self.gave_up.get(client_id)
        if kept is None or kept[0] <= time.monotonic():
            return None
        return {"client_id": client_id, SEEN_ONLY: True, "qos2_seen": kept[1], "inflight": kept[2]}
