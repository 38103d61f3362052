"""The floor of a Python broker's lone-message latency: a relay that does nothing else.

`python -m benchmarks.latency_ab floor-epoll floor-asyncio minibroker mosquitto` runs these
beside the brokers. A relay answers the CONNECT and SUBSCRIBE of `latency_ab`'s client and
writes every PUBLISH it reads, as read, to the one subscriber: no decoding, no routing, no
session, no counter. `epoll` is the least an event-driven Python process does per message
(one `epoll.poll`, one `recv`, one `send` in a loop of a few lines); `asyncio` is the same on
asyncio's own loop and transports. Why: the p99 goal of issue 15 (our p99 no higher than
mosquitto's) can only be met if this floor meets it; what a broker costs above the floor is
its own work, what the floor costs above mosquitto is Python's.

Not an MQTT broker: it trusts that each read is one whole packet of `latency_ab`'s client
(true at one message at a time on loopback) and serves one subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import socket

__all__ = ["KINDS", "LABEL", "main"]

KINDS = ("epoll", "asyncio")
#: How a relay's results are labelled ("Python floor (epoll)"), so reports can tell them apart.
LABEL = "Python floor"
CONNACK = b"\x20\x02\x00\x00"
#: PUBLISH of QoS 0 (no DUP, no RETAIN), CONNECT, and SUBSCRIBE's first byte.
PUBLISH, CONNECT, SUBSCRIBE = 0x30, 0x10, 0x82
#: Bytes read per readiness, as the broker (`broker.server.socket_transport.MAX_READ`).
MAX_READ = 256 * 1024


def suback(subscribe: bytes) -> bytes:
    """SUBACK granting QoS 0 to a SUBSCRIBE of one filter (its packet id is bytes 2-3)."""
    return b"\x90\x03" + subscribe[2:4] + b"\x00"


def serve_epoll(port: int) -> None:
    """The relay as a bare epoll loop, until killed."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    clients: dict[int, socket.socket] = {}
    subscriber: socket.socket | None = None
    while True:
        for fd, _ in epoll.poll():
            if fd == listener.fileno():
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients[conn.fileno()] = conn
                epoll.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = clients[fd]
            data = conn.recv(MAX_READ)
            if not data:
                epoll.unregister(fd)
                del clients[fd]
                conn.close()
                if conn is subscriber:
                    subscriber = None
            elif data[0] == PUBLISH:
                if subscriber is not None:
                    subscriber.send(data)
            elif data[0] == CONNECT:
                conn.send(CONNACK)
            elif data[0] == SUBSCRIBE:
                subscriber = conn
                conn.send(suback(data))


class _Relay(asyncio.Protocol):
    """One connection of the asyncio relay; `subscriber` is shared by all of them."""

    subscriber: asyncio.Transport | None = None

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if data[0] == PUBLISH:
            if _Relay.subscriber is not None:
                _Relay.subscriber.write(data)
        elif data[0] == CONNECT:
            transport.write(CONNACK)
        elif data[0] == SUBSCRIBE:
            _Relay.subscriber = transport
            transport.write(suback(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if _Relay.subscriber is self.transport:
            _Relay.subscriber = None


async def serve_asyncio(port: int) -> None:
    """The relay on asyncio's loop and transports, until killed."""
    server = await asyncio.get_running_loop().create_server(_Relay, "127.0.0.1", port)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.kind == "epoll":
        serve_epoll(args.port)
    else:
        asyncio.run(serve_asyncio(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
