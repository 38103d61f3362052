"""The controller: splits a `LoadPlan` over worker processes, paces the phases, adds it all up.

`run_plan` starts `procs` worker processes (multiprocessing, `spawn`; `procs=0` runs a single
worker as a task of the caller's event loop, which the smoke test uses), waits until every
worker is `ready`, sends `go`, waits for the publishers and then for the deliveries to drain
(until the expected count arrives, nothing arrives for `idle` seconds, or `drain` seconds pass),
sends `stop` and merges the workers' results into one `Outcome`. Workers talk to it over a
duplex pipe read with `loop.add_reader`, so the controller is an ordinary coroutine.

Live progress (totals and rates) goes to stderr once a second, only when stderr is a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.load import Channel, ConnRole, Message, PubRole, SubRole, WorkerPlan, run_worker
from benchmarks.procfs import cpu_seconds, rss_kb

__all__ = ["LoadPlan", "Outcome", "run_plan"]


@dataclass
class LoadPlan:
    """Everything one measured run does; every field is bounded in time or count."""

    targets: list[tuple[str, int]]
    subs: list[SubRole] = field(default_factory=list)
    conns: list[ConnRole] = field(default_factory=list)
    pubs: list[PubRole] = field(default_factory=list)
    duration: float = 10.0  # publishing phase (or holding phase when there are no publishers)
    connect_rate: float = 0.0  # connections/s over all workers; 0 = as fast as accepted
    connect_concurrency: int = 200
    keepalive: int = 60
    latency: bool = False
    fanout: float | None = None  # deliveries expected per message sent, when known
    idle: float = 1.0  # drain ends after this long without a delivery
    drain: float = 10.0  # and after this long at most
    setup_timeout: float = 120.0  # connect phase bound
    settle: float = 0.0  # seconds to wait after `ready` before reading the broker's memory
    recv_limit: int = 0  # without publishers: stop holding once this many were received
    coalesce: float = 0.001  # subscribers pause reading this long per chunk (not with latency)
    spin: bool = False  # workers busy-poll while publishing (load.spin)


@dataclass
class Outcome:
    """Merged counters and timings of one run (seconds are relative to `go`)."""

    workers: int
    connected: int = 0
    failed: int = 0
    sent: int = 0
    acked: int = 0
    recv: int = 0
    rx_bytes: int = 0
    connect_s: float = 0.0
    publish_s: float = 0.0
    recv_s: float = 0.0
    wall_s: float = 0.0
    connect_ns: list[int] = field(default_factory=list)
    latency_ns: list[int] = field(default_factory=list)
    lost_connections: int = 0
    worker_cpu_s: list[float] = field(default_factory=list)  # each worker, `go` to `stop`
    worker_connect_cpu_s: list[float] = field(default_factory=list)  # each, connect phase
    broker_cpu_s: float | None = None  # `go` to `stop`
    broker_connect_cpu_s: float | None = None
    broker_rss_kb: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


# -- channels ------------------------------------------------------------------------------------
class QueueChannel:
    """In-process channel: a pair of asyncio queues (procs=0)."""

    def __init__(self, inbox: asyncio.Queue[Message], outbox: asyncio.Queue[Message]) -> None:
        self._inbox = inbox
        self._outbox = outbox

    def send(self, kind: str, body: dict[str, Any]) -> None:
        self._outbox.put_nowait((kind, body))

    async def recv(self) -> Message:
        return await self._inbox.get()


class PipeChannel:
    """One end of a multiprocessing pipe, read by the running event loop's selector."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self._conn.poll():
                self._queue.put_nowait(self._conn.recv())
        except (EOFError, OSError):
            self._loop.remove_reader(self._conn.fileno())
            self._queue.put_nowait(("eof", {}))

    def send(self, kind: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self._conn.send((kind, body))

    async def recv(self) -> Message:
        return await self._queue.get()

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._conn.fileno())
        self._conn.close()


def _worker_main(plan: WorkerPlan, conn: Connection, use_uvloop: bool) -> None:
    """Entry point of a worker process."""
    _raise_fd_limit()
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> None:
        channel = PipeChannel(conn)
        try:
            await run_worker(plan, channel)
        finally:
            channel.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _raise_fd_limit() -> None:
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- splitting -----------------------------------------------------------------------------------
def split_plan(plan: LoadPlan, workers: int) -> list[WorkerPlan]:
    """Deal clients round-robin over `workers` plans.

    With two workers or more and both publishers and subscribers, the two roles get separate
    workers (subscribers the first half, rounded up): a subscriber's acknowledgements and reads
    then never wait behind a publisher's loop in the same process.
    """
    workers = max(workers, 1)
    out = [
        WorkerPlan(
            index=k,
            targets=list(plan.targets),
            connect_rate=plan.connect_rate / workers if plan.connect_rate > 0 else 0.0,
            connect_concurrency=max(plan.connect_concurrency // workers, 1),
            keepalive=plan.keepalive,
            latency=plan.latency,
            coalesce=plan.coalesce,
            spin=plan.spin,
        )
        for k in range(workers)
    ]
    sub_workers = list(range(workers))
    pub_workers = list(range(workers))
    if workers >= 2 and plan.subs and plan.pubs:
        half = (workers + 1) // 2
        sub_workers, pub_workers = sub_workers[:half], sub_workers[half:]
    for n, sub in enumerate(plan.subs):
        out[sub_workers[n % len(sub_workers)]].subs.append(sub)
    for n, conn in enumerate(plan.conns):
        out[n % workers].conns.append(conn)
    for n, pub in enumerate(plan.pubs):
        out[pub_workers[n % len(pub_workers)]].pubs.append(pub)
    return [w for w in out if w.subs or w.conns or w.pubs] or out[:1]


# -- progress ------------------------------------------------------------------------------------
class Progress:
    """A one-line live status on stderr, at most once a second, only on a terminal."""

    def __init__(self, title: str, enabled: bool | None = None) -> None:
        self.title = title
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last = self.started
        self._prev: dict[str, int] = {}

    def update(self, phase: str, totals: dict[str, int], force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 1.0 and not force):
            return
        span = max(now - self._last, 1e-9)
        parts = [f"{self.title} [{phase} {now - self.started:5.1f}s]"]
        for key in ("connected", "sent", "acked", "recv"):
            value = totals.get(key, 0)
            if key != "connected" and not value:
                continue
            per_s = (value - self._prev.get(key, 0)) / span
            parts.append(f"{key} {value:,}" + (f" ({per_s:,.0f}/s)" if key != "connected" else ""))
        if totals.get("failed"):
            parts.append(f"failed {totals['failed']:,}")
        sys.stderr.write("\r\x1b[K" + "  ".join(parts))
        sys.stderr.flush()
        self._prev = dict(totals)
        self._last = now

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# -- the controller ------------------------------------------------------------------------------
class Controller:
    def __init__(self, channels: list[Channel], progress: Progress) -> None:
        self.channels = channels
        self.progress = progress
        self.latest: list[dict[str, Any]] = [{} for _ in channels]
        self.inbox: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
        self.readers = [asyncio.create_task(self._pump(k, c)) for k, c in enumerate(channels)]

    async def _pump(self, k: int, channel: Channel) -> None:
        while True:
            kind, body = await channel.recv()
            if kind in ("progress", "ready", "published"):
                self.latest[k] = body
            await self.inbox.put((k, kind, body))
            if kind in ("eof", "result"):
                return

    def totals(self) -> dict[str, int]:
        keys = ("connected", "failed", "sent", "acked", "recv")
        return {key: sum(int(b.get(key, 0)) for b in self.latest) for key in keys}

    async def until(
        self, kind: str, deadline: float, phase: str, stop_early: Callable[[], bool] | None = None
    ) -> dict[int, dict[str, Any]]:
        """Collect one `kind` message per worker, until `deadline` or `stop_early()`."""
        got: dict[int, dict[str, Any]] = {}
        while len(got) < len(self.channels):
            timeout = min(deadline - time.monotonic(), 0.25)
            if deadline - time.monotonic() <= 0:
                break
            try:
                k, msg, body = await asyncio.wait_for(self.inbox.get(), max(timeout, 0.001))
            except TimeoutError:
                msg = ""
                k, body = -1, {}
            if msg == kind:
                got[k] = body
            elif msg == "eof":
                raise RuntimeError(f"load worker {k} exited unexpectedly")
            self.progress.update(phase, self.totals())
            if stop_early is not None and stop_early():
                break
        return got

    def broadcast(self, kind: str, body: dict[str, Any]) -> None:
        for channel in self.channels:
            channel.send(kind, body)

    def close(self) -> None:
        for reader in self.readers:
            reader.cancel()


async def run_plan(
    plan: LoadPlan,
    *,
    procs: int = 1,
    broker_pid: int | None = None,
    title: str = "bench",
    progress: bool | None = None,
    use_uvloop: bool = True,
) -> Outcome:
    """Run `plan` once (see the module docstring) and return the merged `Outcome`."""
    plans = split_plan(plan, procs)
    status = Progress(title, progress)
    rss: dict[str, int] = {}
    if broker_pid is not None and (value := rss_kb(broker_pid)) is not None:
        rss["before"] = value
    broker_cpu_start = cpu_seconds(broker_pid) if broker_pid is not None else None
    channels: list[Channel] = []
    processes: list[multiprocessing.process.BaseProcess] = []
    pipes: list[PipeChannel] = []
    local: list[asyncio.Task[None]] = []
    if procs <= 0:
        to_worker: asyncio.Queue[Message] = asyncio.Queue()
        from_worker: asyncio.Queue[Message] = asyncio.Queue()
        channels.append(QueueChannel(from_worker, to_worker))
        worker = run_worker(plans[0], QueueChannel(to_worker, from_worker))
        local.append(asyncio.create_task(worker))
    else:
        ctx = multiprocessing.get_context("spawn")
        for wp in plans:
            ours, theirs = ctx.Pipe(duplex=True)
            process = ctx.Process(target=_worker_main, args=(wp, theirs, use_uvloop), daemon=True)
            process.start()
            theirs.close()
            processes.append(process)
            pipe = PipeChannel(ours)
            pipes.append(pipe)
            channels.append(pipe)
    ctl = Controller(channels, status)
    out = Outcome(workers=len(plans))
    try:
        ready = await ctl.until("ready", time.monotonic() + plan.setup_timeout, "connect")
        if len(ready) < len(channels):
            raise RuntimeError(f"only {len(ready)} of {len(channels)} workers connected in time")
        if not any(int(r.get("connected", 0)) for r in ready.values()):
            first = [e for r in ready.values() for e in r.get("errors", [])][:1] or ["?"]
            where = ", ".join(f"{host}:{port}" for host, port in plan.targets)
            raise RuntimeError(f"cannot connect to {where} ({first[0]})")
        out.worker_connect_cpu_s = [float(r.get("cpu_connect_s", 0.0)) for r in ready.values()]
        if plan.settle > 0:
            await asyncio.sleep(plan.settle)
        if broker_pid is not None and (value := rss_kb(broker_pid)) is not None:
            rss["ready"] = value
        broker_cpu0 = cpu_seconds(broker_pid) if broker_pid is not None else None
        if broker_cpu0 is not None and broker_cpu_start is not None:
            out.broker_connect_cpu_s = round(broker_cpu0 - broker_cpu_start, 3)
        t0 = time.monotonic() + 0.05
        deadline = t0 + plan.duration
        ctl.broadcast("go", {"t0": t0, "deadline": deadline})
        if plan.pubs:
            await ctl.until("published", deadline + 10.0, "publish")
            sent = ctl.totals()["sent"]
            expected = sent * plan.fanout if plan.fanout is not None else None
            await _drain(ctl, plan, expected)
        else:

            def enough() -> bool:
                return 0 < plan.recv_limit <= ctl.totals()["recv"]

            await ctl.until("never", deadline, "hold", stop_early=enough)
        stop_at = time.monotonic()
        if broker_pid is not None:
            cpu1 = cpu_seconds(broker_pid)
            if broker_cpu0 is not None and cpu1 is not None:
                out.broker_cpu_s = cpu1 - broker_cpu0
            if (value := rss_kb(broker_pid)) is not None:
                rss["end"] = value
        ctl.broadcast("stop", {})
        results = await ctl.until("result", time.monotonic() + 60.0, "stop")
        _merge(out, list(results.values()), t0, stop_at)
        if len(results) < len(channels):
            out.errors.append(f"{len(channels) - len(results)} workers sent no result")
    finally:
        status.done()
        ctl.close()
        for task in local:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for pipe in pipes:
            pipe.close()
        for proc in processes:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 10.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
    out.broker_rss_kb = rss
    return out


async def _drain(ctl: Controller, plan: LoadPlan, expected: float | None) -> None:
    """Wait for deliveries: the expected count, or `idle` s without one, or `drain` s in all."""
    start = time.monotonic()
    last_recv = ctl.totals()["recv"]
    last_change = start
    while time.monotonic() - start < plan.drain:
        recv = ctl.totals()["recv"]
        if expected is not None and recv >= expected:
            return
        now = time.monotonic()
        if recv != last_recv:
            last_recv, last_change = recv, now
        elif now - last_change >= plan.idle:
            return
        await ctl.until("never", now + 0.1, "drain")


def _merge(out: Outcome, results: list[dict[str, Any]], t0: float, stop_at: float) -> None:
    t0_ns = int(t0 * 1e9)
    last_rx = max((int(r["last_rx_ns"]) for r in results if r["last_rx_ns"]), default=0)
    window = max(stop_at - t0, 0.0)
    for r in results:
        for key in ("connected", "failed", "sent", "acked", "recv", "rx_bytes", "lost_connections"):
            setattr(out, key, getattr(out, key) + int(r[key]))
        out.connect_ns.extend(r["connect_ns"])
        out.latency_ns.extend(r["latency_ns"])
        out.worker_cpu_s.append(float(r["cpu_s"]))
        out.errors.extend(str(e) for e in r["errors"])
    starts = [float(r["connect_start"]) for r in results if r["connect_start"]]
    ends = [float(r["connect_end"]) for r in results if r["connect_end"]]
    if starts and ends:
        out.connect_s = max(ends) - min(starts)
    pub_ends = [float(r["pub_end"]) for r in results if r["pub_end"]]
    out.publish_s = max(pub_ends) - t0 if pub_ends else 0.0
    out.recv_s = (last_rx - t0_ns) / 1e9 if last_rx else 0.0
    out.wall_s = window
    if out.broker_cpu_s is not None:
        out.broker_cpu_s = round(out.broker_cpu_s, 3)
