"""Late QoS 2 copies held back for a session copy resumed while other nodes were out of reach.

Why: a client served on the other side of a partition, then back at this node's own copy of
its session, is resumed here with that copy as it was (its arrival stamp too, so that nothing
only this copy was sent is lost). At the heal, the forwards the other side held for this node
arrive (late, not `live`); the other side's copy delivered many of them already, and nothing
here can tell which (`broker.core.qos2_once`: the arrival rule does not apply, the repeat
record is that copy's). Measured (long profile, isolate_sub): about 100 of 3,000 QoS 2
messages delivered twice per run.

So the cluster marks such a copy (`hold`, `cluster.takeover_heal`): its late QoS 2 copies are
parked here (`park`, from `Broker.late_for`) instead of delivered, until the copies of the
session on the nodes that were out of reach are folded in (`fold_in`: their delivered QoS 2
records joined, what only they still had delivered); `release` then delivers the parked ones,
each once. A copy that leaves this node first takes its parked messages in its queue
(`Broker.surrender_session`), where the claim's fold sorts them.

A copy resumed while a member is healing (its link up, not yet seen alive) also holds back the
QoS 2 messages already in its queue (`hold_queue`): for the seconds after a heal two copies
live, and a message published then is routed to both; the client read it from the other one
and came here (measured: 3 QoS 2 twice in a long_partition run). They were accepted here
already, so at the fold those the other copy delivered are dropped, and `release` delivers the
rest without asking the repeat record. Parked deliveries are bounded
by the session's queue limit: beyond it a late copy is delivered at once (a repeat is possible,
nothing is lost). They are written to disk with the session, at the end of its queue
(`on_disk`): a restart delivers them (a repeat is possible, nothing is lost).

Pure state: no I/O, no clock of its own.
"""

from __future__ import annotations

from typing import Any

from broker.core.hlc import stamp_from_wire
from broker.core.message import Message, message_from_dict, message_to_dict
from broker.core.session import Session
from broker.core.session_export import SessionState
from broker.core.session_fold import delivered_qos2, released_qos2, unacknowledged
from broker.core.session_records import QueuedDelivery

__all__ = ["LateHold"]


class LateHold:
    """The held client ids of one broker, with the deliveries parked for each."""

    __slots__ = (
        "adopted", "folded_in", "parked", "queued", "released", "repeats", "waiting",
    )  # fmt: skip

    def __init__(self) -> None:
        #: client id -> the late QoS 2 deliveries parked for it, oldest first.
        self.waiting: dict[str, list[QueuedDelivery]] = {}
        #: client id -> its queued QoS 2 deliveries held back at its resume (`hold_queue`).
        self.queued: dict[str, list[QueuedDelivery]] = {}
        self.parked = self.released = self.repeats = self.folded_in = self.adopted = 0

    def __contains__(self, client_id: object) -> bool:
        return client_id in self.waiting

    def holds_any(self, client_id: str) -> bool:
        """Anything held back for `client_id` now (parked late copies or its queue's)."""
        return bool(self.waiting.get(client_id) or self.queued.get(client_id))

    def hold_queue(self, session: Session) -> int:
        """Hold `session` (as `hold`) and its queued QoS 2 deliveries (module docstring)
        until `release`; the number held back."""
        self.hold(session.client_id)
        taken = session.take_queued_qos2()
        if taken:
            self.queued.setdefault(session.client_id, []).extend(taken)
        return len(taken)

    def hold(self, client_id: str) -> None:
        """Park the late QoS 2 copies of `client_id` from now on (until `release`)."""
        self.waiting.setdefault(client_id, [])

    def park(self, session: Session, message: Message, qos: int, retain: bool,
             ids: list[int] | None) -> bool:  # fmt: skip
        """Keep one late delivery for `session` if it is held and has room; False: deliver it."""
        parked = self.waiting.get(session.client_id)
        if parked is None or len(parked) >= session.limits.max_queued:
            return False
        parked.append((message, qos, retain, ids))
        self.parked += 1
        session.touch()  # written to disk with the session (`on_disk`)
        return True

    def on_disk(self, client_id: str, state: SessionState) -> SessionState:
        """The state persistence writes for `client_id`: its parked deliveries at the end of
        its queue. A restart then delivers them (a repeat is possible, nothing is lost: the
        peer that sent them was acknowledged once they were committed)."""
        parked = [*self.queued.get(client_id, ()), *self.waiting.get(client_id, ())]
        if parked:
            state["queue"] = [*(state.get("queue") or ()), *(
                [message_to_dict(m), qos, retain, None if ids is None else list(ids)]
                for m, qos, retain, ids in parked
            )]  # fmt: skip
        return state

    def fold_in(self, session: Session, state: SessionState, now: float) -> tuple[int, int]:
        """Another copy of `session`, given up to this one (an exported state): the QoS 2
        messages it delivered are recorded as accepted here (a late copy of one is then a
        repeat), and what its client may not have had from it is delivered here, as an
        evicted copy passes it on (`cluster.takeover.unreleased`): its inflight messages not
        awaiting PUBCOMP, then its queue; a QoS 2 one only if this copy never accepted it.
        The exchanges it released and had not seen completed go on here
        (`Session.adopt_released`: a PUBREL, never the message again). Returns (delivered or
        taken over, dropped as repeats). Raises ValueError on a malformed state."""
        delivered_there = delivered_qos2(state)
        for wire in delivered_there:
            stamp = stamp_from_wire(list(wire))
            if stamp is not None:
                session.accept_qos2(stamp)
        held = self.queued.get(session.client_id)
        if held:  # accepted here before: what the other copy delivered is dropped now
            kept = [d for d in held if _wire(d[0]) not in delivered_there]
            self.repeats += len(held) - len(kept)
            self.queued[session.client_id] = kept
        adopted = 0
        for entry in released_qos2(state):
            message = message_from_dict(entry[1])
            adopted += session.adopt_released(
                entry[0], message, entry[3] is True, _ids(entry[4]), now
            )
        self.adopted += adopted
        items = [*unacknowledged(state), *(list(item) for item in state.get("queue") or ())]
        delivered = repeats = 0
        for item in items:
            message = message_from_dict(item[0])
            qos = item[1]
            if qos not in (0, 1, 2) or isinstance(qos, bool):
                raise ValueError(f"bad delivery {item!r:.200}")
            if qos == 2 and message.stamp is not None and not session.accept_qos2(message.stamp):
                repeats += 1
                continue
            session.deliver(message, qos, item[2] is True, _ids(item[3]), now)
            delivered += 1
        self.folded_in += 1
        return delivered + adopted, repeats

    def release(self, client_id: str, session: Session | None, now: float) -> tuple[int, int]:
        """End the hold of `client_id`: each parked delivery goes to `session` (its current
        copy here) unless the session accepted that message already. Returns (delivered,
        dropped): repeats, or every parked one when the session is gone."""
        queued = self.queued.pop(client_id, [])
        return self._deliver(queued, self.waiting.pop(client_id, []), session, now)

    def flush(self, client_id: str, session: Session | None, now: float) -> tuple[int, int]:
        """As `release`, but the hold goes on: what is parked now has waited long enough."""
        if not self.holds_any(client_id):
            return 0, 0
        queued = self.queued.pop(client_id, [])
        parked = self.waiting.get(client_id, [])
        self.waiting[client_id] = []
        return self._deliver(queued, parked, session, now)

    def _deliver(
        self,
        queued: list[QueuedDelivery],
        parked: list[QueuedDelivery],
        session: Session | None,
        now: float,
    ) -> tuple[int, int]:
        """The held-back queue first (accepted here already: delivered as it is), then the
        parked late copies, each unless the session accepted it already."""
        if session is None:
            return 0, len(queued) + len(parked)
        for message, qos, retain, ids in queued:
            session.deliver(message, qos, retain, ids, now)
        delivered = len(queued)
        dropped = 0
        for message, qos, retain, ids in parked:
            stamp = message.stamp
            if stamp is not None and not session.accept_qos2(stamp):
                dropped += 1
                continue
            session.deliver(message, qos, retain, ids, now)
            delivered += 1
        self.released += delivered
        self.repeats += dropped
        return delivered, dropped


def _wire(message: Message) -> tuple[Any, ...] | None:
    return None if message.stamp is None else tuple(message.stamp.to_wire())


def _ids(value: Any) -> list[int] | None:
    if isinstance(value, list | tuple) and all(isinstance(i, int) for i in value):
        return list(value)
    return None
