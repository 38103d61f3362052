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
(PUSH_PULL_REQ/RESP). Joining is a push/pull with each seed, retried every `join_retry_interval`
while no other member is known. A remote `dead` learned this way only makes us suspect.

Leaving. `leave()` marks this node left (incarnation + 1) and sends LEAVE to a few members; the
`left` update then spreads by gossip. A leaving node no longer probes or refutes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from cluster.gossip import (
    EVENT_OF,
    Delegate,
    EventKind,
    Member,
    MemberEvent,
    MembershipConfig,
    MemberState,
    Outgoing,
    TransmitQueue,
    Update,
)
from cluster.members import LIVE_STATES, MemberTable
from cluster.wire import Address, Body, MessageType, WireError, get_int, get_str, to_address

__all__ = [
    "Delegate",
    "Member",
    "MemberEvent",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "Outgoing",
]

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
_LIVE = LIVE_STATES


class _Probe:
    __slots__ = ("epoch", "indirect_sent", "sent_at", "seq", "target")

    def __init__(self, seq: int, target: str, epoch: int, sent_at: float) -> None:
        self.seq = seq
        self.target = target
        self.epoch = epoch
        self.sent_at = sent_at
        self.indirect_sent = False


class _Relay(NamedTuple):
    """A ping we send for someone else's PING_REQ."""

    requester: Address
    seq: int
    deadline: float


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
        self._events: list[MemberEvent] = []
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, tuple[float, int, int]] = {}  # name -> deadline, epoch, inc
        self._seeds: list[Address] = []
        self._leaving = False
        self._started = False
        self._next_probe = self._next_gossip = self._next_push_pull = 0.0
        self._next_join = self._next_reap = 0.0
        self._gossip(self._me.update())
        self._handlers: dict[MessageType, Callable[[Address, Body, float, list[Outgoing]], None]]
        self._handlers = {
            MessageType.PING: self._on_ping,
            MessageType.ACK: self._on_ack,
            MessageType.PING_REQ: self._on_ping_req,
            MessageType.NACK: self._on_nack,
            MessageType.GOSSIP: self._on_gossip,
            MessageType.ROUTE_DELTA: self._on_gossip,
            MessageType.LEAVE: self._on_gossip,
            MessageType.PUSH_PULL_REQ: self._on_push_pull_req,
            MessageType.PUSH_PULL_RESP: self._on_push_pull_resp,
        }
        self.delegate.attached(self)

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
        at = self._next_probe
        probe = self._probe
        if probe is not None:
            end = probe.sent_at + self.config.probe_interval
            at = min(at, end if probe.indirect_sent else probe.sent_at + self.config.probe_timeout)
        for relay in self._relays.values():
            at = min(at, relay.deadline)
        for deadline, _, _ in self._suspicions.values():
            at = min(at, deadline)
        if self._queue or self.delegate.has_broadcasts():
            at = min(at, self._next_gossip)
        if not self._leaving:
            at = min(at, self._next_push_pull)
            if self._seeds and self._table.live <= 1:
                at = min(at, self._next_join)
        if len(self._table) > self._table.live:
            at = min(at, self._next_reap)
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

    def join(self, seeds: list[Address], now: float) -> list[Outgoing]:
        """Push/pull (join=True) with every seed; retried from `tick` while alone."""
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

    def handle(
        self, from_addr: Address, msg_type: MessageType, body: Body, now: float
    ) -> list[Outgoing]:
        """One membership message from `from_addr` (the sender's advertised address)."""
        self._start(now)
        handler = self._handlers.get(msg_type)
        out: list[Outgoing] = []
        if handler is None:
            return out
        self.stats["received/" + msg_type.name] += 1
        try:
            handler(from_addr, body, now, out)
        except WireError:
            self.stats["malformed"] += 1
        return out

    def tick(self, now: float) -> list[Outgoing]:
        self._start(now)
        out: list[Outgoing] = []
        cfg = self.config
        self._check_probe(now, out)
        for seq, relay in list(self._relays.items()):
            if relay.deadline <= now:
                del self._relays[seq]
                out.append(
                    Outgoing(
                        relay.requester, MessageType.NACK, {"seq": relay.seq, "from": self.name}
                    )
                )
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
                self._start_probe(now, out)
        if now >= self._next_gossip:
            self._next_gossip = _advance(self._next_gossip, cfg.gossip_interval, now)
            self._gossip_round(now, out)
        if now >= self._next_push_pull:
            self._next_push_pull = now + cfg.push_pull_period(self._table.live)
            if not self._leaving:
                peers = self._table.sample(1, lambda m: m.state is ALIVE)
                if peers:
                    body = self._push_pull_body(join=False)
                    out.append(Outgoing(peers[0].address, MessageType.PUSH_PULL_REQ, body))
        if now >= self._next_join:
            self._next_join = now + cfg.join_retry_interval
            if self._seeds and self._table.live <= 1 and not self._leaving:
                out.extend(self.join(self._seeds, now))
        if now >= self._next_reap:
            self._next_reap = now + 1.0
            for name in self._table.reap(now - cfg.dead_reclaim_time):
                self._queue.discard(name)
        return out

    # -- probing ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _start_probe(self, now: float, out: list[Outgoing]) -> None:
        target = self._table.next_probe_target()
        if target is None:
            return
        probe = _Probe(self._next_seq(), target.name, target.epoch, now)
        self._probe = probe
        # A suspect target is told so, so that it can refute at once.
        first = [target.update().to_wire()] if target.state is SUSPECT else None
        body = self._piggyback({"seq": probe.seq, "from": self.name, "target": target.name}, first)
        out.append(Outgoing(target.address, MessageType.PING, body))
        self.stats["probes"] += 1

    def _check_probe(self, now: float, out: list[Outgoing]) -> None:
        probe = self._probe
        if probe is None:
            return
        cfg = self.config
        target = self._table.get(probe.target)
        if target is None or target.epoch != probe.epoch:
            self._probe = None
            return
        if not probe.indirect_sent and now >= probe.sent_at + cfg.probe_timeout:
            probe.indirect_sent = True
            helpers = self._table.sample(
                cfg.indirect_checks, lambda m: m.state is ALIVE and m.name != probe.target
            )
            for helper in helpers:
                body = self._piggyback(
                    {
                        "seq": probe.seq,
                        "from": self.name,
                        "target": target.name,
                        "target_addr": list(target.address),
                    }
                )
                out.append(Outgoing(helper.address, MessageType.PING_REQ, body))
            self.stats["indirect_probes"] += 1
        if now >= probe.sent_at + cfg.probe_interval:
            self._probe = None
            self.stats["probe_failures"] += 1
            if target.state is ALIVE:
                self._apply(replace(target.update(), state=SUSPECT), now)

    # -- message handlers ------------------------------------------------------------------

    def _on_ping(self, from_addr: Address, body: Body, now: float, out: list[Outgoing]) -> None:
        seq = get_int(body, "seq")
        self._receive_piggyback(body, now)
        target = body.get("target")
        if target is not None and target != self.name:
            self.stats["misdirected"] += 1  # meant for a node that had our address before
            return
        out.append(
            Outgoing(from_addr, MessageType.ACK, self._piggyback({"seq": seq, "from": self.name}))
        )

    def _on_ack(self, from_addr: Address, body: Body, now: float, out: list[Outgoing]) -> None:
        seq = get_int(body, "seq")
        self._receive_piggyback(body, now)
        if self._probe is not None and self._probe.seq == seq:
            self._probe = None
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            out.append(
                Outgoing(
                    relay.requester,
                    MessageType.ACK,
                    self._piggyback({"seq": relay.seq, "from": self.name}),
                )
            )

    def _on_ping_req(self, from_addr: Address, body: Body, now: float, out: list[Outgoing]) -> None:
        seq = get_int(body, "seq")
        target = get_str(body, "target")
        target_addr = to_address(body.get("target_addr"))
        self._receive_piggyback(body, now)
        mine = self._next_seq()
        self._relays[mine] = _Relay(from_addr, seq, now + self.config.probe_timeout)
        ping = self._piggyback({"seq": mine, "from": self.name, "target": target})
        out.append(Outgoing(target_addr, MessageType.PING, ping))

    def _on_nack(self, from_addr: Address, body: Body, now: float, out: list[Outgoing]) -> None:
        get_int(body, "seq")
        self.stats["nacks"] += 1

    def _on_gossip(self, from_addr: Address, body: Body, now: float, out: list[Outgoing]) -> None:
        self._receive_piggyback(body, now)

    def _on_push_pull_req(
        self, from_addr: Address, body: Body, now: float, out: list[Outgoing]
    ) -> None:
        join = body.get("join") is True
        out.append(Outgoing(from_addr, MessageType.PUSH_PULL_RESP, self._push_pull_body(join)))
        self._merge_push_pull(body, join, now)

    def _on_push_pull_resp(
        self, from_addr: Address, body: Body, now: float, out: list[Outgoing]
    ) -> None:
        self._merge_push_pull(body, body.get("join") is True, now)

    def _merge_push_pull(self, body: Body, join: bool, now: float) -> None:
        members = body.get("members")
        if not isinstance(members, list):
            raise WireError("push/pull without a member list")
        self._merge_updates(members, now, remote_state=True)
        self.delegate.merge_remote_state(body.get("state"), join, now)

    def _push_pull_body(self, join: bool) -> Body:
        return {
            "from": self.name,
            "join": join,
            "members": [m.update().to_wire() for m in self._table.values()],
            "state": self.delegate.local_state(join),
        }

    # -- gossip ----------------------------------------------------------------------------

    def _gossip(self, update: Update) -> None:
        self._queue.push(update.name, update.to_wire(), update.wire_size())

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
        members = self._table.by_name
        for item in items:
            # Fast path: most gossip repeats what we already know.
            if isinstance(item, list) and len(item) >= 6 and isinstance(item[1], str):
                known = members.get(item[1])
                if (
                    known is not None
                    and known.incarnation == item[4]
                    and known.epoch == item[5]
                    and known.state == item[0]
                ):
                    continue
            try:
                update = Update.from_wire(item)
            except WireError:
                self.stats["malformed"] += 1
                continue
            if remote_state and update.state is DEAD:
                # memberlist: a remote node's verdict in a full state makes us suspect only
                update = replace(update, state=SUSPECT)
            self._apply(update, now)

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
        if u.incarnation < me.incarnation:
            return
        me.incarnation = u.incarnation + 1
        self._gossip(me.update())
        self.stats["refutes"] += 1
        self.delegate.on_refute(u.state)

    def _suspect(self, m: Member, now: float) -> None:
        deadline = now + self.config.suspicion_timeout(self._table.live)
        self._suspicions[m.name] = (deadline, m.epoch, m.incarnation)

    def _emit(self, kind: EventKind, m: Member) -> None:
        event = MemberEvent(kind, m.name, m.address, m.epoch)
        self._events.append(event)
        self.stats["events/" + kind] += 1
        self.delegate.on_event(event)
