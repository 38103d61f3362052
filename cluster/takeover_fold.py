"""After a membership change, a CONNECT's claim gathers every copy of the session and folds them.

Why: the registry knows one holder per id, but a partition can leave two copies of one
session, one on each side (the client moved across the cut, or resumed a copy whose old holder
was out of reach; the owner forgets a dead node's entries). Until the holders register again
after the heal (`cluster.takeover_rounds`), a claim takes whichever copy the owner names, or
the claimant resumes its own copy with no claim at all, and the other copy is evicted later
with its queue. Measured (isolate_sub, README "Under faults"): the client's next node took the
copy whose queue held the QoS 2 messages the other copy had delivered from forwards held for it
during the cut, 14-26 delivered twice in about 1 run of 6.

So for `UNSETTLED` seconds after any membership change seen here (a death, a join, a return),
a claim also asks every other live node for its copy (`session_collect`, one RPC each, in
parallel, after the owner answered) and this node's own copy joins them; the copies are folded
into one (`broker.core.session_fold`: QoS 2 messages one copy delivered are taken out of the
other's queue, what only one copy still queued is kept, the QoS 2 records joined). A node
gives its copy up only to a claim newer than the one that brought the copy there (the stamp
order of `cluster.registry`), so of two CONNECTs at once the later one still wins. Members the
membership does not count live yet but whose link is up again are asked too: after a heal the
links come back first and the forwards held for the other side flow on them at once, so its
copy may have delivered them already (measured: 32 twice in 1 of 20 runs without this, the
claim 60 ms before the other side was seen alive). A steady cluster pays nothing; in the window
a CONNECT costs N-1 more RPCs.

`ClusterSessionLocator` inherits `CopyCollector` first; this module never imports
`cluster.takeover` (what it uses of the locator is declared below).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.core.broker import Broker
from broker.core.cluster_port import SessionState
from broker.core.session_fold import fold_copies
from cluster.handoff import Handoff
from cluster.registry import Stamp, newer, parse_stamp
from cluster.rpc import RemoteError, RpcError
from cluster.takeover_park import MOVED_FROM
from cluster.takeover_wire import Call, log_released, serve_surrender

log = logging.getLogger("cluster.takeover")

#: A node's copy of a session, asked for by a claim made after a membership change.
COLLECT_METHOD = "session_collect"
#: Seconds after a membership change during which claims gather every copy. Covers the heal
#: (the sides see each other alive within the detection bound) and the rounds that register
#: the ids again (every 10 s).
UNSETTLED = 30.0


class CopyCollector:
    """Claims that gather and fold the copies of a session; mixed into
    `ClusterSessionLocator`, whose `__init__` sets the attributes declared here."""

    name: str
    broker: Broker
    live_nodes: Callable[[], list[str]]
    call: Call
    handoff: Handoff
    timeout: float
    max_state_bytes: int
    stats: dict[str, int]
    held: dict[str, Stamp]
    _confirmed: dict[str, tuple[str, tuple[str, ...]]]
    #: `time.monotonic()` of the last membership change seen here (0: none).
    _changed_at: float = 0.0
    #: Members not live whose link is up again, and a call to them (`ClusterNode.linked_dead`,
    #: `call_linked`; set by `cluster.ports`): none without a transport.
    linked_dead: Callable[[], list[str]] = staticmethod(lambda: [])
    call_linked: Call | None = None

    if TYPE_CHECKING:  # `RegistryRounds` and `HealFold` define them

        def members_changed(self, node: str, kind: str) -> None: ...
        def records_of_gone(self, client_id: str) -> SessionState | None: ...

    else:

        def members_changed(self, node: str, kind: str) -> None:
            """Note the change (claims gather copies for a while), then the rounds' work."""
            if self._diverging(node, kind):
                self._changed_at = time.monotonic()
            super().members_changed(node, kind)

    def _diverging(self, node: str, kind: str) -> bool:
        """Can this change leave two copies of a session? A death, a departure, a return,
        and a join of a node seen before (restarted with its data dir); not the first join of
        a node while this one holds no session (a cluster forming: nothing to diverge)."""
        seen = self.__dict__.setdefault("_seen_nodes", set())
        first = node not in seen
        seen.add(node)
        if kind in ("alive", "dead", "left"):
            return True
        return kind == "join" and (not first or bool(self.broker.sessions))

    def unsettled(self) -> bool:
        """Members changed within `UNSETTLED` seconds: copies of a session may have diverged."""
        return bool(self._changed_at) and time.monotonic() - self._changed_at < UNSETTLED

    async def gather(
        self,
        client_id: str,
        stamp: Stamp,
        state: SessionState | None,
        nodes: list[str],
    ) -> SessionState | None:
        """The state the claim goes on with: `state` (from the owner) folded with every other
        copy of the session (the other live nodes' and this node's own)."""
        args = {"client_id": client_id, "stamp": list(stamp), "node": self.name}
        peers = [node for node in nodes if node != self.name]
        calls = [self.call(peer, COLLECT_METHOD, args, self.timeout * 2 / 3) for peer in peers]
        # A heal the links saw before the membership: held forwards may already have reached
        # a copy over there (measured: the client read them there, then its next node's claim
        # took this side's copy 0.1 s before that side was seen alive again).
        if self.call_linked is not None:
            for node in self.linked_dead():
                if node not in nodes:
                    log.info("takeover of %s: %s not live yet, its link up: asked", client_id, node)
                    peers.append(node)
                    calls.append(self.call_linked(node, COLLECT_METHOD, args, self.timeout / 3))
        self.stats["collects"] = self.stats.get("collects", 0) + len(peers)
        answers = await asyncio.gather(*calls, return_exceptions=True)
        copies: list[SessionState | None] = [state]
        for peer, answer in zip(peers, answers, strict=True):
            if isinstance(answer, dict):
                copies.append(answer)
                log.info("takeover of %s: a copy also on %s (%d queued)",
                         client_id, peer, len(answer.get("queue") or ()))  # fmt: skip
            elif isinstance(answer, RemoteError) and "no RPC method" in str(answer):
                continue  # a node of the previous version: its copy goes by the registry
            elif isinstance(answer, RpcError):
                log.info("takeover of %s: %s not asked for its copy: %s", client_id, peer, answer)
        local = self.broker.sessions.get(client_id)
        log.info("takeover of %s: copies asked of %d nodes after a membership change: %d found"
                 " (the owner's: %s queued, ours: %s)", client_id, len(peers), len(copies) - 1,
                 "none" if state is None else len(state.get("queue") or ()),
                 "none" if local is None else len(local.queue))  # fmt: skip
        if len(copies) < 2 and (state is None or local is None):
            return state  # one copy at most (the owner's, or ours resumed as it is)
        if local is not None:
            copies.append(local.export_state())
        try:
            folded = fold_copies(copies)
        except (TypeError, ValueError, IndexError) as exc:  # a malformed copy: the owner's stands
            log.warning("takeover of %s: its copies not folded: %s", client_id, exc)
            return state
        self.stats["folded"] = self.stats.get("folded", 0) + 1
        log.info("takeover of %s: %d copies folded (%d QoS 2 delivered elsewhere taken out, "
                 "%d added, %d not carried, %d released exchanges taken over)", client_id,
                 len(copies) - copies.count(None), folded.removed, folded.added, folded.dropped,
                 folded.adopted)  # fmt: skip
        if folded.dropped:
            self.broker.metrics.counters["messages/dropped"] += folded.dropped
        if folded.state is not None and state is not None and MOVED_FROM in state:
            # The owner's holder parked its copy (`cluster.takeover_park`): it drops it once
            # told this node committed, whichever copy the fold kept as its base.
            folded.state[MOVED_FROM] = state[MOVED_FROM]
        return folded.state

    async def serve_collect(self, args: dict[str, Any], from_node: str) -> SessionState | None:
        """`session_collect`: give this node's copy up to a claim made after a membership
        change, unless the copy came here by a newer claim (then it is the one to keep)."""
        client_id = args.get("client_id")
        stamp = parse_stamp(args.get("stamp"))
        new_node = args.get("node")
        if not isinstance(client_id, str) or not client_id or stamp is None:
            raise ValueError("session_collect needs client_id (str) and stamp [ms, n]")
        if not isinstance(new_node, str) or not new_node:
            new_node = from_node
        session = self.broker.sessions.get(client_id)
        if session is None or not session.expiry_interval:
            return self.records_of_gone(client_id)  # evicted lately: what it had delivered
        mine = self.held.get(client_id)
        if mine is not None and newer(mine, self.name, stamp, new_node):
            self.stats["collect_refused"] = self.stats.get("collect_refused", 0) + 1
            return None
        self.held.pop(client_id, None)
        self._confirmed.pop(client_id, None)
        self.handoff.surrendered_session(session, new_node)
        log_released(session, "collected")
        args = {"client_id": client_id, "clean_start": False}
        state = serve_surrender(self.broker, args, new_node, self.max_state_bytes)
        if state is not None:
            self.stats["collected"] = self.stats.get("collected", 0) + 1
            log.info("client %s: its copy here goes to %s (%d queued)",
                     client_id, new_node, len(state.get("queue") or ()))  # fmt: skip
        return state
