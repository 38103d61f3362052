"""The states of a client connection and every transition between them (h11's `_state.py`).

Everything that moves a connection from one state to another goes through `next_state`, and the
table below is the whole list of moves, so a reader can check the rules in one place:

    CONNECTING --accept-->   CONNECTED   the CONNECT is accepted (after enhanced auth, if any)
    CONNECTING --takeover--> TAKEOVER    in a cluster: other nodes must give the client id up
    TAKEOVER   --accept-->   CONNECTED   they did (or failed, or timed out)
    any but CLOSED --close--> CLOSED     whatever way it ends (`Connection.shut`, written once)

Which packets each state admits (MQTT-3.1.0-1/2): CONNECTING takes CONNECT, and AUTH while an
enhanced authentication runs; CONNECTED takes everything a client may send except a second
CONNECT; TAKEOVER holds its input unread, CLOSED drops it. TAKEOVER is numbered above CLOSED, so
one `state >= CLOSED` test on the input path covers both states in which packets are not handled.
Keepalive applies in CONNECTED only; CONNECTING and TAKEOVER have their own time limits
(`Connection.check_timeouts`).
"""

from __future__ import annotations

from broker.protocol.constants import PacketType

CONNECTING, CONNECTED, CLOSED, TAKEOVER = 0, 1, 2, 3

NAMES = {CONNECTING: "CONNECTING", CONNECTED: "CONNECTED", CLOSED: "CLOSED", TAKEOVER: "TAKEOVER"}

# Events.
ACCEPT = "accept"
AWAIT_TAKEOVER = "takeover"
CLOSE = "close"

#: (state, event) -> next state; anything missing is a bug in the caller.
TRANSITIONS: dict[tuple[int, str], int] = {
    (CONNECTING, ACCEPT): CONNECTED,
    (CONNECTING, AWAIT_TAKEOVER): TAKEOVER,
    (TAKEOVER, ACCEPT): CONNECTED,
    (CONNECTING, CLOSE): CLOSED,
    (TAKEOVER, CLOSE): CLOSED,
    (CONNECTED, CLOSE): CLOSED,
}

#: Packets handled before the CONNECT is accepted; any other is a protocol error (MQTT-3.1.0-1).
BEFORE_CONNECT = frozenset({PacketType.CONNECT, PacketType.AUTH})


def next_state(state: int, event: str) -> int:
    """The state after `event`; raises RuntimeError for a move the table does not allow."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(f"no transition from {NAMES.get(state, state)} on {event!r}") from None
