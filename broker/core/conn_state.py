"""The states of a client connection (see `broker.core.channel`)."""

from __future__ import annotations

CONNECTING, CONNECTED, CLOSED = 0, 1, 2
#: Authenticated, waiting for another node to give up the client id (`cluster_port`): input is
#: held, not handled; keepalive does not apply. Larger than CLOSED, so one `>= CLOSED` test on
#: the input path covers both states where packets are not handled.
TAKEOVER = 3
