"""One load worker: the clients of one process and what they do, driven by the controller.

A worker gets a `WorkerPlan` (its share of the subscribers, idle connections and publishers)
and a `Channel` to the controller (`benchmarks.runner`). Its life has three phases:

1. connect: subscribers first (and their SUBSCRIBEs), then idle connections, then publishers,
   paced at the worker's share of the connect rate; then it reports `ready`;
2. on `go` (an absolute `time.monotonic()` start and deadline, the clock is system-wide on Linux
   so every process agrees) publishers send until their count or the deadline, reporting
   `published` when they are all done; subscribers count all along;
3. on `stop` it closes every connection and reports its `result`.

It reports `progress` (cumulative counters) twice a second in every phase. Every wait is
bounded, so a broker that stops answering ends a run with errors rather than a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from benchmarks.client import PINGREQ, BenchClient, FrameTemplate, connect, subscribe
from benchmarks.stats import LatencySampler

__all__ = ["Channel", "ConnRole", "PubRole", "SubRole", "WorkerPlan", "run_worker"]

Message = tuple[str, dict[str, Any]]
MAX_ERRORS = 20
PROGRESS_INTERVAL = 0.5
MIN_SLEEP = 0.001


class Channel(Protocol):
    def send(self, kind: str, body: dict[str, Any]) -> None: ...

    async def recv(self) -> Message: ...


@dataclass(slots=True)
class SubRole:
    client_id: str
    target: int
    filters: list[str]
    qos: int = 0


@dataclass(slots=True)
class ConnRole:
    client_id: str
    target: int


@dataclass(slots=True)
class PubRole:
    client_id: str
    target: int
    topic: str
    qos: int = 0
    size: int = 64
    rate: float = 0.0  # messages/s for this publisher; 0 = as fast as acknowledged
    limit: int = 0  # messages for this publisher; 0 = until the deadline
    timestamps: bool = False
    inflight: int = 64  # unacknowledged QoS 1/2 messages allowed
    topics: int = 1  # > 1: publish in turn to `{topic}/0` .. `{topic}/{topics - 1}`


@dataclass
class WorkerPlan:
    index: int
    targets: list[tuple[str, int]]
    subs: list[SubRole] = field(default_factory=list)
    conns: list[ConnRole] = field(default_factory=list)
    pubs: list[PubRole] = field(default_factory=list)
    connect_rate: float = 0.0  # connections/s for this worker; 0 = unpaced
    connect_concurrency: int = 100
    connect_timeout: float = 15.0
    keepalive: int = 60
    latency: bool = False  # subscribers read timestamps from payloads
    latency_cap: int = 200_000
    coalesce: float = 0.001  # subscribers: seconds to pause reading after a chunk (see client)
    spin: bool = False  # busy-poll the loop while publishing (see `spin`)


class Worker:
    def __init__(self, plan: WorkerPlan, channel: Channel) -> None:
        self.plan = plan
        self.channel = channel
        self.subs: list[BenchClient] = []
        self.others: list[BenchClient] = []
        self.pubs: list[tuple[PubRole, BenchClient]] = []
        self.latency = LatencySampler(plan.latency_cap) if plan.latency else None
        self.connect_ns = LatencySampler(50_000)
        self.connected = 0
        self.failed = 0
        self.errors: list[str] = []
        self.connect_start = 0.0
        self.connect_end = 0.0
        self.pub_start = 0.0
        self.pub_end = 0.0

    # -- bookkeeping -----------------------------------------------------------------------------
    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def clients(self) -> list[BenchClient]:
        return self.subs + self.others + [c for _, c in self.pubs]

    def counters(self) -> dict[str, Any]:
        pubs = [c for _, c in self.pubs]
        return {
            "connected": self.connected,
            "failed": self.failed,
            "sent": sum(c.sent for c in pubs),
            "acked": sum(c.acked for c in pubs),
            "recv": sum(c.received for c in self.subs),
        }

    async def report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self.channel.send("progress", self.counters())

    async def keep_alive(self) -> None:
        """PINGREQ every client at half the keepalive (publishers flat out need none, but cheap)."""
        interval = max(self.plan.keepalive / 2, 1.0)
        while True:
            await asyncio.sleep(interval)
            for client in self.clients():
                client.write(PINGREQ)

    # -- phase 1: connect -------------------------------------------------------------------------
    async def open(
        self, client_id: str, target: int, subscriber: bool, qos: int = 0
    ) -> BenchClient | None:
        """Connect one client. Subscribers measure latency when asked, else batch their reads
        (QoS 0 only: a QoS 1/2 subscriber's acknowledgements must not wait)."""
        coalesce = subscriber and qos == 0 and self.latency is None
        host, port = self.plan.targets[target]
        started = time.monotonic_ns()
        try:
            client = await connect(
                host,
                port,
                client_id,
                keepalive=self.plan.keepalive,
                timeout=self.plan.connect_timeout,
                latency=self.latency if subscriber else None,
                coalesce=self.plan.coalesce if coalesce else 0.0,
            )
        except (OSError, TimeoutError) as exc:
            self.failed += 1
            self.error(f"{client_id}: {type(exc).__name__}: {exc}")
            return None
        self.connect_ns.add(time.monotonic_ns() - started)
        self.connected += 1
        return client

    async def connect_all(self) -> None:
        plan = self.plan
        jobs: list[tuple[str, SubRole | ConnRole | PubRole]] = [("sub", r) for r in plan.subs]
        jobs += [("conn", r) for r in plan.conns]
        jobs += [("pub", r) for r in plan.pubs]
        gate = asyncio.Semaphore(max(plan.connect_concurrency, 1))
        self.connect_start = time.monotonic()

        async def one(kind: str, role: SubRole | ConnRole | PubRole) -> None:
            try:
                qos = role.qos if isinstance(role, SubRole) else 0
                client = await self.open(role.client_id, role.target, kind == "sub", qos)
                if client is None:
                    return
                if isinstance(role, SubRole):
                    try:
                        await subscribe(client, role.filters, role.qos)
                    except (OSError, TimeoutError) as exc:
                        self.error(f"{role.client_id}: subscribe: {exc}")
                        client.close(graceful=False)
                        return
                    self.subs.append(client)
                elif isinstance(role, PubRole):
                    self.pubs.append((role, client))
                else:
                    self.others.append(client)
            finally:
                gate.release()

        tasks: list[asyncio.Task[None]] = []
        for n, (kind, role) in enumerate(jobs):
            if plan.connect_rate > 0:
                delay = self.connect_start + n / plan.connect_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await gate.acquire()
            tasks.append(asyncio.create_task(one(kind, role)))
        await asyncio.gather(*tasks)
        self.connect_end = time.monotonic()

    # -- phase 2: publish ----------------------------------------------------------------------
    async def publish(self, role: PubRole, client: BenchClient, t0: float, deadline: float) -> None:
        if role.topics > 1:
            names = [f"{role.topic}/{k}" for k in range(role.topics)]
        else:
            names = [role.topic]
        templates = [FrameTemplate(t, role.size, role.qos, role.timestamps) for t in names]
        template = templates[0]
        limit = role.limit if role.limit > 0 else math.inf
        fixed = template.fixed
        batch = max(1, min(1000, 64 * 1024 // (len(fixed) if fixed else role.size + 32)))
        cycle = _Cycle(templates, batch) if len(templates) > 1 else None
        if role.qos:
            batch = min(batch, max(role.inflight, 1))
        now = time.monotonic()
        if t0 > now:
            await asyncio.sleep(t0 - now)
        monotonic = time.monotonic
        while client.sent < limit and client.is_open:
            now = monotonic()
            if now >= deadline:
                break
            n = int(min(batch, limit - client.sent))
            if role.rate > 0:
                due = int(min((now - t0) * role.rate + 1, limit)) - client.sent
                n = min(n, due)
            if role.qos:
                n = min(n, role.inflight - (client.sent - client.acked))
            if n > 0:
                if cycle is not None:
                    client.write(cycle.take(n, client, role.qos, role.timestamps))
                elif fixed is not None:
                    client.write(fixed * n)
                elif role.qos:
                    stamp = time.monotonic_ns()
                    frames = [template.frame(client.next_packet_id(), stamp) for _ in range(n)]
                    client.write(b"".join(frames))
                else:
                    stamp = time.monotonic_ns()
                    client.write(template.frame(0, stamp) * n)
                client.sent += n
            if role.qos and client.sent - client.acked >= role.inflight:
                refill = client.sent - role.inflight + max(role.inflight // 2, 1)
                await client.wait_acks(refill, max(deadline - monotonic(), 0.001))
            elif role.rate > 0:
                wait = t0 + client.sent / role.rate - monotonic()
                if wait > 0:
                    # At least 1 ms: uvloop (libuv) rounds shorter timers down to 0 and would
                    # spin; the next turn sends whatever fell due meanwhile, in one write.
                    await asyncio.sleep(max(min(wait, deadline - monotonic()), MIN_SLEEP))
                else:
                    await client.drain(max(deadline - monotonic(), 0.001))
            else:
                await client.drain(max(deadline - monotonic(), 0.001))
        # QoS 1/2: wait (bounded) for the last acknowledgements before reporting.
        grace = monotonic() + 5.0
        while role.qos and client.acked < client.sent and client.is_open and monotonic() < grace:
            await client.wait_acks(client.sent, grace - monotonic())
        if client.error:
            self.error(f"{role.client_id}: {client.error}")

    async def publish_all(self, t0: float, deadline: float) -> None:
        self.pub_start = t0
        await asyncio.gather(*(self.publish(r, c, t0, deadline) for r, c in self.pubs))
        self.pub_end = time.monotonic()
        self.channel.send("published", self.counters())

    # -- phase 3: result -----------------------------------------------------------------------
    def result(self, cpu_go: float) -> dict[str, Any]:
        for client in self.subs + self.others:
            if client.error:
                self.error(client.error)
        firsts = [c.first_rx_ns for c in self.subs if c.first_rx_ns]
        lasts = [c.last_rx_ns for c in self.subs if c.last_rx_ns]
        out = self.counters()
        out.update(
            worker=self.plan.index,
            rx_bytes=sum(c.rx_bytes for c in self.subs),
            first_rx_ns=min(firsts) if firsts else 0,
            last_rx_ns=max(lasts) if lasts else 0,
            connect_start=self.connect_start,
            connect_end=self.connect_end,
            pub_start=self.pub_start,
            pub_end=self.pub_end,
            connect_ns=self.connect_ns.values.tolist(),
            latency_ns=self.latency.values.tolist() if self.latency else [],
            lost_connections=sum(1 for c in self.clients() if not c.is_open),
            cpu_s=time.process_time() - cpu_go,
            errors=self.errors,
        )
        return out


class _Cycle:
    """The frames of a publisher with several topics, each topic in turn (`PubRole.topics`).

    QoS 0 without timestamps: all frames are joined once, twice over, so that any run of up to
    one batch of consecutive frames is one slice of those bytes (no per-message work, as for a
    single topic); otherwise each frame is built as for a single topic.
    """

    __slots__ = ("_blob", "_next", "_offsets", "_templates")

    def __init__(self, templates: list[FrameTemplate], batch: int) -> None:
        self._templates = templates
        self._next = 0
        self._blob = b""
        self._offsets: list[int] = []
        fixed = [t.fixed for t in templates]
        if all(f is not None for f in fixed):
            frames = [f for f in fixed if f is not None]
            rounds = 1 + -(-batch // len(frames))  # enough for a batch starting anywhere
            joined = frames * (rounds + 1)
            offsets = [0]
            for frame in joined:
                offsets.append(offsets[-1] + len(frame))
            self._blob = b"".join(joined)
            self._offsets = offsets

    def take(self, n: int, client: BenchClient, qos: int, timestamps: bool) -> bytes:
        """The next `n` frames (n at most the batch the cycle was made for)."""
        start = self._next
        count = len(self._templates)
        self._next = (start + n) % count
        if self._blob:
            offsets = self._offsets
            return self._blob[offsets[start] : offsets[start + n]]
        stamp = time.monotonic_ns() if timestamps else 0
        templates = self._templates
        return b"".join(
            templates[(start + k) % count].frame(client.next_packet_id() if qos else 0, stamp)
            for k in range(n)
        )


async def spin() -> None:
    """Keep the event loop polling without sleeping (`--spin`, on for latency runs).

    An idle core takes a while to wake up on a virtual machine (about 2 ms at the p99 on the
    development machine), which would otherwise be measured as broker latency. Costs the
    generator a whole core, so the CPU figures of a spinning run read 100%.
    """
    while True:
        await asyncio.sleep(0)


async def run_worker(plan: WorkerPlan, channel: Channel) -> None:
    """Run one worker to completion (see the module docstring for the protocol)."""
    worker = Worker(plan, channel)
    progress = asyncio.create_task(worker.report_progress())
    pinger = asyncio.create_task(worker.keep_alive())
    publishing: asyncio.Task[None] | None = None
    spinner: asyncio.Task[None] | None = None
    cpu_go = time.process_time()
    try:
        await worker.connect_all()
        ready = {"cpu_connect_s": time.process_time() - cpu_go, "errors": worker.errors[:3]}
        channel.send("ready", worker.counters() | ready)
        while True:
            kind, body = await channel.recv()
            if kind == "go":
                cpu_go = time.process_time()
                publishing = asyncio.create_task(
                    worker.publish_all(float(body["t0"]), float(body["deadline"]))
                )
                if plan.spin:
                    spinner = asyncio.create_task(spin())
            elif kind in ("stop", "eof"):  # eof: the controller gave up (no target, say)
                if spinner is not None:
                    spinner.cancel()
                break
        if publishing is not None and not publishing.done():
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
        result = worker.result(cpu_go)
        for client in worker.clients():
            client.close()
        channel.send("result", result)
    finally:
        progress.cancel()
        pinger.cancel()
        if spinner is not None:
            spinner.cancel()
        for client in worker.clients():
            client.close(graceful=False)
