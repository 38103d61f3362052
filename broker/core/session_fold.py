"""Two copies of one persistent session folded into one, so that QoS 2 stays exactly once.

Why: a partition can leave a copy of a session on each side (the client moved across the cut,
or resumed a copy whose old holder was out of reach). Each copy queued what was routed to it,
and the forwards held across the cut reach both sides after the heal, so the two queues hold
the same QoS 2 messages while the client has had some of them from one copy already. Choosing
one copy and dropping the other (what the registry did) delivers again what the other copy had
delivered, or loses what only the other copy had queued. Folding keeps each QoS 2 message once:

* the base is the copy the client arrived at last (`arrived`, the hybrid-clock stamp of the
  copy's arrival on its node; ties: the one disconnected last);
* a QoS 2 message another copy *delivered* (its publish stamp is in that copy's `qos2_seen`
  record, not in its queue and not inflight awaiting PUBREC: released to the client) is taken
  out of the base's queue;
* a QoS 2 message another copy still has queued, or sent without releasing it (inflight
  awaiting PUBREC: a client that delivers on PUBREL has not delivered it, and that copy is
  discarded, so nobody would release it), and the base never accepted is added to the base's
  queue (no loss), and the `qos2_seen` records are joined (a later copy of either is dropped
  as a repeat, `broker.core.qos2_once`);
* a QoS 2 exchange another copy released and had not seen completed (inflight awaiting
  PUBCOMP: its PUBREL may never have reached the client, which then still holds the message,
  as paho does across a reconnect) goes on in the base under its packet id, unless the base
  uses that id (then the client's state for it is the base's): the base resends its PUBREL on
  resume (MQTT-4.4.0-1), never the message, as the heal fold does (`Session.adopt_released`);
* QoS 0/1 messages of the other copies are not added (they carry no publish stamp, so what the
  base already delivered cannot be told apart; at-least-once allows a repeat but the base's own
  queue has the same routes' messages): they are counted as dropped, as before.

A copy evicted lately answers a collect with its QoS 2 records alone (`SEEN_ONLY`,
`cluster.takeover_heal`): folded as another copy, never the base.

Pure: exported states (`Session.export_state`) in, one state out; the cluster collects the
copies (`cluster.takeover_fold`).
"""

from __future__ import annotations

from typing import Any

from broker.core.qos2_once import SEEN_MAX
from broker.core.session_export import SessionState

__all__ = [
    "SEEN_ONLY",
    "FoldResult",
    "delivered_qos2",
    "fold_copies",
    "queued_qos2",
    "released_qos2",
    "unacknowledged",
    "unreleased_qos2",
]

#: Marks a "copy" that is only the QoS 2 records of a copy evicted lately
#: (`cluster.takeover_heal`): folded in as another copy, never the base.
SEEN_ONLY = "seen_only"

#: A publish stamp as a comparable value: `(ms, counter, node)` from its wire form.
WireStamp = tuple[Any, ...]


class FoldResult:
    """The folded state and what the fold did (for the logs and the counters)."""

    __slots__ = ("added", "adopted", "dropped", "removed", "state")

    def __init__(self, state: SessionState | None) -> None:
        self.state = state
        #: QoS 2 messages taken out of the base's queue (another copy delivered them).
        self.removed = 0
        #: QoS 2 messages of another copy's queue added to the base's.
        self.added = 0
        #: Other copies' queued messages not carried over (QoS 0/1, or QoS 2 seen by the base).
        self.dropped = 0
        #: Other copies' released QoS 2 exchanges that go on in the base (a PUBREL on resume).
        self.adopted = 0


def _stamp(value: Any) -> WireStamp | None:
    if isinstance(value, list | tuple) and len(value) == 3:
        return tuple(value)
    return None


def _message_stamp(message: Any) -> WireStamp | None:
    return _stamp(message.get("hlc")) if isinstance(message, dict) else None


def queued_qos2(state: SessionState) -> dict[WireStamp, list[Any]]:
    """The QoS 2 deliveries still queued in a copy, by their publish stamp."""
    out: dict[WireStamp, list[Any]] = {}
    for item in state.get("queue") or ():
        if isinstance(item, list | tuple) and len(item) >= 4 and item[1] == 2:
            stamp = _message_stamp(item[0])
            if stamp is not None:
                out[stamp] = list(item)
    return out


def unacknowledged(state: SessionState) -> list[list[Any]]:
    """A copy's inflight messages not awaiting PUBCOMP, in window order, as queue items
    `[message, qos, retain, ids]`: sent, but not known to have reached the client (QoS 1
    without PUBACK; QoS 2 without PUBREC, never released, so a client that delivers on PUBREL,
    MQTT 4.3.3 method A as paho does, has not delivered it). What a copy that goes passes on
    first, before its queue (`cluster.takeover.unreleased` is the same rule over a live one)."""
    return [
        [entry[1], entry[2], entry[3], entry[4]]
        for entry in state.get("inflight") or ()
        if isinstance(entry, list | tuple) and len(entry) >= 6 and not entry[5]
    ]


def unreleased_qos2(state: SessionState) -> dict[WireStamp, list[Any]]:
    """The QoS 2 messages a copy sent but never released (inflight, awaiting PUBREC), by
    their publish stamp, as queue items: no other copy can release them."""
    out: dict[WireStamp, list[Any]] = {}
    for item in unacknowledged(state):
        stamp = _message_stamp(item[0]) if item[1] == 2 else None
        if stamp is not None:
            out[stamp] = item
    return out


def released_qos2(state: SessionState) -> list[list[Any]]:
    """The QoS 2 exchanges a copy released (PUBREL sent) and had not seen completed, as its
    inflight entries `[packet_id, message, 2, retain, ids, True]`."""
    return [
        list(entry)
        for entry in state.get("inflight") or ()
        if isinstance(entry, list | tuple) and len(entry) >= 6 and entry[2] == 2
        and entry[5] is True and isinstance(entry[0], int) and 1 <= entry[0] <= 65535
    ]  # fmt: skip


def _seen(state: SessionState) -> list[WireStamp]:
    return [s for s in (_stamp(v) for v in state.get("qos2_seen") or ()) if s is not None]


def delivered_qos2(state: SessionState) -> set[WireStamp]:
    """The publish stamps of the QoS 2 messages a copy accepted and no longer holds queued
    or unreleased: released to the client (PUBREL sent, or the exchange complete)."""
    return set(_seen(state)) - set(queued_qos2(state)) - set(unreleased_qos2(state))


def _order(state: SessionState) -> tuple[WireStamp, float]:
    arrived = _stamp(state.get("arrived")) or (-1, -1, "")
    disconnected = state.get("disconnected_at")
    at = float(disconnected) if isinstance(disconnected, int | float) else float("inf")
    return arrived, at


def fold_copies(copies: list[SessionState | None]) -> FoldResult:
    """One state from the copies of one session (see the module docstring); None when there
    is none. The base is not changed in place: a new map is returned."""
    found = [c for c in copies if isinstance(c, dict) and not c.get(SEEN_ONLY)]
    if not found:
        return FoldResult(None)
    found.sort(key=_order)
    base = found[-1]
    others = found[:-1] + [c for c in copies if isinstance(c, dict) and c.get(SEEN_ONLY)]
    result = FoldResult(dict(base))
    if not others:
        return result
    state = result.state
    assert state is not None
    delivered: set[WireStamp] = set()
    for other in others:
        delivered |= delivered_qos2(other)
    queue: list[Any] = []
    for item in base.get("queue") or ():
        stamp = _message_stamp(item[0]) if item[1] == 2 else None
        if stamp is not None and stamp in delivered:
            result.removed += 1
            continue
        queue.append(item)
    known = set(_seen(base)) | set(queued_qos2(base))
    seen = set(_seen(base))
    for other in others:
        unreleased = unreleased_qos2(other)
        mine = queued_qos2(other) | unreleased
        for item in [*unreleased.values(), *(other.get("queue") or ())]:
            stamp = _message_stamp(item[0]) if item[1] == 2 else None
            if stamp is None or stamp in known or stamp not in mine:
                result.dropped += 1
                continue
            known.add(stamp)
            queue.append(list(item))
            result.added += 1
        seen |= set(_seen(other))
    state["queue"] = queue
    state["qos2_seen"] = [list(s) for s in sorted(seen)[-SEEN_MAX:]]
    rel = list(base.get("awaiting_rel") or [])
    for other in others:
        rel += [i for i in other.get("awaiting_rel") or () if i not in rel]
    state["awaiting_rel"] = rel
    inflight = [list(entry) for entry in base.get("inflight") or ()]
    in_use = {entry[0] for entry in inflight}
    for other in others:
        for entry in released_qos2(other):
            if entry[0] not in in_use:
                in_use.add(entry[0])
                inflight.append(entry)
                result.adopted += 1
    state["inflight"] = inflight
    return result
