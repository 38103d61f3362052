"""A Jepsen-style workload: MQTT clients on every node, every operation recorded in a history.

Processes (each an asyncio task in the test process, reaching its node through the gateway):
* `pub<i>` on node i publishes `w/<i>` with a unique payload `<i>:<seq>:<qos>`, QoS 0/1/2 in turn;
  each publish is an op with outcome ok (PUBACK/PUBCOMP, or handed to the socket for QoS 0),
  fail (not connected: nothing sent) or unknown (sent, no answer).
* `sub<i>`: a persistent session (clean_session false) homed on node i, `w/#` at QoS 2; one
  client object for its whole life, so the client keeps its own QoS 2 state across reconnects
  (paho hands a QoS 2 message to the application at PUBREL: a real duplicate is the broker's).
* `roam`: a persistent session, `w/#` at QoS 2, that moves to the next node every `roam_every`
  seconds: each move is a takeover.
* `shr<i>`: members of the shared group `$share/g/w/#` (QoS 1, clean sessions).
* `ret<i>`: retained writes to `r/k0..r/k2`, value `<i>:<seq>`.
* `twin`: every `twin_every` seconds, one client id connected on two nodes at once; each
  connection is recorded from CONNACK to the broker closing it (or the end of its window).

The fault log records the layout (who reaches whom) and which nodes are up after every fault,
so the checker can tell what the network allowed at the time of each operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

TIMEOUT = 3.0


@dataclass
class Op:
    kind: str  # publish | recv | retain | session | read
    process: str
    node: int
    value: str
    start: float
    end: float = 0.0
    outcome: str = "unknown"  # ok | fail | unknown: ok only once the answer came
    qos: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FaultState:
    time: float
    label: str
    groups: list[list[int]]
    up: frozenset[int]


class History:
    """Every op and every fault, with monotonic times."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ops: list[Op] = []
        self.faults: list[FaultState] = [
            FaultState(time.monotonic(), "start", [list(range(n))], frozenset(range(n)))
        ]

    def fault(self, label: str, groups: list[list[int]], up: set[int]) -> None:
        self.faults.append(FaultState(time.monotonic(), label, groups, frozenset(up)))

    def state(self, t: float) -> FaultState:
        current = self.faults[0]
        for state in self.faults:
            if state.time > t:
                break
            current = state
        return current

    def reachable(self, t: float, a: int, b: int) -> bool:
        s = self.state(t)
        if a not in s.up or b not in s.up:
            return False
        return a == b or any(a in g and b in g for g in s.groups)

    def quiet(self, t: float, settle: float) -> bool:
        """Every node up and linked at t, and no fault changed in the `settle` seconds before."""
        s = self.state(t)
        whole = len(s.groups) == 1 and len(s.up) == self.n
        return whole and all(not (t - settle < f.time <= t) for f in self.faults[1:])

    def last_change_before(self, t: float) -> float:
        return max((f.time for f in self.faults[1:] if f.time <= t), default=float("-inf"))


@dataclass
class Plan:
    pub_nodes: list[int]
    sub_nodes: list[int]
    rate: float = 15.0  # publishes per second per publisher
    roam_every: float = 3.0
    twin_every: float = 0.5
    retain_every: float = 0.6


class Workload:
    """Starts the processes; `stop()` ends publishing, `drain()` lets subscribers catch up."""

    def __init__(self, history: History, ports: Callable[[int], int], plan: Plan) -> None:
        self.h = history
        self.ports = ports  # node index -> gateway port on 127.0.0.1
        self.plan = plan
        self.n = history.n
        self.publishing = True
        self.running = True
        self.tasks: list[asyncio.Task[None]] = []
        self.subscribed: set[str] = set()
        self.roam_node = 0

    def _client(self, node: int, ident: str, clean: bool = True) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1", self.ports(node), identifier=ident, clean_session=clean,
            timeout=TIMEOUT, keepalive=5, max_queued_outgoing_messages=1000,
        )  # fmt: skip

    def start_subscribers(self) -> None:
        for i in self.plan.sub_nodes:
            self._spawn(self._persistent(f"sub{i}", lambda i=i: i))  # type: ignore[misc]
            self._spawn(self._shared(i))
        self._spawn(self._persistent("roam", self._roam_target))

    def start_publishers(self) -> None:
        """After the subscriptions exist: an earlier publish has nobody to reach."""
        for i in self.plan.pub_nodes:
            self._spawn(self._publisher(i))
            self._spawn(self._retainer(i))
        self._spawn(self.roam_loop())
        self._spawn(self._twins())

    def _spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.create_task(coro))

    def _roam_target(self) -> int:
        return self.roam_node

    async def _publisher(self, i: int) -> None:
        qos_cycle = itertools.cycle((1, 2, 1, 2, 0))
        seq = itertools.count()
        while self.publishing:
            client = self._client(i, f"pub{i}")
            try:
                async with client:
                    while self.publishing:
                        qos = next(qos_cycle)
                        value = f"{i}:{next(seq)}:{qos}"
                        op = Op("publish", f"pub{i}", i, value, time.monotonic(), qos=qos)
                        self.h.ops.append(op)
                        try:
                            await client.publish(f"w/{i}", value.encode(), qos=qos)
                            op.outcome = "ok"
                        except aiomqtt.MqttError:
                            op.outcome = "unknown"
                            raise
                        finally:
                            op.end = time.monotonic()
                        await asyncio.sleep(1 / self.plan.rate)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    async def _retainer(self, i: int) -> None:
        seq = itertools.count()
        while self.publishing:
            client = self._client(i, f"ret{i}")
            try:
                async with client:
                    while self.publishing:
                        n = next(seq)
                        value = f"{i}:{n}"
                        op = Op("retain", f"ret{i}", i, value, time.monotonic(), qos=1)
                        op.extra["topic"] = f"r/k{n % 3}"
                        self.h.ops.append(op)
                        try:
                            await client.publish(op.extra["topic"], value.encode(), 1, retain=True)
                            op.outcome = "ok"
                        except aiomqtt.MqttError:
                            op.outcome = "unknown"
                            raise
                        finally:
                            op.end = time.monotonic()
                        await asyncio.sleep(self.plan.retain_every)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    async def _persistent(self, name: str, target: Callable[[], int]) -> None:
        """One client object for the session's life (its QoS 2 state survives reconnects)."""
        client = self._client(target(), name, clean=False)
        while self.running:
            node = target()
            client._port = self.ports(node)  # the same session, dialled at its current node
            try:
                async with client:
                    # Every time: a node that lost the session (a restart) gets it back at once.
                    await client.subscribe("w/#", qos=2)
                    self.subscribed.add(name)
                    await self._receive(client, name, node, lambda n=node: target() != n)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    async def _receive(
        self, client: aiomqtt.Client, name: str, node: int, leave: Callable[[], bool]
    ) -> None:
        # Never cancel a pending read: aiomqtt's iterator takes the message off its queue in a
        # task of its own, and a cancel that lands in the loop turn where that task finished
        # loses the message (a stalled test loop makes that likely: every waiting subscriber
        # lost the first publish after a stall). The read stays pending across the polls.
        messages = aiter(client.messages)
        pending: asyncio.Future[aiomqtt.Message] | None = None
        try:
            while self.running and not leave():
                if pending is None:
                    pending = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({pending}, timeout=0.25)
                if not done:
                    continue
                message, pending = pending.result(), None
                self._record(name, node, message)
        finally:
            if pending is not None:
                if pending.done() and not pending.cancelled() and pending.exception() is None:
                    self._record(name, node, pending.result())
                else:
                    pending.cancel()

    def _record(self, name: str, node: int, message: aiomqtt.Message) -> None:
        now = time.monotonic()
        payload = bytes(message.payload).decode()  # type: ignore[arg-type]
        op = Op("recv", name, node, payload, now, now, "ok", message.qos)
        op.extra["mid"] = message.mid
        self.h.ops.append(op)

    async def _shared(self, i: int) -> None:
        name = f"shr{i}"
        while self.running:
            try:
                async with self._client(i, name) as client:
                    await client.subscribe("$share/g/w/#", qos=1)
                    self.subscribed.add(name)
                    await self._receive(client, name, i, lambda: False)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    async def roam_loop(self) -> None:
        """Move the roaming session to the next node every `roam_every` seconds."""
        while self.publishing:
            await asyncio.sleep(self.plan.roam_every)
            self.roam_node = (self.roam_node + 1) % self.n

    async def _twins(self) -> None:
        for k in itertools.count():
            if not self.publishing:
                return
            a, b = k % self.n, (k + 1) % self.n
            ident = f"twin{k}"
            await asyncio.gather(self._twin(ident, a), self._twin(ident, b))
            await asyncio.sleep(self.plan.twin_every)

    async def _twin(self, ident: str, node: int) -> None:
        """One of two connections with one client id: from CONNACK to its close or 2 s."""
        op = Op("session", ident, node, ident, time.monotonic(), outcome="fail")
        self.h.ops.append(op)
        client = self._client(node, ident)
        try:
            async with client:
                op.start = time.monotonic()
                op.outcome = "ok"
                try:
                    async with asyncio.timeout(2.0):
                        await anext(aiter(client.messages))  # ends when the broker closes us
                except TimeoutError:
                    op.extra["alive_at_end"] = True
        except aiomqtt.MqttError:
            pass
        finally:
            op.end = time.monotonic()

    async def read_retained(self, node: int) -> dict[str, str] | None:
        """The retained values node `node` serves for `r/#` (None if unreachable)."""
        got: dict[str, str] = {}
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with self._client(node, f"reader{node}") as client:
                await client.subscribe("r/#", qos=1)
                messages = aiter(client.messages)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.6):
                        while True:
                            message = await anext(messages)
                            got[message.topic.value] = bytes(message.payload).decode()  # type: ignore[arg-type]
                return got
        return None

    async def stop(self) -> None:
        self.publishing = False

    async def close(self) -> None:
        self.publishing = False
        self.running = False
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
