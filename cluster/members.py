"""Members of the cluster as one node knows them: the member records (state, incarnation,
epoch), the update record gossip carries, and the member table with random choice among them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from cluster.wire import Address, WireError


class MemberState(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Update:
    """One membership fact: node `name` (run `epoch`) is in `state` at `incarnation`.

    On the wire: `[state, name, host, port, incarnation, epoch]`; extra trailing fields from a
    newer peer are ignored.
    """

    state: MemberState
    name: str
    address: Address
    incarnation: int
    epoch: int

    def to_wire(self) -> list[Any]:
        return [
            int(self.state),
            self.name,
            self.address[0],
            self.address[1],
            self.incarnation,
            self.epoch,
        ]

    def wire_size(self) -> int:
        """A close upper estimate of the packed size, for piggyback budgets."""
        return 24 + len(self.name) + len(self.address[0])

    @classmethod
    def from_wire(cls, item: Any) -> Update:
        """Raises WireError on anything malformed."""
        if not isinstance(item, list | tuple) or len(item) < 6:
            raise WireError(f"bad membership update {item!r}")
        state, name, host, port, incarnation, epoch = item[:6]
        if (
            not isinstance(state, int)
            or state not in _STATES
            or not isinstance(name, str)
            or not name
            or not isinstance(host, str)
            or not _is_int(port)
            or not 0 <= port <= 65535
            or not _is_int(incarnation)
            or incarnation < 0
            or not _is_int(epoch)
        ):
            raise WireError(f"bad membership update {item!r}")
        return cls(MemberState(state), name, (host, port), incarnation, epoch)


_STATES = frozenset(int(s) for s in MemberState)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(slots=True)
class Member:
    name: str
    address: Address
    state: MemberState
    incarnation: int
    epoch: int
    state_change_at: float

    def update(self) -> Update:
        return Update(self.state, self.name, self.address, self.incarnation, self.epoch)


LIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)


class MemberTable:
    """name -> Member (this node included, dead/left tombstones too).

    Keeps the number of live (alive or suspect) members, a list of the other members for O(1)
    random choice, and the shuffled round-robin order in which SWIM probes them.
    """

    def __init__(self, me: Member, rng: random.Random) -> None:
        self.me = me
        self.rng = rng
        self.live = 1 if me.state in LIVE_STATES else 0
        #: name -> Member; read it freely, change it only through this class.
        self.by_name: dict[str, Member] = {me.name: me}
        self._members = self.by_name
        self._peers: list[str] = []
        self._peer_index: dict[str, int] = {}
        self._down: dict[str, Member] = {}  # dead or left (never `me`)
        self._probe_order: list[str] = []
        self._probe_pos = 0

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def view(self) -> Mapping[str, Member]:
        return MappingProxyType(self._members)

    def values(self) -> Iterator[Member]:
        return iter(self._members.values())

    def __len__(self) -> int:
        return len(self._members)

    def add(self, m: Member) -> None:
        self._members[m.name] = m
        self._peer_index[m.name] = len(self._peers)
        self._peers.append(m.name)
        if m.state in LIVE_STATES:
            self.live += 1
        # Probe the newcomer within this round, at a random place (memberlist does the same).
        span = len(self._probe_order) - self._probe_pos + 1
        pos = self._probe_pos + int(self.rng.random() * span)
        self._probe_order.insert(pos, m.name)

    def set_state(self, m: Member, state: MemberState, now: float) -> None:
        was_live = m.state in LIVE_STATES
        m.state = state
        m.state_change_at = now
        self.live += (state in LIVE_STATES) - was_live
        if state in LIVE_STATES:
            self._down.pop(m.name, None)
        elif m is not self.me:
            self._down[m.name] = m

    def down(self) -> list[Member]:
        """Members dead or left."""
        return list(self._down.values())

    def reap(self, dead_horizon: float, left_horizon: float) -> list[str]:
        """Forget members dead since `dead_horizon` or left since `left_horizon` (or earlier)."""
        gone = [
            name
            for name, m in self._down.items()
            if m.state_change_at <= (dead_horizon if m.state is MemberState.DEAD else left_horizon)
        ]
        for name in gone:
            del self._members[name]
            del self._down[name]
            index = self._peer_index.pop(name)
            last = self._peers.pop()
            if last != name:
                self._peers[index] = last
                self._peer_index[last] = index
        return gone

    def next_probe_target(self) -> Member | None:
        """The next live member of the round robin; reshuffled at the end of each round."""
        order = self._probe_order
        members = self._members
        for _ in range(2):
            while self._probe_pos < len(order):
                m = members.get(order[self._probe_pos])
                self._probe_pos += 1
                if m is not None and m.state in LIVE_STATES:
                    return m
            order[:] = [name for name in self._peers if members[name].state in LIVE_STATES]
            self.rng.shuffle(order)
            self._probe_pos = 0
        return None

    def sample(self, k: int, accept: Callable[[Member], bool]) -> list[Member]:
        """Up to `k` distinct random other members that `accept` admits."""
        peers = self._peers
        n = len(peers)
        if k <= 0 or n == 0:
            return []
        members = self._members
        if n > 4 * k:  # large table: random draws, without building a candidate list
            chosen: dict[str, Member] = {}
            for _ in range(6 * k):
                m = members[peers[int(self.rng.random() * n)]]
                if m.name not in chosen and accept(m):
                    chosen[m.name] = m
                    if len(chosen) == k:
                        return list(chosen.values())
        pool = [members[name] for name in peers if accept(members[name])]
        return self.rng.sample(pool, min(k, len(pool)))
