"""SWIM membership for one node, sans-IO, after HashiCorp memberlist.

Theory of operation
-------------------
`Membership` is a state machine. The runtime feeds it three inputs and sends what it returns:

* `tick(now)` at least every `next_deadline()` (the clock is passed in, never read);
* `handle(from_addr, msg_type, body, now)` for every membership frame received;
* `join(seeds, now)` once at start and `leave(now)` once at shutdown.

Each returns a list of `Outgoing(address, msg_type, body)`. Membership changes are queued as
`MemberEvent`s (`take_events()`) and told to the `Delegate`, which also carries the route state.

Members. Every node, this one included, is a `Member(name, address, state, incarnation, epoch)`.
`epoch` identifies one run of a node (the runtime uses its start time in ms, so it grows across
restarts); `incarnation` is a counter that only the node itself raises. Facts about a node are
ordered by (epoch, incarnation, state) with these rules (memberlist's, plus epochs):

* anything about an older epoch is ignored; a newer epoch is a fresh run and replaces the old
  entry whatever its state (`join` event): a restarted node rejoins with its new epoch;
* alive(i) wins over any state with incarnation < i;
* suspect(i) wins over alive(j) if i >= j; dead(i) or left(i) win over alive/suspect(j) if
  i >= j; left wins over dead; nothing but a higher-incarnation alive leaves dead or left;
* a node told it is suspect or dead at its current incarnation *refutes*: it raises its
  incarnation past the claim and gossips alive (events from older epochs are ignored).

Failure detection (SWIM). Every `probe_interval` the node pings the next member of a shuffled
round-robin list. No ACK within `probe_timeout`: it asks `indirect_checks` random members to ping
the target for it (PING_REQ; they answer ACK on success or NACK on timeout). Still no ACK at the
end of the interval: the target becomes *suspect*. Every node that learns of a suspicion starts a
timer of `suspicion_mult * max(1, log10(n)) * probe_interval`; if the target has not refuted when
it fires, the target is *dead*. Dead and left members are kept as tombstones for
`dead_reclaim_time` (so stale gossip cannot bring them back), then forgotten.

Dissemination. Every accepted change is queued in a `TransmitQueue` and piggybacked on PING,
ACK, PING_REQ and on GOSSIP messages sent every `gossip_interval` to `gossip_nodes` random members
(recently dead ones included, so a wrongly declared node hears it and refutes). Each update is
sent at most `retransmit_mult * ceil(log10(n + 1))` times. The delegate's broadcasts (route
deltas) fill the rest of each message's budget; with nothing else to send they go as ROUTE_DELTA.

Anti-entropy. Every `push_pull_interval` (scaled up above 32 nodes, as memberlist does) the node
exchanges its full member list and the delegate's state with one random member
(PUSH_PULL_REQ/RESP). Joining is a push/pull with each seed; a node with no other live member
retries its seeds and a few dead or left members every `join_retry_interval`. A remote `dead`
learned from a full state only makes us suspect.

Partitions. Each side soon holds the other side dead; the runtime keeps a dead member's routes
and the QoS 1/2 forwards held for it for `dead_hold` seconds (`cluster.dead_hold`), then purges
them. Every `reconnect_interval` a node tries a push/pull with one random dead or left member
(as Serf's reconnect) or with a seed address that no live member has (groups that formed apart,
e.g. nodes restarted during the split, find each other through their seeds). Once one crosses,
each side's full state tells the other "you are dead": those nodes refute with a higher
incarnation and the alive news spreads by gossip on both sides. The verdicts each side held
about the other also spread by gossip once the sides meet, and reach nodes of the *same* side as
their subject before its refutation does: a "dead" about a member whose frames reached us within
the suspicion timeout only makes us suspect it (`_heard_lately`), so a healed partition never
has a node declare dead a peer it could talk to all along. A member back from the dead triggers
an early push/pull with it, which brings its routes up to date (back, if they were purged). Dead
members are remembered (and retried) for `dead_reclaim_time`, left ones for `left_reclaim_time`;
after that only seeds reconnect.

Leaving. `leave()` marks this node left (incarnation + 1) and sends LEAVE to a few members; the
`left` update then spreads by gossip. A leaving node no longer probes or refutes.

Administration (emqx_ctl's `cluster leave|join|force-leave`). `isolate()` after `leave()` makes
the node stand alone while it keeps running: every other member is forgotten (a `left` event
each, so their routes go), the seeds too, and membership messages are ignored (the others
still try their left members now and then). `rejoin(seeds)` undoes it: alive again one
incarnation past our `left` (which beats it everywhere), then a join through `seeds`; on a node
that never left it only adds seeds. `force_leave(name)` marks a member that is not alive (dead
or suspect) left, gossiped, as Serf's force-leave does; an alive one would refute it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from cluster.delegate import Delegate, EventKind, MemberEvent
from cluster.members import LIVE_STATES as _LIVE
from cluster.members import Member, MemberState, MemberTable, Update
from cluster.membership_config import MembershipConfig
from cluster.probe import Prober
from cluster.transmit import TransmitQueue
from cluster.wire import Address, Body, MessageType, Outgoing, WireError

__all__ = [
    "Delegate",
    "Member",
    "MemberEvent",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "Outgoing",
]

ALIVE, SUSPECT, DEAD, LEFT = MemberState
EVENT_OF: dict[MemberState, EventKind] = {
    MemberState.ALIVE: "alive",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "dead",
    MemberState.LEFT: "left",
}


def _is_alive(m: Member) -> bool:
    return m.state is ALIVE


_Handler = Callable[[MessageType, Address, Body, float, list[Outgoing]], None]


def _advance(at: float, interval: float, now: float) -> float:
    at += interval
    return at if at > now else now + interval


class Membership:
    """SWIM membership of one node. See the module docstring."""

    def __init__(
        self,
        name: str,
        address: Address,
        epoch: int,
        config: MembershipConfig,
        rng: random.Random,
        delegate: Delegate | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.epoch = epoch
        self.config = config
        self.rng = rng
        self.delegate = delegate or Delegate()
        self.stats: Counter[str] = Counter()
        self._me = Member(name, address, ALIVE, 0, epoch, 0.0)
        self._table = MemberTable(self._me, rng)
        self._queue: TransmitQueue[str] = TransmitQueue()
        self._members_wire: list[Any] | None = None  # cached member list for push/pull
        self._events: list[MemberEvent] = []
        self._prober = Prober(name, config, self._table, self._piggyback, self.stats)
        self._suspicions: dict[str, tuple[float, int, int]] = {}  # name -> deadline, epoch, inc
        self._seeds: list[Address] = []
        self._leaving = False
        self._isolated = False
        self._started = False
        self._next_probe = self._next_gossip = self._next_push_pull = 0.0
        self._next_join = self._next_reap = self._next_reconnect = 0.0
        self._resync: dict[str, None] = {}  # members back from the dead: push/pull with them
        self._gossip(self._me.update())
        self._handlers: dict[MessageType, _Handler]
        self._handlers = {
            MessageType.PING: self._on_probe,
            MessageType.ACK: self._on_probe,
            MessageType.PING_REQ: self._on_probe,
            MessageType.NACK: self._on_probe,
            MessageType.GOSSIP: self._on_gossip,
            MessageType.ROUTE_DELTA: self._on_gossip,
            MessageType.LEAVE: self._on_gossip,
            MessageType.PUSH_PULL_REQ: self._on_push_pull_req,
            MessageType.PUSH_PULL_RESP: self._on_push_pull_resp,
        }

    # -- queries ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def members(self) -> Mapping[str, Member]:
        """Read-only view: name -> Member (this node included, tombstones too)."""
        return self._table.view()

    @property
    def live_count(self) -> int:
        """Members alive or suspect, this node included (the `n` of the formulas)."""
        return self._table.live

    @property
    def leaving(self) -> bool:
        return self._leaving

    @property
    def isolated(self) -> bool:
        """Left the cluster by `isolate()` and standing alone."""
        return self._isolated

    @property
    def queued(self) -> int:
        """Membership updates waiting to be gossiped."""
        return len(self._queue)

    def get(self, name: str) -> Member | None:
        return self._table.get(name)

    def is_live(self, name: str, epoch: int) -> bool:
        m = self._table.get(name)
        return m is not None and m.epoch == epoch and m.state in _LIVE

    def live_members(self) -> list[Member]:
        """Other members that are alive or suspect."""
        return [m for m in self._table.values() if m.state in _LIVE and m is not self._me]

    def take_events(self) -> list[MemberEvent]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float:
        """When `tick` next has work to do."""
        at = self._prober.next_deadline()
        for deadline, _, _ in self._suspicions.values():
            at = min(at, deadline)
        # A node alone in its table has nobody to probe or gossip to: it does not wake the loop
        # for them (7 idle wake-ups a second, each delaying whatever message arrives then).
        if len(self._table) > 1:
            at = min(at, self._next_probe)
            if self._queue or self.delegate.has_broadcasts():
                at = min(at, self._next_gossip)
        if not self._leaving:
            at = min(at, self._next_push_pull)
            if self._table.live <= 1 and len(self._table) + len(self._seeds) > 1:
                at = min(at, self._next_join)
        if len(self._table) > self._table.live:
            at = min(at, self._next_reap)
        if len(self._table) > self._table.live or self._seeds:
            at = min(at, self._next_reconnect)
        return at

    # -- inputs ----------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        self._me.state_change_at = now
        cfg = self.config
        # Random phases keep the nodes of a cluster from acting in lockstep.
        self._next_probe = now + self.rng.uniform(0, cfg.probe_interval)
        self._next_gossip = now + self.rng.uniform(0, cfg.gossip_interval)
        self._next_push_pull = now + self.rng.uniform(0.5, 1.0) * cfg.push_pull_interval
        self._next_join = now + cfg.join_retry_interval
        self._next_reap = now + 1.0
        self._next_reconnect = now + self.rng.uniform(0, cfg.reconnect_interval)

    def join(self, seeds: list[Address], now: float) -> list[Outgoing]:
        """Push/pull (join=True) with every seed; `tick` retries while we are alone."""
        self._start(now)
        self._seeds = [s for s in seeds if s != self.address]
        self._next_join = now + self.config.join_retry_interval
        body = self._push_pull_body(join=True)
        return [Outgoing(seed, MessageType.PUSH_PULL_REQ, body) for seed in self._seeds]

    def leave(self, now: float) -> list[Outgoing]:
        """Graceful leave: gossip `left` about ourselves; send LEAVE to a few members."""
        self._start(now)
        if self._leaving:
            return []
        self._leaving = True
        me = self._me
        me.incarnation += 1
        self._table.set_state(me, LEFT, now)
        update = me.update()
        self._gossip(update)
        targets = self._table.sample(self.config.leave_fanout, lambda m: m.state in _LIVE)
        body: Body = {"from": self.name, "updates": [update.to_wire()]}
        return [Outgoing(m.address, MessageType.LEAVE, body) for m in targets]

    def isolate(self, now: float) -> list[Outgoing]:
        """After `leave()`: forget every other member and the seeds; ignore membership
        messages until `rejoin`. (The LEAVE must be sent before: our links to them close.)"""
        self._start(now)
        if not self._leaving:
            raise RuntimeError("isolate() comes after leave()")
        self._isolated = True
        self._seeds = []
        self._resync.clear()
        self._suspicions.clear()
        for m in list(self._table.values()):
            if m is not self._me and m.state in _LIVE:
                self._table.set_state(m, LEFT, now)
                self._emit("left", m)
        reaped = self._table.reap(now, now)
        for name in reaped:
            self._queue.discard(name)
        self._members_wire = None
        self._prober.forget(reaped, now)
        return []

    def rejoin(self, seeds: list[Address], now: float) -> list[Outgoing]:
        """Join through `seeds` too; after `leave()`/`isolate()`, alive again first."""
        self._start(now)
        if self._leaving:
            self._leaving = self._isolated = False
            me = self._me
            me.incarnation += 1
            self._table.set_state(me, ALIVE, now)
            self._members_wire = None
            self._gossip(me.update())
        return self.join(list(dict.fromkeys([*self._seeds, *seeds])), now)

    def force_leave(self, name: str, now: float) -> bool:
        """Mark member `name`, dead or suspect, left (gossiped); False if it is unknown, this
        node, alive (it would refute: ask it to leave) or left already."""
        m = self._table.get(name)
        if m is None or m is self._me or m.state in (ALIVE, LEFT):
            return False
        self._apply(replace(m.update(), state=LEFT), now)
        return True

    def handle(
        self, from_addr: Address, msg_type: MessageType, body: Body, now: float
    ) -> list[Outgoing]:
        """One membership message from `from_addr` (the sender's advertised address)."""
        self._start(now)
        handler = self._handlers.get(msg_type)
        out: list[Outgoing] = []
        if handler is None or self._isolated:
            self.stats["ignored"] += handler is not None
            return out
        self.stats["received/" + msg_type.name] += 1
        try:
            handler(msg_type, from_addr, body, now, out)
        except WireError:
            self.stats["malformed"] += 1
        return out

    def tick(self, now: float) -> list[Outgoing]:
        self._start(now)
        out: list[Outgoing] = []
        cfg = self.config
        failed = self._prober.check(now, out)
        if failed is not None:  # ignored if it refuted meanwhile (a higher incarnation)
            member, incarnation = failed
            self._apply(replace(member.update(), state=SUSPECT, incarnation=incarnation), now)
        for name, (deadline, epoch, inc) in list(self._suspicions.items()):
            if deadline <= now:
                del self._suspicions[name]
                m = self._table.get(name)
                if (
                    m is not None
                    and m.state is SUSPECT
                    and (m.epoch, m.incarnation) == (epoch, inc)
                ):
                    self._apply(replace(m.update(), state=DEAD), now)
        if now >= self._next_probe:
            # From now, not from the last schedule: a probe must end before the next starts.
            self._next_probe = now + cfg.probe_interval
            if not self._leaving:
                self._prober.start(now, out)
        if now >= self._next_gossip:
            self._next_gossip = _advance(self._next_gossip, cfg.gossip_interval, now)
            self._gossip_round(now, out)
        if now >= self._next_push_pull:
            self._next_push_pull = now + cfg.push_pull_period(self._table.live)
            back = None
            while self._resync and back is None:
                back = self._table.get(self._resync.popitem()[0])
                back = back if back is not None and back.state in _LIVE else None
            if self._resync:  # more to come: the next one soon
                self._next_push_pull = now + self.rng.uniform(0.5, 1.0) * cfg.probe_interval
            peers = [back] if back is not None else self._table.sample(1, _is_alive)
            if peers and not self._leaving:
                body = self._push_pull_body(join=False)
                out.append(Outgoing(peers[0].address, MessageType.PUSH_PULL_REQ, body))
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval
            target = self._reconnect_target()
            if target is not None and not self._leaving:
                body = self._push_pull_body(join=False)
                out.append(Outgoing(target, MessageType.PUSH_PULL_REQ, body))
        if now >= self._next_join:
            self._next_join = now + cfg.join_retry_interval
            if self._table.live <= 1 and not self._leaving:  # alone: seeds, the dead and left
                down = self._table.down()
                down = self.rng.sample(down, min(3, len(down)))
                body = self._push_pull_body(join=True)
                for address in [*self._seeds, *(m.address for m in down)]:
                    out.append(Outgoing(address, MessageType.PUSH_PULL_REQ, body))
        if now >= self._next_reap:
            self._next_reap = now + 1.0
            reaped = self._table.reap(now - cfg.dead_reclaim_time, now - cfg.left_reclaim_time)
            for name in reaped:
                self._queue.discard(name)
                self._members_wire = None
            self._prober.forget(reaped, now)
        return out

    def _reconnect_target(self) -> Address | None:
        """A dead or left member (Serf reconnects the dead; a left node may have come back) or a
        seed that is not a live member: partitions heal through them, even between groups that
        formed apart."""
        down = self._table.down()
        options = [self.rng.choice(down).address] if down else []
        if self._seeds:
            live = {m.address for m in self._table.values() if m.state in _LIVE}
            options.extend(seed for seed in self._seeds if seed not in live)
        return self.rng.choice(options) if options else None

    def heard_from(self, name: str, now: float) -> None:
        """Any frame from member `name` arrived; it answers our probe of it (`cluster.probe`)."""
        self._prober.heard_from(name, now)

    # -- message handlers ------------------------------------------------------------------

    def _on_probe(
        self, msg_type: MessageType, from_addr: Address, body: Body, now: float, out: list[Outgoing]
    ) -> None:
        self._receive_piggyback(body, now)
        self._prober.handle(msg_type, from_addr, body, now, out)

    def _on_gossip(
        self, msg_type: MessageType, from_addr: Address, body: Body, now: float, out: list[Outgoing]
    ) -> None:
        self._receive_piggyback(body, now)

    def _on_push_pull_req(
        self, msg_type: MessageType, from_addr: Address, body: Body, now: float, out: list[Outgoing]
    ) -> None:
        join = body.get("join") is True
        # Merge first: a refutation it provokes (it says we are dead) goes back in the answer.
        self._merge_push_pull(body, join, now)
        out.append(Outgoing(from_addr, MessageType.PUSH_PULL_RESP, self._push_pull_body(join)))

    def _on_push_pull_resp(
        self, msg_type: MessageType, from_addr: Address, body: Body, now: float, out: list[Outgoing]
    ) -> None:
        self._merge_push_pull(body, body.get("join") is True, now)

    def _merge_push_pull(self, body: Body, join: bool, now: float) -> None:
        members = body.get("members")
        if not isinstance(members, list):
            raise WireError("push/pull without a member list")
        self._merge_updates(members, now, remote_state=True)
        self.delegate.merge_remote_state(body.get("state"), join, now)

    def _push_pull_body(self, join: bool) -> Body:
        if self._members_wire is None:
            self._members_wire = [m.update().to_wire() for m in self._table.values()]
        return {
            "from": self.name,
            "join": join,
            "members": self._members_wire,
            "state": self.delegate.local_state(join),
        }

    # -- gossip ----------------------------------------------------------------------------

    def _gossip(self, update: Update) -> None:
        """Queue an accepted change (every change of the table passes here)."""
        self._queue.push(update.name, update.to_wire(), update.wire_size())
        self._members_wire = None

    def _piggyback(self, body: Body, first: list[Any] | None = None) -> Body:
        """Add queued membership updates, then delegate broadcasts, within the budget."""
        cfg = self.config
        limit = cfg.retransmit_limit(len(self._table))
        max_bytes, max_items = cfg.max_piggyback_bytes, cfg.max_piggyback_items
        updates: list[Any] = list(first) if first else []
        if self._queue:
            taken, used = self._queue.take(limit, max_bytes, max_items)
            updates.extend(taken)
            max_bytes -= used
            max_items -= len(taken)
        if updates:
            body["updates"] = updates
        if max_items > 0 and self.delegate.has_broadcasts():
            deltas = self.delegate.broadcasts(limit, max_bytes, max_items)
            if deltas:
                body["deltas"] = deltas
        return body

    def _gossip_round(self, now: float, out: list[Outgoing]) -> None:
        if not self._queue and not self.delegate.has_broadcasts():
            return
        horizon = now - self.config.gossip_to_the_dead_time
        targets = self._table.sample(
            self.config.gossip_nodes,
            lambda m: m.state in _LIVE or m.state_change_at > horizon,
        )
        for target in targets:
            body = self._piggyback({"from": self.name})
            if "updates" in body:
                out.append(Outgoing(target.address, MessageType.GOSSIP, body))
            elif "deltas" in body:
                out.append(Outgoing(target.address, MessageType.ROUTE_DELTA, body))
            else:
                break

    def _receive_piggyback(self, body: Body, now: float) -> None:
        updates = body.get("updates")
        if isinstance(updates, list):
            self._merge_updates(updates, now, remote_state=False)
        deltas = body.get("deltas")
        if isinstance(deltas, list) and deltas:
            self.delegate.receive_broadcasts(deltas, now)

    def _merge_updates(self, items: list[Any], now: float, remote_state: bool) -> None:
        get = self._table.by_name.get
        for item in items:
            try:  # fast path: most gossip repeats what we already know
                known = get(item[1])
                if (
                    known is not None
                    and known.incarnation == item[4]
                    and known.epoch == item[5]
                    and known.state == item[0]
                ):
                    continue
            except (LookupError, TypeError):
                pass  # malformed: from_wire says so below
            try:
                update = Update.from_wire(item)
            except WireError:
                self.stats["malformed"] += 1
                continue
            if update.state is DEAD and (remote_state or self._heard_lately(update, now)):
                # memberlist: a remote node's verdict in a full state makes us suspect only;
                # so does a verdict about a member whose frames reach us (see _heard_lately)
                update = replace(update, state=SUSPECT)
            self._apply(update, now)

    def _heard_lately(self, u: Update, now: float) -> bool:
        """A "dead" verdict about a member we hold live and heard from within the suspicion
        timeout is doubted: a node that really died fell silent at least one probe interval
        plus the suspicion timeout before anyone could declare it dead. Such a verdict is
        stale (the far side of a healed partition gossiping what it held while apart): it
        makes us suspect only, the member hears of it and refutes, and it is never declared
        dead by a node it can talk to."""
        m = self._table.get(u.name)
        if m is None or m.state not in _LIVE or u.epoch != m.epoch:
            return False
        since = now - self.config.suspicion_timeout(self._table.live)
        if self._prober.heard_since(u.name, since):
            self.stats["dead_doubted"] += 1
            return True
        return False

    # -- the merge rules -------------------------------------------------------------------

    def _apply(self, u: Update, now: float) -> None:
        """Merge one fact about a member (rules in the module docstring)."""
        if u.name == self.name:
            self._about_self(u)
            return
        m = self._table.get(u.name)
        if m is None:
            if u.state is ALIVE:  # only `alive` introduces a node
                m = Member(u.name, u.address, ALIVE, u.incarnation, u.epoch, now)
                self._table.add(m)
                self._emit("join", m)
                self._gossip(u)
            return
        if u.epoch < m.epoch:
            return
        if u.epoch > m.epoch:  # a new run of that node replaces the old one
            self._suspicions.pop(m.name, None)
            m.epoch, m.incarnation, m.address = u.epoch, u.incarnation, u.address
            if u.state in _LIVE:
                self._table.set_state(m, ALIVE, now)
                self._emit("join", m)
                if u.state is SUSPECT:
                    self._table.set_state(m, SUSPECT, now)
                    self._emit("suspect", m)
                    self._suspect(m, now)
            else:
                self._table.set_state(m, u.state, now)
                self._emit(EVENT_OF[u.state], m)
            self._gossip(u)
            return
        if u.state is ALIVE:
            if u.incarnation <= m.incarnation:
                return
            old = m.state
            m.incarnation, m.address = u.incarnation, u.address
            self._suspicions.pop(m.name, None)
            if old is not ALIVE:
                self._table.set_state(m, ALIVE, now)
                self._emit("alive", m)
            if old is DEAD:  # what we dropped when it died (its routes) we get back at once
                self._resync[m.name] = None
                while len(self._resync) > 8:  # bounded: a few are enough to heal a partition
                    del self._resync[next(iter(self._resync))]
                soon = now + self.rng.uniform(0, self.config.probe_interval)
                self._next_push_pull = min(self._next_push_pull, soon)
        elif u.state is SUSPECT:
            if m.state in (DEAD, LEFT) or u.incarnation < m.incarnation:
                return
            if m.state is SUSPECT and u.incarnation == m.incarnation:
                return
            m.incarnation = u.incarnation
            if m.state is ALIVE:
                self._table.set_state(m, SUSPECT, now)
                self._emit("suspect", m)
            self._suspect(m, now)
        else:  # DEAD or LEFT
            if u.incarnation < m.incarnation or m.state is LEFT:
                return
            if m.state is DEAD and u.state is DEAD:
                return
            m.incarnation = u.incarnation
            self._suspicions.pop(m.name, None)
            self._table.set_state(m, u.state, now)
            self._emit(EVENT_OF[u.state], m)
        self._gossip(u)

    def _about_self(self, u: Update) -> None:
        """Refute suspect/dead/left claims about this run of this node."""
        me = self._me
        if u.epoch != self.epoch or u.state is ALIVE or self._leaving:
            return
        if u.incarnation < me.incarnation:  # someone is behind: spread our alive again
            self._gossip(me.update())
            return
        me.incarnation = u.incarnation + 1
        self._gossip(me.update())
        self.stats["refutes"] += 1

    def _suspect(self, m: Member, now: float) -> None:
        deadline = now + self.config.suspicion_timeout(self._table.live)
        self._suspicions[m.name] = (deadline, m.epoch, m.incarnation)

    def _emit(self, kind: EventKind, m: Member) -> None:
        event = MemberEvent(kind, m.name, m.address, m.epoch)
        self._events.append(event)
        self.stats["events/" + kind] += 1
        self.delegate.on_event(event)
