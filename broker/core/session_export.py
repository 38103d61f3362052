"""A session's move to another node (cluster takeover) and its restore from disk: `export_state`
writes what survives as plain msgpack-able data, `load_deliveries` takes the deliveries back.

Why a module of its own: the exported format and its checks are one job, apart from the flows of
a live session (`broker.core.session`); its other half, reading the subscriptions back, is
`broker.core.session_state`. `Session` inherits `SessionExport`, so both stay `Session` methods
bound as before; this module never imports `broker.core.session` (`_Exporting` says what it
needs of one) and adds no slot (`__slots__ = ()`).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from broker.core.hlc import Stamp
from broker.core.message import message_from_dict, message_to_dict
from broker.core.qos2_once import Seen
from broker.core.session_records import InflightEntry, QueuedDelivery, Subscription


class _QueueLimit(Protocol):
    @property
    def max_queued(self) -> int: ...


class _Exporting(Protocol):
    """What export and import use of a session (`broker.core.session.Session`)."""

    queued_bytes: int
    qos2_seen: Seen | None
    _earliest_expiry: float
    _next_packet_id: int

    @property
    def client_id(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def clean_start(self) -> bool: ...
    @property
    def expiry_interval(self) -> int: ...
    @property
    def created_at(self) -> float: ...
    @property
    def disconnected_at(self) -> float | None: ...
    @property
    def arrived(self) -> Stamp | None: ...
    @property
    def limits(self) -> _QueueLimit: ...
    @property
    def subscriptions(self) -> dict[str, Subscription]: ...
    @property
    def queue(self) -> deque[QueuedDelivery]: ...
    @property
    def inflight(self) -> dict[int, InflightEntry]: ...
    @property
    def awaiting_rel(self) -> dict[int, float]: ...

    def _drop(self) -> None: ...
    def _own_queue(self) -> deque[QueuedDelivery]: ...
    def _own_inflight(self) -> dict[int, InflightEntry]: ...
    def await_rel(self, packet_id: int, now: float) -> None: ...


class SessionExport:
    """`export_state` and `load_deliveries`; mixed into `Session` (the state lives there)."""

    __slots__ = ()

    def export_state(self: _Exporting) -> SessionState:
        """What survives a move to another node, as plain msgpack-able data.

        Subscriptions are `[filter, qos, no_local, retain_as_published, retain_handling,
        identifier]` (the filter with any `$share/` prefix); queued deliveries
        `[message, qos, retain, subscription_ids]`; inflight ones `[packet_id, message, qos,
        retain, subscription_ids, awaiting_comp]` in window order; `awaiting_rel` the ids of
        incoming QoS 2 messages already routed; `qos2_seen` the stamps of `accept_qos2`;
        `arrived` this copy's arrival stamp (kept by a restore from disk, not by a move).
        Messages are `message_to_dict` maps.
        """
        subscriptions = [
            [s.filter, s.qos, s.no_local, s.retain_as_published, s.retain_handling, s.identifier]
            for s in self.subscriptions.values()
        ]
        queue = [
            [message_to_dict(m), qos, retain, _ids_out(ids)] for m, qos, retain, ids in self.queue
        ]
        inflight = []
        for pid, e in self.inflight.items():
            ids_out = _ids_out(e.subscription_ids)
            message = message_to_dict(e.message)
            inflight.append([pid, message, e.qos, e.retain, ids_out, e.awaiting_comp])
        return {
            "v": 1,
            "client_id": self.client_id,
            "username": self.username,
            "clean_start": self.clean_start,
            "expiry_interval": self.expiry_interval,
            "created_at": self.created_at,
            "disconnected_at": self.disconnected_at,
            "subscriptions": subscriptions,
            "queue": queue,
            "inflight": inflight,
            "awaiting_rel": list(self.awaiting_rel),
            "qos2_seen": self.qos2_seen.to_wire() if self.qos2_seen is not None else [],
            "arrived": None if self.arrived is None else list(self.arrived),
        }

    def load_deliveries(self: _Exporting, state: SessionState, now: float) -> None:
        """Take the queue, inflight window and `awaiting_rel` of an exported state (the
        subscriptions are the broker's business: `Broker.import_session`). Inflight entries keep
        their packet ids and are resent by `resume` (DUP=1, or PUBREL once PUBREC'd); queued
        deliveries beyond `max_queued` are dropped and counted. Raises ValueError."""
        for item in _items(state, "queue", 4):
            if len(self.queue) >= self.limits.max_queued:
                self._drop()
                continue
            qos, retain, ids = item[1], item[2], _sub_ids(item[3])
            if qos not in (0, 1, 2) or not isinstance(retain, bool):
                raise ValueError(f"bad queued delivery {item!r:.200}")
            message = message_from_dict(item[0])
            self._own_queue().append((message, qos, retain, ids))
            self.queued_bytes += len(message.payload)
        self._earliest_expiry = 0.0  # imported messages: let the next full-queue check scan
        for item in _items(state, "inflight", 6):
            packet_id, qos, retain, awaiting_comp = item[0], item[2], item[3], item[5]
            if (
                not isinstance(packet_id, int)
                or not 1 <= packet_id <= 65535
                or qos not in (1, 2)
                or not isinstance(retain, bool)
                or not isinstance(awaiting_comp, bool)
            ):
                raise ValueError(f"bad inflight entry {item!r:.200}")
            entry = InflightEntry(message_from_dict(item[1]), qos, retain, _sub_ids(item[4]), now)
            entry.awaiting_comp = awaiting_comp and qos == 2
            self._own_inflight()[packet_id] = entry
            self._next_packet_id = packet_id % 65535 + 1
        rel = state.get("awaiting_rel") or []
        if not isinstance(rel, list) or not all(isinstance(i, int) for i in rel):
            raise ValueError("bad awaiting_rel")
        for packet_id in rel:
            self.await_rel(packet_id, now)
        self.qos2_seen = Seen.from_wire(state.get("qos2_seen"))  # (none from an older node)


#: `Session.export_state()`: a msgpack-able map (see there).
SessionState = dict[str, Any]


def _items(state: SessionState, key: str, width: int) -> list[list[Any]]:
    items = state.get(key) or []
    if not isinstance(items, list) or not all(
        isinstance(i, list | tuple) and len(i) >= width for i in items
    ):
        raise ValueError(f"bad {key!r} in session state")
    return [list(i) for i in items]


def _ids_out(ids: list[int] | None) -> list[int] | None:
    return None if ids is None else list(ids)


def _sub_ids(value: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(i, int) for i in value):
        raise ValueError(f"bad subscription identifiers {value!r:.100}")
    return list(value)
