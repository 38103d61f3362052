"""The SWIM failure detector of one node: probe rounds, indirect probes, relays for others.

Each probe round (`start`, every `probe_interval`) pings the next member of the round robin;
the ping carries our own `alive` record, so every member hears it directly once per round robin.
Without an ACK after `probe_timeout`, `check` sends PING_REQ to `indirect_checks` random alive
members, which ping the target with their own seq and relay its ACK (or a NACK when their
`probe_timeout` runs out). Without any ACK by the end of the interval, `check` returns the target:
`Membership` then marks it suspect. All messages get the caller's gossip piggybacked.

Any frame from the target counts as its ACK (`heard_from`): one that arrives while its probe is
outstanding, or one from no longer than a probe interval before the probe was sent. Probes share
the TCP link with FORWARDs: under load a PING or its ACK can wait behind megabytes of messages
in socket buffers, and a node busy sending us messages (or pinging us on the idle direction) was
declared dead for being slow to answer. Traffic from a node proves it is running; a node that
has stopped sends nothing, so it is still found out, one probe interval later at most (plus
whatever it had sent before and is still in flight).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from cluster.members import Member, MemberState, MemberTable
from cluster.membership_config import MembershipConfig
from cluster.wire import Address, Body, MessageType, Outgoing, get_int, get_str, to_address

#: Adds piggybacked gossip to a body; the list, if any, goes first.
Piggyback = Callable[[Body, "list[Any] | None"], Body]


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    epoch: int
    incarnation: int  # a failure only suspects what we knew when we sent it (as memberlist)
    sent_at: float
    indirect_sent: bool = False


class _Relay(NamedTuple):
    """A ping we send for someone else's PING_REQ."""

    requester: Address
    seq: int
    deadline: float


class Prober:
    """Probe state of one node; see the module docstring."""

    def __init__(
        self,
        name: str,
        config: MembershipConfig,
        table: MemberTable,
        piggyback: Piggyback,
        stats: Counter[str],
    ) -> None:
        self.name = name
        self.config = config
        self.table = table
        self.piggyback = piggyback
        self.stats = stats
        self._seqs = itertools.count(1)
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        #: When a frame from each member last arrived (`heard_from`); bounded by `forget`.
        self._heard: dict[str, float] = {}

    def next_deadline(self) -> float:
        at = float("inf")
        probe = self._probe
        if probe is not None:
            if probe.indirect_sent:
                at = probe.sent_at + self.config.probe_interval
            else:
                at = probe.sent_at + self.config.probe_timeout
        for relay in self._relays.values():
            at = min(at, relay.deadline)
        return at

    def start(self, now: float, out: list[Outgoing]) -> None:
        """A new probe round: ping the next member of the round robin."""
        target = self.table.next_probe_target()
        if target is None:
            return
        probe = _Probe(next(self._seqs), target.name, target.epoch, target.incarnation, now)
        self._probe = probe
        # Our own alive goes first: a target that missed our join (or our refutation) learns it
        # here. A suspect target is told so, so that it can refute at once.
        first = [self.table.me.update().to_wire()]
        if target.state is MemberState.SUSPECT:
            first.append(target.update().to_wire())
        body = self.piggyback({"seq": probe.seq, "from": self.name, "target": target.name}, first)
        out.append(Outgoing(target.address, MessageType.PING, body))
        self.stats["probes"] += 1

    def heard_from(self, name: str, now: float) -> None:
        """A frame from `name` arrived: it answers our outstanding probe of it, if any."""
        self._heard[name] = now
        probe = self._probe
        if probe is not None and probe.target == name:
            self._probe = None
            self.stats["probes/answered_by_traffic"] += 1

    def heard_since(self, name: str, since: float) -> bool:
        """A frame from member `name` arrived at `since` or later (see `forget`)."""
        return self._heard.get(name, -math.inf) >= since

    def forget(self, reaped: list[str], now: float) -> None:
        """Drop what no probe can use any more: the reaped members, and frames heard more than
        two probe intervals ago (a probe lasts one interval and counts the frames of the
        interval before it was sent), which also covers senders that never became members.
        A live member's last frame is kept for the suspicion timeout if that is longer:
        `Membership` doubts a remote "dead" about a member heard that recently."""
        heard = self._heard
        for name in reaped:
            heard.pop(name, None)
        cfg = self.config
        horizon = now - 2 * cfg.probe_interval
        member_horizon = min(horizon, now - cfg.suspicion_timeout(self.table.live))
        get = self.table.get
        live = (MemberState.ALIVE, MemberState.SUSPECT)
        for name in [name for name, at in heard.items() if at < horizon]:
            m = get(name)
            if m is None or m.state not in live or heard[name] < member_horizon:
                del heard[name]

    def check(self, now: float, out: list[Outgoing]) -> tuple[Member, int] | None:
        """Timeouts: indirect probes, NACKs for relays.

        Returns a target that failed its probe, with its incarnation when the probe was sent.
        """
        for seq, relay in list(self._relays.items()):
            if relay.deadline <= now:
                del self._relays[seq]
                nack = {"seq": relay.seq, "from": self.name}
                out.append(Outgoing(relay.requester, MessageType.NACK, nack))
        probe = self._probe
        if probe is None:
            return None
        cfg = self.config
        target = self.table.get(probe.target)
        if target is None or target.epoch != probe.epoch:
            self._probe = None
            return None
        if not probe.indirect_sent and now >= probe.sent_at + cfg.probe_timeout:
            probe.indirect_sent = True
            helpers = self.table.sample(
                cfg.indirect_checks,
                lambda m: m.state is MemberState.ALIVE and m.name != probe.target,
            )
            for helper in helpers:
                req = {
                    "seq": probe.seq,
                    "from": self.name,
                    "target": target.name,
                    "target_addr": list(target.address),
                }
                out.append(
                    Outgoing(helper.address, MessageType.PING_REQ, self.piggyback(req, None))
                )
            self.stats["indirect_probes"] += 1
        if now >= probe.sent_at + cfg.probe_interval:
            self._probe = None
            if self._heard.get(target.name, -math.inf) >= probe.sent_at - cfg.probe_interval:
                self.stats["probes/answered_by_traffic"] += 1
                return None
            self.stats["probe_failures"] += 1
            return target, probe.incarnation
        return None

    def handle(
        self, msg_type: MessageType, from_addr: Address, body: Body, now: float, out: list[Outgoing]
    ) -> None:
        """PING, ACK, PING_REQ or NACK (raises WireError when malformed)."""
        seq = get_int(body, "seq")
        if msg_type is MessageType.PING:
            target = body.get("target")
            if target is not None and target != self.name:
                self.stats["misdirected"] += 1  # meant for a node that had our address before
                return
            ack = self.piggyback({"seq": seq, "from": self.name}, None)
            out.append(Outgoing(from_addr, MessageType.ACK, ack))
        elif msg_type is MessageType.ACK:
            if self._probe is not None and self._probe.seq == seq:
                self._probe = None
                return
            relay = self._relays.pop(seq, None)
            if relay is not None:
                ack = self.piggyback({"seq": relay.seq, "from": self.name}, None)
                out.append(Outgoing(relay.requester, MessageType.ACK, ack))
        elif msg_type is MessageType.PING_REQ:
            target_name = get_str(body, "target")
            target_addr = to_address(body.get("target_addr"))
            mine = next(self._seqs)
            self._relays[mine] = _Relay(from_addr, seq, now + self.config.probe_timeout)
            ping = self.piggyback({"seq": mine, "from": self.name, "target": target_name}, None)
            out.append(Outgoing(target_addr, MessageType.PING, ping))
        elif msg_type is MessageType.NACK:
            self.stats["nacks"] += 1
