"""The three states of a client connection (see `broker.core.channel`)."""

from __future__ import annotations

CONNECTING, CONNECTED, CLOSED = 0, 1, 2
