"""Userspace TCP relays: the client gateway into a namespace, and the shaping cluster-link proxy.

Kernel netem is not available here, so latency and loss are made in userspace. A TCP relay
cannot drop a byte without corrupting the stream; what a lossy network does to a TCP stream
is delay: a lost segment stalls everything behind it for a retransmission timeout. So `Shape`
holds each chunk for `delay` (+ up to `jitter`), and with probability `loss` for an extra `rto`,
in order (a chunk never overtakes the one before it). `Relay.cut()` resets every connection
(what a middlebox or a NAT timeout does).

`Relay` accepts on a listening socket (in the root namespace on 127.0.0.1 for the gateway,
or inside a node's namespace for the cluster proxy) and dials its upstream from inside a
namespace through an `NsThread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from dataclasses import dataclass

from faults_net import NsThread

CHUNK = 65536


@dataclass
class Shape:
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rto: float = 0.2

    def hold(self, rng: random.Random) -> float:
        extra = self.rto if self.loss and rng.random() < self.loss else 0.0
        return self.delay + (rng.random() * self.jitter if self.jitter else 0.0) + extra


class Relay:
    """Accepts on `listen`; relays each connection to `upstream`, dialled in `via`'s namespace."""

    def __init__(
        self, listen: socket.socket, via: NsThread, upstream: tuple[str, int], seed: int = 0
    ) -> None:
        self.listen = listen
        self.via = via
        self.upstream = upstream
        self.shape = Shape()
        self.rng = random.Random(seed)
        self.port = listen.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.bytes = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, sock=self.listen)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            sock = await self.via.connect(*self.upstream)
        except OSError:
            self._writers.discard(writer)
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(sock=sock)
        self._writers.add(up_writer)
        self.connections += 1
        both = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for task in both:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # When either side ends, end both (a half-open relay would hide a dead peer).
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        for task in both:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)
        sender = asyncio.create_task(self._release(queue, dst))
        last = 0.0
        try:
            while data := await src.read(CHUNK):
                self.bytes += len(data)
                hold = self.shape.hold(self.rng)
                if hold <= 0 and queue.empty():
                    dst.write(data)
                    await dst.drain()
                    continue
                last = max(last, time.monotonic() + hold)
                await queue.put((last, data))
            await queue.join()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()

    @staticmethod
    async def _release(
        queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            dst.write(data)
            with contextlib.suppress(OSError):
                await dst.drain()
            queue.task_done()

    def cut(self) -> int:
        """Reset every relayed connection now; returns how many sockets were closed."""
        writers = list(self._writers)
        for w in writers:
            transport = w.transport
            if transport is not None:
                transport.abort()
        self._writers.clear()
        return len(writers)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)


async def gateway(via: NsThread, host: str, port: int) -> Relay:
    """A relay on the root namespace's 127.0.0.1 to `host:port` inside `via`'s namespace."""
    listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind(("127.0.0.1", 0))
    listen.listen(128)
    listen.setblocking(False)
    relay = Relay(listen, via, (host, port))
    await relay.start()
    return relay


async def link_proxy(via: NsThread, host: str, port: int, upstream_port: int, seed: int) -> Relay:
    """A shaping relay listening on `host:port` inside the namespace, to `host:upstream_port`."""
    listen = await asyncio.get_running_loop().run_in_executor(None, via.listener, host, port)
    relay = Relay(listen, via, (host, upstream_port), seed)
    await relay.start()
    return relay
