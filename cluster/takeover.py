"""A client id unique in the cluster: the registry lookup on CONNECT and the session's move.

Theory of operation
-------------------
Each client id has an owner node (`cluster.registry`: rendezvous hashing over the live members)
that knows which node holds the id's session and serialises the claims of it. When a client
CONNECTs on node B (and is authenticated), B's broker asks its `session_locator`
(`broker.core.cluster_port`); `ClusterSessionLocator` is that locator:

* **Owner here, nobody else holds the id** (always so on a lone node): the entry is written in
  this node's table and the CONNECT goes on at once: no cluster message at all.
* **Otherwise one RPC** `registry_claim {client_id, clean_start, stamp}` to the owner (or none
  when B owns the id). The owner, one claim per id at a time, records B as the holder with a
  stamp newer than the previous claim's (`Registry.claim`) and, if another live node H held the
  id, calls `surrender_session {client_id, clean_start, node: B}` on H: H closes its connection
  with 0x8E (Session taken over), exports the session (`Session.export_state`: subscriptions,
  queued and inflight messages, QoS 2 ids awaiting PUBREL) and discards it, unless the new
  connection starts clean (then nothing is carried). The owner answers `{state, stamp}`; B
  imports the state (re-subscribing, so routes are announced here) and the CONNACK says session
  present. A CONNECT costs at most two RPCs (B -> owner -> H) whatever the cluster size.
* Two CONNECTs with one id on two nodes meet at the owner: the later claim makes the earlier
  holder surrender (its connection gets 0x8E; the owner's answer to it went first on the same
  link, so its connection is open by then). Exactly one stays.
* H keeps a forwarding record for the moved session (`cluster.handoff`): messages that still
  reach H go to B for that client id; B holds them until its import and drops the copies that
  also came directly.
* The move is two-phase (`cluster.takeover_park`): H keeps the surrendered state parked (not
  served) until B, once the session is committed there, calls `session_committed` on H (a
  third RPC, after the CONNACK); if B dies, leaves or restarts first, H reinstates it.

A session that ends here is released at its owner (`registry_release`, batched per owner per
loop turn): seen at its connection's close (`hooks.client_disconnected`) or, for one that
expires or is dropped offline, by a sweep every 10 s (`cluster.ports`).

When the members change, the ids whose owner changed are registered with their new owner
(`registry_register`); two holders of one id
(after a partition heals, or a claim that could not reach the owner) are resolved there: the
newer stamp stays, the other holder gets `session_evict` (naming the winner), closes its
connection with 0x8E and drops its session, passing on to the winner what its client may not
have had (`unreleased`: its queue and its inflight messages not awaiting PUBCOMP; counted in
`messages/dropped` when no winner is named).

An owner this node has no link to (killed or restarting, before the membership declares it
dead: the claim fails at once with `NodeUnreachable`) is stood in for by the next node of the
id's rendezvous order among the same members (`_claim_at`): two CONNECTs of one id on nodes that
see the same members meet there, and it is the id's owner once the dead one is declared dead.
(Measured: without it, restart_each left a twin pair both up, claimed while their owner was
down.) Such a claim is not confirmed, so the next round registers it at the owner itself.
A claim in flight when the owner's process dies fails as soon as the link to it ends and a new
dial is refused (`cluster.link_loss`), and goes to the stand-in then, not at its timeout.
A claim that gets no answer within the timeout goes on alone (the CONNECT is not refused); the
id is registered at once with its owner, where a duplicate is resolved as above (a CONNECT of
the id elsewhere meanwhile is known only there), and again by the next round if that fails
too. (Measured: two CONNECTs of one id behind a partition, each waiting on the far-side owner
while it was declared dead, both stayed up until the 10 s round; so did a pair after a pause,
whose resumed node sent its claim on a link the owner had just closed.)
The owner refuses a claim older than `STALE_CLAIMS` timeouts by its stamp: one held in a link
cut by a partition reaches it only by a TCP retransmit after the heal, when the live session
is elsewhere and serving it would move that session to the caller's stale copy.

Members can disagree for a while (a node rejoining is seen by some before others), and then two
nodes name two owners of one id. So every holder remembers, per id, the (owner, member view) its
registration was last confirmed under, and a periodic round (`reconcile`, with the 10 s sweep,
and once `SETTLE_ROUND` seconds after the last member event: `cluster.takeover_rounds`)
registers again, batched per owner, the ids whose confirmation does not match the current view:
a registration that failed, a claim that got no answer, every id once after a membership change.
A steady cluster sends nothing; a duplicate left by disagreeing views is resolved at the owner
within one round of the views agreeing. (Residual: an owner that dropped an entry while its own
view differed is not told to the holder; the next membership change registers it again.)
A holder that does not answer the owner's surrender is sent `session_evict` at its old stamp.
`surrender_session` stays callable as before (a node of the previous version asks every peer);
an owner of the previous version answers `registry_claim` with "no RPC method", and the CONNECT
then asks every other node to surrender, as that version does (a rolling upgrade). No frame
type is new (the registry is RPC methods and a FORWARD kind), so the wire version is unchanged;
a node of the previous version counts a FORWARD kind `session` as unknown and drops it.

Where it lives: this module is the CONNECT's claim and the holder's answers
(`ClusterSessionLocator`); the copies a claim folds are `cluster.takeover_fold`
(`CopyCollector`), a copy resumed while members were apart, folded when they are back,
`cluster.takeover_heal` (`HealFold`); the owner's side is `cluster.takeover_owner`
(`RegistryOwner`), the registration after member changes and the periodic round
`cluster.takeover_rounds` (`RegistryRounds`), all inherited by the locator; the RPC method
names, limits and the surrendered state's helpers are `cluster.takeover_wire`, re-exported
here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState, TakeoverDone
from broker.core.hlc import Stamp as ClockStamp
from broker.core.hooks import ClientInfo
from broker.core.message import Message
from broker.core.session import Session
from cluster.handoff import Handoff, plain_filters
from cluster.registry import (
    ZERO,
    Registry,
    Stamp,
    entries_wire,
    owner_of,
    parse_entries,
    parse_stamp,
)
from cluster.rpc import NodeUnreachable, RemoteError, RpcError
from cluster.takeover_fold import CopyCollector
from cluster.takeover_heal import Apart, HealFold
from cluster.takeover_owner import RegistryOwner
from cluster.takeover_park import SessionParking
from cluster.takeover_rounds import RegistryRounds
from cluster.takeover_wire import (
    BATCH,
    CLAIM_METHOD,
    EVICT_METHOD,
    MAX_STATE_BYTES,
    REGISTER_METHOD,
    RELEASE_METHOD,
    STALE_CLAIMS,
    SURRENDER_METHOD,
    Call,
    chunks,
    log_released,
    parse_winners,
    pick_state,
    serve_surrender,
    surrender_args,
    trim_state,
    view_of,
)

__all__ = [
    "BATCH",
    "CLAIM_METHOD",
    "EVICT_METHOD",
    "MAX_STATE_BYTES",
    "REGISTER_METHOD",
    "RELEASE_METHOD",
    "STALE_CLAIMS",
    "SURRENDER_METHOD",
    "Call",
    "ClusterSessionLocator",
    "pick_state",
    "serve_surrender",
    "surrender_args",
    "trim_state",
]

log = logging.getLogger(__name__)


class ClusterSessionLocator(HealFold, CopyCollector, RegistryOwner, RegistryRounds):
    """The broker's `session_locator` in a cluster, and the owner side of the registry.

    `live_nodes()` names the live members, this node first; `call` is `ClusterNode.call`.
    `done` always runs, with None when nobody had the session or the owner did not answer.
    """

    def __init__(
        self,
        name: str,
        broker: Broker,
        live_nodes: Callable[[], list[str]],
        call: Call,
        handoff: Handoff,
        timeout: float = 3.0,
        max_state_bytes: int = MAX_STATE_BYTES,
    ) -> None:
        self.name = name
        self.broker = broker
        self.live_nodes = live_nodes
        self.call = call
        self.handoff = handoff
        self.timeout = timeout
        self.max_state_bytes = max_state_bytes
        self.registry = Registry()
        #: The ids whose session is here, with the stamp of the claim that brought it.
        self.held: dict[str, Stamp] = {}
        self.stats: dict[str, int] = {
            "takeovers": 0, "local": 0, "claims_sent": 0, "sessions_moved": 0, "failures": 0,
            "surrendered": 0, "evicted": 0, "registered": 0, "released": 0, "fallbacks": 0,
            "stand_ins": 0, "stamps_rejected": 0, "stale_claims": 0, "evicted/passed_on": 0,
            "apart/held": 0, "apart/folded": 0, "apart/queue_held": 0,
        }  # fmt: skip
        self._pending: dict[asyncio.Task[None], TakeoverDone] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._ended: set[str] = set()
        self._flush_scheduled = False
        self._last_live: list[str] = [name]
        self._dirty: set[str] = set()
        self._rejoined: set[str] = set()
        self._gone: set[str] = set()
        self._rebalance_scheduled = False
        self._settle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Held ids whose registration the owner confirmed: (owner, member view) at the time.
        self._confirmed: dict[str, tuple[str, tuple[str, ...]]] = {}
        #: Ids resumed while members were apart, and evicted copies' records (`HealFold`).
        self.apart: dict[str, Apart] = {}
        self.gave_up: OrderedDict[str, tuple[float, list[Any], list[Any]]] = OrderedDict()
        #: The two-phase move: surrendered states kept until the new node has committed them.
        self.parking = SessionParking(
            name, broker, handoff, self._send, self._spawn, self._hold_again
        )

    # -- the CONNECT (broker.core.cluster_port.SessionLocator) ---------------------------------

    def takeover(self, client_id: str, clean_start: bool, done: TakeoverDone) -> bool:
        self.stats["takeovers"] += 1
        nodes = self.live_nodes()
        stamp = self._now()
        owner = owner_of(client_id, nodes)
        # After a membership change a copy may be elsewhere too: the claim gathers them.
        if owner == self.name and (clean_start or not self.unsettled()):
            entry = self.registry.get(client_id)
            if entry is None or entry.node == self.name or entry.node not in nodes:
                _, stamp = self.registry.claim(client_id, self.name, stamp)
                self.held[client_id] = stamp
                self._confirmed[client_id] = (self.name, view_of(nodes))
                self.handoff.reclaimed(client_id)
                self.parking.claimed_locally(client_id)
                self.hold_apart(client_id, clean_start)
                self.stats["local"] += 1
                return False
        answered = False

        def once(state: SessionState | None) -> None:
            nonlocal answered
            if not answered:
                answered = True
                done(state)

        self.handoff.claim_started(client_id)
        task = asyncio.get_running_loop().create_task(
            self._claim(nodes, client_id, clean_start, stamp, once)
        )
        self._pending[task] = once
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)

    async def _claim(
        self,
        nodes: list[str],
        client_id: str,
        clean_start: bool,
        stamp: Stamp,
        done: TakeoverDone,
    ) -> None:
        state: SessionState | None = None
        confirmed = False
        unreachable: list[str] = []  # a holder the owner could not reach
        answered = True
        view = view_of(nodes)
        owner = owner_of(client_id, nodes)
        args = {"client_id": client_id, "clean_start": clean_start, "stamp": list(stamp)}
        try:
            answer, owner = await self._claim_at(owner, nodes, args)
            # Claimed at a stand-in (the owner had no link): confirmed by the owner itself
            # at the next round, when it can be reached again.
            confirmed = owner == owner_of(client_id, nodes)
            if isinstance(answer, dict):
                stamp = parse_stamp(answer.get("stamp")) or stamp
                found = answer.get("state")
                state = found if isinstance(found, dict) else None
                holder = answer.get("unreachable")
                unreachable = [holder] if isinstance(holder, str) and holder else []
            if state is not None:
                self.stats["sessions_moved"] += 1
            if not confirmed:
                self._dirty.add(client_id)
            if not clean_start and self.unsettled():  # copies may have diverged: fold them
                state = await self.gather(client_id, stamp, state, self.live_nodes())
        except Exception as exc:  # unreachable, timeout, remote error: go on alone
            answered = False
            self.stats["failures"] += 1
            self._dirty.add(client_id)
            log.info("takeover of %s: owner %s did not answer: %s", client_id, owner, exc)
        finally:
            # Nothing awaited from here on: the session is open before anything else runs.
            self._observe(stamp, owner)  # the owner's stamp, as the owner recorded it
            state, captured = self.parking.claimed(client_id, state, clean_start)
            resumed = state is None and not clean_start and client_id in self.broker.sessions
            if resumed:  # the copy here resumes as it is: held first (its queue too)
                self.hold_apart(client_id, clean_start, unreachable)
            done(state)  # also when cancelled (the node stops): the CONNECT goes on alone
            if captured:
                self.parking.deliver(client_id, captured)
            if state is not None and not clean_start:
                self.parking.imported(client_id, state)  # confirmed to its old node
            if client_id in self.broker.sessions:
                self.held[client_id] = stamp
                if state is None and not clean_start:
                    self.fresh_beside(client_id, unreachable)
                if not resumed:
                    self.hold_apart(client_id, clean_start, unreachable)
                if confirmed:
                    self._confirmed[client_id] = (owner, view)
                else:  # registered again by the next round
                    self._confirmed.pop(client_id, None)
                    if not answered or view_of(self.live_nodes()) != view:
                        # The members changed while the claim was out: that change's
                        # registration passed this id by (not held yet), so register it now.
                        # Or the claim got no answer: a CONNECT of the id elsewhere meanwhile
                        # is known only at the owner, so meet it there now, not at the next
                        # round (measured: a node resumed after a pause sent its claims on
                        # links its peers had just closed; the pair stayed up until the round).
                        self.register_soon(client_id)
            filters = plain_filters(state) if state is not None and not clean_start else None
            self.handoff.claim_finished(client_id, filters, time.monotonic())

    def _now(self) -> Stamp:
        """A claim's stamp from the node's one hybrid clock (`Broker.hlc`)."""
        stamp = self.broker.hlc.now()
        return stamp.ms, stamp.counter

    def _observe(self, stamp: Stamp, node: str) -> bool:
        """Take a stamp made elsewhere into the clock; False when it is beyond the clock's
        drift bound (`broker.core.hlc`): it is then not trusted to order anything."""
        if stamp == ZERO:
            return True
        if self.broker.hlc.update(ClockStamp(stamp[0], stamp[1], node)):
            return True
        self.stats["stamps_rejected"] += 1
        log.warning("registry: a stamp from %s is %.0f s ahead of our clock: not trusted",
                    node, stamp[0] / 1000 - self.broker.hlc.wall())  # fmt: skip
        return False

    async def _claim_at(
        self, owner: str, nodes: list[str], args: dict[str, Any]
    ) -> tuple[Any, str]:
        """(answer, the node that answered) of the claim at `owner`. An owner this node has
        no link to (killed, restarting: `NodeUnreachable` at once, before its death is
        known) is stood in for by the next node of the id's rendezvous order among `nodes`:
        two CONNECTs of one id on two nodes with the same view of the members then still meet
        at one node, which is also the id's owner once the unreachable one is declared dead."""
        client_id = args["client_id"]
        tried: list[str] = []
        while True:
            if owner == self.name:
                return await self.serve_claim(args, self.name), owner
            self.stats["claims_sent"] += 1
            try:
                return await self.call(owner, CLAIM_METHOD, args, self.timeout), owner
            except NodeUnreachable:
                tried.append(owner)
                rest = [node for node in nodes if node not in tried]
                if not rest:
                    raise
                log.info("takeover of %s: owner %s has no link; %s stands in",
                         client_id, owner, owner_of(client_id, rest))  # fmt: skip
                self.stats["stand_ins"] += 1
                owner = owner_of(client_id, rest)
            except RemoteError as exc:
                if "no RPC method" not in str(exc):
                    raise
                state = await self._ask_everyone(client_id, args["clean_start"])
                return {"state": state}, owner

    async def _ask_everyone(self, client_id: str, clean_start: bool) -> SessionState | None:
        """The owner runs the previous version (no registry): every other node is asked to
        surrender, as that version does (during a rolling upgrade)."""
        self.stats["fallbacks"] += 1
        args = {**surrender_args(client_id, clean_start), "node": self.name}
        peers = self.live_nodes()[1:]
        answers = await asyncio.gather(
            *(self.call(peer, SURRENDER_METHOD, args, self.timeout) for peer in peers),
            return_exceptions=True,
        )
        return pick_state([a if isinstance(a, dict) else None for a in answers])

    def close(self) -> None:
        """Cancel the takeovers in progress; their CONNECTs go on alone (`done(None)`)."""
        for task, once in list(self._pending.items()):
            task.cancel()
            once(None)
        for bg in list(self._tasks):
            bg.cancel()
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None

    # -- the holder ---------------------------------------------------------------------------

    async def serve_surrender(self, args: dict[str, Any], from_node: str) -> SessionState | None:
        """`surrender_session`: give the client up to `node` (the caller, for an older peer)."""
        client_id = args.get("client_id")
        new_node = args.get("node")
        if not isinstance(new_node, str) or not new_node:
            new_node = from_node
        session = None
        if isinstance(client_id, str):
            self.held.pop(client_id, None)  # no release for it: the owner moved it already
            self._confirmed.pop(client_id, None)
            session = self.broker.sessions.get(client_id)
        if session is not None and args.get("clean_start") is False:
            # Before the session goes: its routes are then kept while the record lives.
            self.handoff.surrendered_session(session, new_node)
        state = serve_surrender(self.broker, args, new_node, self.max_state_bytes)
        self.stats["surrendered"] += 1
        if state is not None and args.get("clean_start") is False:
            self.parking.park(state, new_node, parse_stamp(args.get("stamp")))
        if state is not None:
            queued, inflight = len(state.get("queue") or ()), len(state.get("inflight") or ())
            log.info("client %s moves to %s (%d queued, %d inflight messages)",
                     client_id, new_node, queued, inflight)  # fmt: skip
        return state

    async def serve_evict(self, args: dict[str, Any], from_node: str) -> int:
        """`session_evict`: this node lost these ids to a newer claim elsewhere (`to`: the
        node that holds each now, where what this copy queued is passed on)."""
        entries = dict(parse_entries(args.get("entries")))
        return self.evict(entries, parse_winners(args.get("to")))

    def evict(self, entries: dict[str, Stamp], winners: dict[str, str] | None = None) -> int:
        """Drop the ids still held here at those stamps: 0x8E to the connection, the session
        discarded. What the client may not have had from it (`unreleased`) is passed on to
        the copy that won, in `winners`, and what arrives for it in the next seconds too, as
        after a surrender (the takeover handoff; the winner keeps one of each QoS 2 message by
        its stamp); without a winner it is counted as dropped. Why: a node that comes back
        from a kill with a stale copy (its client reconnected elsewhere meanwhile) may hold
        the only copy of what was queued, or sent to it, before the kill."""
        done = 0
        for client_id, stamp in entries.items():
            if self.held.get(client_id) != stamp:
                continue  # a newer claim here since: it went through the owner
            del self.held[client_id]
            self._confirmed.pop(client_id, None)
            session = self.broker.sessions.get(client_id)
            if session is not None:
                self.giving_up(session)  # its records, for a held copy that asks (`HealFold`)
                log_released(session, "evicted")
                winner = (winners or {}).get(client_id)
                if winner is not None and winner != self.name:
                    # As a surrender: what still arrives here for it (a forward held for this
                    # node while it was down, sent again now) goes on to the winner.
                    self.handoff.surrendered_session(session, winner)
                self._pass_on(client_id, unreleased(session), winner)
            log.warning(
                "client %s is held by a newer claim on another node: dropped here", client_id
            )
            self.broker.surrender_session(client_id, "", clean_start=False)
            self.stats["evicted"] += 1
            done += 1
        return done

    def _pass_on(self, client_id: str, messages: list[Message], to: str | None) -> None:
        """An evicted copy's `unreleased` messages go to the winner `to` (none: dropped)."""
        if not messages:
            return
        if to is None or to == self.name:
            self.broker.metrics.counters["messages/dropped"] += len(messages)
            return
        for message in messages:
            self.handoff.pass_on(to, client_id, message)
        self.stats["evicted/passed_on"] += len(messages)
        log.info("client %s: %d messages of the evicted copy passed on to %s",
                 client_id, len(messages), to)  # fmt: skip

    def client_gone(self, info: ClientInfo, reason: str) -> None:
        """`hooks.client_disconnected`: a session that ended with its connection is released."""
        self.session_ended(info.client_id)

    def sweep(self) -> None:
        """Release the sessions that ended without a disconnection (expired, dropped)."""
        for client_id in [cid for cid in self.held if cid not in self.broker.sessions]:
            self.session_ended(client_id)

    def session_ended(self, client_id: str) -> None:
        """Release it at its owner if its session is gone, after this loop turn (a session
        discarded and opened again at once, a clean start, is not released)."""
        if client_id in self.held:
            self._ended.add(client_id)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_released)

    def _flush_released(self) -> None:
        self._flush_scheduled = False
        ended, self._ended = self._ended, set()
        nodes = self.live_nodes()
        by_owner: dict[str, dict[str, Stamp]] = {}
        for client_id in ended:
            if client_id in self.broker.sessions:
                continue
            stamp = self.held.pop(client_id, None)
            self._confirmed.pop(client_id, None)
            if stamp is not None:
                by_owner.setdefault(owner_of(client_id, nodes), {})[client_id] = stamp
        for owner, entries in by_owner.items():
            self.stats["released"] += len(entries)
            if owner == self.name:
                for client_id, stamp in entries.items():
                    self.registry.release(client_id, self.name, stamp)
            else:
                for chunk in chunks(entries):
                    self._spawn(self._send(owner, RELEASE_METHOD, {"entries": entries_wire(chunk)}))

    def _hold_again(self, client_id: str, stamp: Stamp) -> None:
        """A parked session was reinstated here (`cluster.takeover_park`): held at `stamp`,
        registered at its owner by the next round (or the member change that caused it)."""
        self.held[client_id] = stamp
        self._confirmed.pop(client_id, None)
        self._dirty.add(client_id)

    # -- background RPC (also the owner's and the rounds') ---------------------------------
    async def _send(self, node: str, method: str, args: dict[str, Any]) -> Any:
        try:
            return await self.call(node, method, args, self.timeout)
        except RpcError as exc:
            log.info("cluster: %s to %s failed: %s", method, node, exc)
            return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def unreleased(session: Session) -> list[Message]:
    """What an evicted copy passes on: its inflight messages not awaiting PUBCOMP, in window
    order, then its queue. Why the inflight ones: the copy sent them but has no ack; a QoS 1
    one may have reached the client (a repeat is allowed), and a QoS 2 one awaiting PUBREC was
    never released to the client (PUBREL goes only after the commit that records the PUBREC,
    `broker.core.ack_order`), so a client that delivers on PUBREL (MQTT 4.3.3 method A, as
    paho does) has not delivered it, and the new session (Session Present 0 to the client)
    cannot release it. Measured: kill_during_takeover lost a QoS 2 message sent to the
    roaming client just before its node was killed, left inflight in the restored copy. One
    awaiting PUBCOMP was released, so the client has it if the PUBREL reached it; passing
    it on would deliver it twice in that usual case. When the PUBREL did not reach it (a
    kill just after the release's commit), the exchange is taken over by the new copy
    instead (`cluster.takeover_heal`, `Session.adopt_released`: a PUBREL, not the message)."""
    inflight = [e.message for e in session.inflight.values() if not e.awaiting_comp]
    return [*inflight, *(delivery[0] for delivery in session.queue)]
