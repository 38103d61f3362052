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
(`Broker.surrender_session`), where the claim's fold sorts them. Parked deliveries are bounded
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

    __slots__ = ("adopted", "folded_in", "parked", "released", "repeats", "waiting")

    def __init__(self) -> None:
        #: client id -> the late QoS 2 deliveries parked for it, oldest first.
        self.waiting: dict[str, list[QueuedDelivery]] = {}
        self.parked = self.released = self.repeats = self.folded_in = self.adopted = 0

    def __contains__(self, client_id: object) -> bool:
        return client_id in self.waiting

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
        parked = self.waiting.get(client_id)
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
        for wire in delivered_qos2(state):
            stamp = stamp_from_wire(list(wire))
            if stamp is not None:
                session.accept_qos2(stamp)
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
        return self._deliver(self.waiting.pop(client_id, []), session, now)

    def flush(self, client_id: str, session: Session | None, now: float) -> tuple[int, int]:
        """As `release`, but the hold goes on: what is parked now has waited long enough."""
        parked = self.waiting.get(client_id)
        if not parked:
            return 0, 0
        self.waiting[client_id] = []
        return self._deliver(parked, session, now)

    def _deliver(
        self, parked: list[QueuedDelivery], session: Session | None, now: float
    ) -> tuple[int, int]:
        if session is None:
            return 0, len(parked)
        delivered = dropped = 0
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


def _ids(value: Any) -> list[int] | None:
    if isinstance(value, list | tuple) and all(isinstance(i, int) for i in value):
        return list(value)
    return None
