"""TCP links between nodes: framed messages, the cookie handshake, bounded send queues.

With `TransportConfig.tls` (`cluster.tls`) every link is mutual TLS first: the accepting side
runs the TLS handshake on the accepted socket before reading anything (`StreamWriter.start_tls`)
and a peer without a certificate of the cluster CA, or without TLS, is refused, counted
(`refused_tls`) and logged in one line (per host and reason every minute); the dialling side
checks the acceptor's certificate the same way. The cookie handshake then runs inside it.

Theory of operation
-------------------
Each node listens on its cluster port and keeps **one outgoing link per peer address**. A link
carries frames one way only, from us to that peer: whatever the peer has to tell us (an ACK, an
RPC response) comes back over *its* outgoing link to *our* advertised address. So every frame a
node receives arrives on an accepted connection whose HELLO named the sender, and the runtime
hands `Membership.handle` the sender's advertised address, as SWIM wants.

Handshake. The dialling side sends HELLO (cookie, name, epoch, advertised address, version); the
accepting side checks the cookie in constant time (`wire.check_hello`) and answers HELLO_ACK, or
HELLO_ACK with `error` and closes: a peer without the cookie is refused and logged, and nothing
it sends is ever decoded past its HELLO. After the handshake the accepting side only reads; the
dialling side only writes (it reads to notice the connection closing).

Send queues. `send(address, type, body, weight)` encodes the frame at once and appends it to that
link's queue, which holds at most `max_queue` frames and `max_queue_bytes` bytes; a full queue
drops the frame. A link that failed to connect is in *backoff* (from `backoff_min`, doubling up
to `backoff_max`) and drops what it is given until the backoff ends; the next send after that
reconnects (links reconnect lazily: a peer that nobody talks to costs nothing). Frames still
queued when a connection fails are dropped too. Every drop is counted in `stats` (by message
type, in messages: a frame counts `weight`, the number of messages a FORWARD_BATCH carries) and
reported through `on_drop`, so the runtime can count a lost forward as a dropped message:
nothing is lost silently, and nothing is queued without bound for a dead peer.

Flow control. Before a queue is full, at `hold_queue` frames or `hold_queue_bytes`, the link is
*congested*: `hold_until_drained` then takes a callback that runs once the link has drained to a
quarter of that (or failed), and the runtime stops reading the client whose PUBLISH it was
meanwhile. A peer slower than its publishers so slows them down, as TCP would, instead of
having its FORWARDs dropped.

Unix sockets. The workers of one machine (`start --workers N`) link the same way over Unix
sockets: an address whose host is `unix:PATH` (`unix_address`) is listened on and dialled as
that socket; everything above the socket (handshake, queues, flow control) is the same.

`close()` stops listening, lets the queues drain for up to `flush_timeout` (so a LEAVE goes
out), then closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from cluster.tls import LinkTLS, tls_failure_reason
from cluster.wire import (
    DEFAULT_MAX_FRAME,
    INTRODUCED_IN,
    PROTOCOL_VERSION,
    Address,
    Body,
    FrameDecoder,
    HandshakeError,
    Hello,
    MessageType,
    WireError,
    check_hello,
    encode_frame,
    encode_frame_parts,
    hello_ack_body,
    hello_body,
    negotiate,
    parse_hello_ack,
)

__all__ = ["DropHandler", "FrameHandler", "Transport", "TransportConfig", "unix_address"]

log = logging.getLogger(__name__)

#: Called for every frame received after a handshake: (sender's HELLO, type, body).
FrameHandler = Callable[[Hello, MessageType, Body], None]
#: Called when frames to `address` are dropped: (address, type, number of frames).
DropHandler = Callable[[Address, MessageType, int], None]

#: Bytes read from a link at a time, and the StreamReader's buffer limit of an accepted link
#: (it pauses reading above twice that). FORWARD_BATCH frames run to `max_batch_bytes`
#: (512 KiB): with 64 KiB (asyncio's default) a busy link paused and resumed its socket
#: and woke its reader for every few tens of KiB, a fixed cost per read that the
#: receiving node of a fan-in paid on top of its deliveries.
_READ_SIZE = 256 * 1024
#: A host of this form is a Unix socket path (the workers of one machine): ("unix:/path", 0).
UNIX_PREFIX = "unix:"


def unix_address(path: str) -> Address:
    """The cluster address of a Unix socket: the same (host, port) shape as a TCP one, so
    membership, gossip and the wire carry it unchanged."""
    return (UNIX_PREFIX + path, 0)


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Dial a peer over TCP, or over a Unix socket for a `unix:` host."""
    if host.startswith(UNIX_PREFIX):
        return await asyncio.open_unix_connection(host[len(UNIX_PREFIX) :])
    return await asyncio.open_connection(host, port)


def _no_link_up(address: Address, hello: Hello) -> None:
    """The default `Transport.on_link_up`: nothing is held."""


_REFUSAL_LOG_INTERVAL = 60.0
#: The first byte of a TLS ClientHello; a frame starting with it would claim over 350 MB.
_TLS_HANDSHAKE = 0x16


@dataclass(frozen=True, slots=True)
class TransportConfig:
    max_queue: int = 100_000  # frames waiting per peer (the byte cap bounds memory)
    max_queue_bytes: int = 32 * 1024 * 1024  # bytes waiting per peer
    #: Flow control (`hold_until_drained`): a link is congested from this many frames or bytes
    #: waiting, and releases who it holds once fewer than a quarter of them wait.
    hold_queue: int = 2_000
    hold_queue_bytes: int = 2 * 1024 * 1024
    connect_timeout: float = 2.0
    handshake_timeout: float = 2.0
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    flush_timeout: float = 1.0
    max_frame: int = DEFAULT_MAX_FRAME
    #: Mutual TLS on every link (`cluster.tls`); None: plain TCP.
    tls: LinkTLS | None = None


class _Link:
    """The outgoing connection to one peer address, with its bounded queue."""

    def __init__(self, transport: Transport, address: Address) -> None:
        self.transport = transport
        self.address = address
        #: (type, frame, messages it carries: 1, or a FORWARD_BATCH's count)
        #: (type, frame header, frame body, weight): `wire.encode_frame_parts`.
        self.queue: deque[tuple[MessageType, bytes, bytes, int]] = deque()
        self.queued_bytes = 0
        self.version = PROTOCOL_VERSION
        #: The version of the last completed handshake (kept while reconnecting), None before.
        self.negotiated: int | None = None
        self.peer: Hello | None = None  # who answered our HELLO (while connected)
        self.up = False
        self.retry_at = 0.0
        self.backoff = transport.config.backoff_min
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.closed = False
        self.tls_used = False  # the last connection was encrypted
        self.tls_warned = False  # one warning per link for failed TLS handshakes, then debug
        #: Called once the queue has drained (or the link failed): `Transport.hold_until_drained`.
        self.waiters: list[Callable[[], None]] = []

    def congested(self) -> bool:
        cfg = self.transport.config
        return len(self.queue) >= cfg.hold_queue or self.queued_bytes >= cfg.hold_queue_bytes

    def _release_if_drained(self) -> None:
        cfg = self.transport.config
        # A failed or closed link gets here from `_drop_queue` with an empty queue.
        if (
            self.waiters
            and len(self.queue) < max(1, cfg.hold_queue // 4)
            and self.queued_bytes < max(1, cfg.hold_queue_bytes // 4)
        ):
            waiters, self.waiters = self.waiters, []
            for release in waiters:
                release()

    def accepting(self, size: int, now: float) -> bool:
        """`enqueue` would take a frame of `size` bytes now."""
        cfg = self.transport.config
        return (
            not self.closed
            and (self.task is not None or now >= self.retry_at)
            and len(self.queue) < cfg.max_queue
            and self.queued_bytes + size <= cfg.max_queue_bytes
        )

    def enqueue(
        self, msg_type: MessageType, frame: tuple[bytes, bytes], now: float, weight: int = 1
    ) -> bool:
        cfg = self.transport.config
        stats = self.transport.stats
        if self.closed:
            return self._drop(msg_type, "closed", weight)
        if self.task is None:
            if now < self.retry_at:
                return self._drop(msg_type, "unreachable", weight)
            self.task = asyncio.get_running_loop().create_task(self._run())
        head, packed = frame
        size = len(head) + len(packed)
        if len(self.queue) >= cfg.max_queue or self.queued_bytes + size > cfg.max_queue_bytes:
            return self._drop(msg_type, "queue_full", weight)
        self.queue.append((msg_type, head, packed, weight))
        self.queued_bytes += size
        self.idle.clear()
        self.wake.set()
        stats["queued"] += 1
        return True

    def _drop(self, msg_type: MessageType, why: str, count: int = 1) -> bool:
        stats = self.transport.stats
        stats["dropped"] += count
        stats["dropped/" + why] += count
        stats["dropped/" + msg_type.name] += count
        self.transport.on_drop(self.address, msg_type, count)
        return False

    def _drop_queue(self, why: str) -> None:
        dropped: Counter[MessageType] = Counter()
        for msg_type, _, _, weight in self.queue:
            dropped[msg_type] += weight
        self.queue.clear()
        self.queued_bytes = 0
        self.idle.set()
        for msg_type, count in dropped.items():
            self._drop(msg_type, why, count)
        self._release_if_drained()

    async def _run(self) -> None:
        transport = self.transport
        cfg = transport.config
        writer: asyncio.StreamWriter | None = None
        watch: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        try:
            host, port = self.address
            tls = cfg.tls
            async with asyncio.timeout(cfg.connect_timeout + (cfg.handshake_timeout if tls else 0)):
                if tls is None:  # (TCP, or a Unix socket between the workers of one node)
                    reader, conn = await _connect(host, port)
                else:
                    reader, conn = await asyncio.open_connection(
                        host, port, ssl=tls.client, server_hostname=host,
                        ssl_handshake_timeout=cfg.handshake_timeout,
                    )  # fmt: skip
            writer = conn
            async with asyncio.timeout(cfg.handshake_timeout):
                peer = await self._handshake(reader, conn)
            self.peer = peer
            self.tls_used = conn.get_extra_info("ssl_object") is not None
            self.up = True
            self.backoff = cfg.backoff_min
            transport.stats["connects"] += 1
            log.debug("cluster link to %s:%d (%s) is up", host, port, peer.name)
            try:  # what the peer has not acknowledged goes first (`cluster.outbox`)
                transport.on_link_up(self.address, peer)
            except Exception:
                log.exception("cluster: link-up handler for %s:%d failed", host, port)
            watch = loop.create_task(self._watch(reader))
            while not self.closed:
                if not self.queue:
                    self.idle.set()
                    self.wake.clear()
                    waiter = loop.create_task(self.wake.wait())
                    await asyncio.wait({waiter, watch}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                if watch.done():
                    raise ConnectionError("closed by the peer")
                if not self.queue:
                    continue
                parts = [part for _, head, body, _ in self.queue for part in (head, body)]
                sent = len(self.queue)
                self.queue.clear()
                self.queued_bytes = 0
                conn.writelines(parts)  # vectored on uvloop: no copy of the bodies
                await conn.drain()
                transport.stats["sent"] += sent
                self._release_if_drained()
        except asyncio.CancelledError:
            raise
        except HandshakeError as exc:
            transport.stats["link_failures"] += 1
            transport.stats["handshake_refused"] += 1
            log.warning("cluster: %s:%d refused our handshake: %s", *self.address, exc)
        except ssl.SSLError as exc:
            transport.stats["link_failures"] += 1
            transport.stats["tls_failures"] += 1
            if not self.closed:
                level = logging.DEBUG if self.tls_warned else logging.WARNING
                self.tls_warned = True
                log.log(level, "cluster: TLS handshake with %s:%d failed: %s",
                        *self.address, tls_failure_reason(exc))  # fmt: skip
        except (OSError, EOFError, TimeoutError, WireError, ConnectionError) as exc:
            if not self.closed:
                level = logging.INFO if self.up else logging.DEBUG
                why = str(exc) or type(exc).__name__
                log.log(level, "cluster link to %s:%d failed: %s", *self.address, why)
                transport.stats["link_failures"] += 1
        except Exception:  # a bug: the link backs off and is retried, the node keeps running
            transport.stats["link_failures"] += 1
            log.exception("cluster link to %s:%d failed", *self.address)
        finally:
            was = self.peer  # who answered on the connection that ended (None: it never did)
            self.up = False
            self.peer = None
            if watch is not None:
                watch.cancel()
            if writer is not None:
                writer.close()
            if not self.closed:
                self.retry_at = loop.time() + self.backoff
                self.backoff = min(self.backoff * 2, cfg.backoff_max)
            self._drop_queue("link_failed" if not self.closed else "closed")
            self.task = None
            if not self.closed:
                try:
                    transport.on_link_down(self.address, was)
                except Exception:
                    log.exception("cluster: link-down handler for %s:%d failed", *self.address)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Hello:
        t = self.transport
        writer.write(
            encode_frame(MessageType.HELLO, hello_body(t.cookie, t.name, t.epoch, t.address))
        )
        await writer.drain()
        decoder = FrameDecoder(t.config.max_frame)
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise ConnectionError("closed during the handshake")
            frames = decoder.feed(data)
            if not frames:
                continue
            _, msg_type, body = frames[0]
            if msg_type is not MessageType.HELLO_ACK:
                raise HandshakeError(f"expected HELLO_ACK, got {msg_type.name}")
            hello = parse_hello_ack(body)
            self.version = self.negotiated = negotiate(hello.version)
            self._drop_newer_than(self.version)
            return hello

    def _drop_newer_than(self, version: int) -> None:
        """Frames queued before the handshake in types the peer does not have (it is older
        than we assumed): dropped and counted, not sent to be skipped."""
        if all(INTRODUCED_IN[t] <= version for t, _, _, _ in self.queue):
            return
        keep: deque[tuple[MessageType, bytes, bytes, int]] = deque()
        for item in self.queue:
            msg_type, head, body, weight = item
            if INTRODUCED_IN[msg_type] <= version:
                keep.append(item)
            else:
                self.queued_bytes -= len(head) + len(body)
                self._drop(msg_type, "peer_version", weight)
        self.queue = keep

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """Returns when the peer closes the connection (it never sends after HELLO_ACK)."""
        with contextlib.suppress(OSError):
            while await reader.read(_READ_SIZE):
                pass

    async def close(self) -> None:
        self.closed = True
        self.wake.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class Transport:
    """Listener plus outgoing links of one node. See the module docstring."""

    def __init__(
        self,
        name: str,
        epoch: int,
        cookie: str,
        on_frame: FrameHandler,
        on_drop: DropHandler | None = None,
        config: TransportConfig | None = None,
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.cookie = cookie
        self.on_frame = on_frame
        self.on_drop: DropHandler = on_drop or (lambda address, msg_type, count: None)
        #: Called when a handshake on our link to `address` completed (before the link writes
        #: its queue): the forwarder resends what the peer has not acknowledged.
        self.on_link_up: Callable[[Address, Hello], None] = _no_link_up
        #: Called when our link to `address` ended other than by `forget`/`close`: with the
        #: peer that had answered on it, or None when it never came up (a refused or failed
        #: dial): pending RPCs to a peer that is gone fail at once (`cluster.link_loss`).
        self.on_link_down: Callable[[Address, Hello | None], None] = lambda address, peer: None
        #: Called once per chunk read from a peer, before its frames: proof the peer runs.
        self.on_heard: Callable[[Hello], None] = lambda hello: None
        self.config = config or TransportConfig()
        #: Our advertised address (what peers dial); set by the runtime once bound.
        self.address: Address = ("127.0.0.1", 0)
        self.stats: Counter[str] = Counter()
        self._links: dict[Address, _Link] = {}
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.StreamWriter] = set()
        #: The accepted connections by the sender's advertised address (`forget` closes them).
        self._inbound_from: dict[Address, set[asyncio.StreamWriter]] = {}
        self._refusal_logged: dict[tuple[str, str], float] = {}
        self._closing = False

    # -- listening -------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> int:
        """Start accepting peers on host:port; returns the bound port (port 0 works). A
        `unix:PATH` host listens on that Unix socket instead (returns 0)."""
        if host.startswith(UNIX_PREFIX):
            self._server = await asyncio.start_unix_server(
                self._serve, host[len(UNIX_PREFIX) :], limit=_READ_SIZE
            )
            return 0
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, limit=_READ_SIZE
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        self._inbound.add(writer)
        peername = writer.get_extra_info("peername")
        decoder = FrameDecoder(self.config.max_frame)
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                if self.config.tls is not None and not await self._start_tls(writer, peername):
                    return
                accepted = await self._accept_hello(reader, writer, decoder, peername)
            if accepted is None:
                return
            hello, frames = accepted
            self.stats["accepted"] += 1
            self._inbound_from.setdefault(hello.address, set()).add(writer)
            self._peer_dialled(hello.address)
            while True:
                if frames:
                    self.on_heard(hello)
                for _, msg_type, body in frames:
                    self.stats["received"] += 1
                    try:
                        self.on_frame(hello, msg_type, body)
                    except Exception:  # a bug in one handler must not drop the link
                        log.exception(
                            "cluster: handling %s from %s failed", msg_type.name, hello.name
                        )
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                frames = decoder.feed(data)
        except (OSError, TimeoutError, WireError) as exc:
            self.stats["inbound_errors"] += 1
            why = str(exc) or type(exc).__name__
            log.info("cluster connection from %s closed: %s", peername, why)
        finally:
            self._inbound.discard(writer)
            for address in [a for a, ws in self._inbound_from.items() if writer in ws]:
                self._inbound_from[address].discard(writer)
                if not self._inbound_from[address]:
                    del self._inbound_from[address]
            writer.close()

    def _peer_dialled(self, address: Address) -> None:
        """A peer completed a handshake with us, so it runs: our link to it stops backing
        off (a restarted peer would otherwise wait up to `backoff_max` for our answers, its
        join response among them, and for the forwards we hold for it)."""
        link = self._links.get(address)
        if link is not None and link.task is None and not link.closed:
            link.retry_at = 0.0
            link.backoff = self.config.backoff_min
            if self.on_link_up is not _no_link_up:
                self.connect(address)

    def _refused(self, peername: object, why: str) -> None:
        """One warning per peer host and reason every `_REFUSAL_LOG_INTERVAL` seconds (a
        refused node retries its join every second); the rest at debug, all counted."""
        host = peername[0] if isinstance(peername, tuple) and peername else peername
        now = asyncio.get_running_loop().time()
        key = (str(host), why.split(":")[0])
        if now - self._refusal_logged.get(key, -_REFUSAL_LOG_INTERVAL) >= _REFUSAL_LOG_INTERVAL:
            self._refusal_logged[key] = now
            while len(self._refusal_logged) > 256:
                del self._refusal_logged[next(iter(self._refusal_logged))]
            log.warning("cluster: refused a connection from %s: %s", peername, why)
        else:
            log.debug("cluster: refused a connection from %s: %s", peername, why)

    async def _start_tls(self, writer: asyncio.StreamWriter, peername: object) -> bool:
        """Mutual TLS on an accepted link; False (refused, counted, one log line) if the peer
        has no certificate of the cluster CA or does not speak TLS."""
        assert self.config.tls is not None
        try:
            await writer.start_tls(self.config.tls.server)
        except (ssl.SSLError, ConnectionError) as exc:
            self.stats["refused"] += 1
            self.stats["refused_tls"] += 1
            self._refused(peername, f"TLS handshake failed: {tls_failure_reason(exc)}")
            return False
        return True

    async def _accept_hello(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder,
        peername: object,
    ) -> tuple[Hello, list[tuple[int, MessageType, Body]]] | None:
        """The peer's HELLO (cookie checked) and any frames that came right behind it."""
        frames: list[tuple[int, MessageType, Body]] = []
        while not frames:
            data = await reader.read(_READ_SIZE)
            if not data:
                return None
            if data[0] == _TLS_HANDSHAKE and self.config.tls is None and not decoder.buffered:
                self.stats["refused"] += 1
                self.stats["refused_tls"] += 1
                self._refused(
                    peername,
                    "it speaks TLS and this node's cluster link is plain ([cluster] tls_enable)",
                )
                return None
            frames = decoder.feed(data)
        _, msg_type, body = frames[0]
        try:
            if msg_type is not MessageType.HELLO:
                raise HandshakeError(f"expected HELLO, got {msg_type.name}")
            hello = check_hello(body, self.cookie)
        except HandshakeError as exc:
            self.stats["refused"] += 1
            self._refused(peername, str(exc))
            reply = hello_ack_body(self.name, self.epoch, self.address, 1, error="refused")
            writer.write(encode_frame(MessageType.HELLO_ACK, reply))
            with contextlib.suppress(OSError):
                await writer.drain()
            return None
        ack = hello_ack_body(self.name, self.epoch, self.address, hello.version)
        writer.write(encode_frame(MessageType.HELLO_ACK, ack))
        await writer.drain()
        return hello, frames[1:]

    # -- sending ---------------------------------------------------------------------------

    def send(self, address: Address, msg_type: MessageType, body: Body, weight: int = 1) -> bool:
        """Queue one frame for `address`; False (counted, reported) if it was dropped.

        `weight` is the number of messages the frame carries (a FORWARD_BATCH's): drops are
        counted and reported in messages. Raises WireError if `body` cannot be encoded (a bug
        or an oversized message).
        """
        if self._closing:
            return False
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(self, address)
        frame = encode_frame_parts(msg_type, body, link.version, self.config.max_frame)
        return link.enqueue(msg_type, frame, asyncio.get_running_loop().time(), weight)

    def peer_version(self, address: Address) -> int | None:
        """The protocol version the last handshake with `address` negotiated; None if no
        handshake has completed yet (the sender then uses version-1 types only)."""
        link = self._links.get(address)
        return link.negotiated if link is not None else None

    def accepting(self, address: Address, size: int = 0) -> bool:
        """A frame of `size` bytes for `address` would be queued now (not dropped at once)."""
        if self._closing:
            return False
        link = self._links.get(address)
        return link is None or link.accepting(size, asyncio.get_running_loop().time())

    def congested(self, address: Address) -> bool:
        """The link to `address` is up and has `hold_queue` frames or bytes waiting."""
        link = self._links.get(address)
        return link is not None and link.up and link.congested()

    def hold_until_drained(self, address: Address, release: Callable[[], None]) -> bool:
        """If the link to `address` is congested, call `release` once it has drained (or
        failed) and return True; the caller holds back whoever is feeding it meanwhile."""
        link = self._links.get(address)
        if link is None or not link.up or not link.congested():
            return False
        link.waiters.append(release)
        return True

    def connect(self, address: Address) -> None:
        """Dial `address` now unless its link is connected, connecting or backing off (links
        otherwise connect on the next frame sent): held messages wait for `on_link_up`."""
        if self._closing:
            return
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(self, address)
        loop = asyncio.get_running_loop()
        if not link.closed and link.task is None and loop.time() >= link.retry_at:
            link.task = loop.create_task(link._run())

    def redial(self, address: Address) -> None:
        """Dial `address` now even if its link is backing off (is the peer still there?)."""
        link = self._links.get(address)
        if link is not None and link.task is None and not link.closed:
            link.retry_at = 0.0
        self.connect(address)

    def is_up(self, address: Address) -> bool:
        link = self._links.get(address)
        return link is not None and link.up

    def queued(self) -> int:
        return sum(len(link.queue) for link in self._links.values())

    def forget(self, address: Address) -> None:
        """Close the link to `address` (a member that left, was reaped or declared dead),
        dropping its queue, and the connections it made to us: after a partition its kernel
        would otherwise deliver what it sent into the cut by TCP retransmits once the network
        heals, seconds late (a takeover claim; a batch sent `live`, `cluster.forwarder`),
        where the new connections carry what it sends again."""
        for writer in self._inbound_from.pop(address, ()):
            writer.close()
        link = self._links.pop(address, None)
        if link is not None:
            link.closed = True
            link.wake.set()
            if link.task is not None:
                link.task.cancel()  # its `finally` drops (and counts) what was queued
            else:
                link._drop_queue("closed")

    async def flush(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every connected link has written its queue."""
        waits = [link.idle.wait() for link in self._links.values() if link.task is not None]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*waits)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.flush(self.config.flush_timeout)
        self._closing = True
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()
        for writer in list(self._inbound):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None
