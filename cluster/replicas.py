"""Replicated tables: state every node keeps a full copy of (retained messages, bans, and the
last-writer-wins tables of `broker.core.replicated`: the API apps, auth_clientid, auth_username).

Why one mechanism: each such table needs the same two things from the cluster. A change is
written on every running node by whoever makes it (the management API runs an idempotent query
on each node); a node that was away pulls the table from a peer when it (re)joins. Only the
second part lives here, so that a table is added with one `add(name, dump, merge)` call.

* `add(name, dump, merge, resync=False)` serves RPC `<name>_dump` with `dump(args, from_node)`
  (what a peer pulls) and remembers `merge(answer) -> int` (how many entries it changed here).
* `pull(node, ...)` asks `node` for each table and merges the answers; an RPC failure of one
  table is logged and the others are still pulled. `pull_all` is the once-per-start sync (from
  the first peer met, every table); tables added with `resync=True` are small and mergeable in
  any order (last writer wins, tombstones for deletions), so they are pulled again from every
  node that joins or comes back (after a partition, or a restart of either side), which makes
  two sides that changed apart converge.

* Anti-entropy without a membership change (`exchange`, run every push/pull interval with one
  random live peer by `run`): the two nodes swap a digest of each table (`digest()`, a hash of
  what the table holds: keys and their hybrid-clock stamps); a table whose digests differ is
  pulled by the caller, and the callee pulls it back from the caller (RPC `replicas_digest`
  tells it which), so one round repairs a divergence both ways, whichever way a lost
  replication went. Tables without a digest are left out.

The RPC method names (`retained_dump`, `banned_dump`, `tables_dump`, `replicas_digest`) are the
wire contract.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cluster.rpc import MethodHandler, RpcError

__all__ = ["Replica", "ReplicaSet"]

log = logging.getLogger(__name__)

#: `call(node, method, args)`: one RPC (raises RpcError when the node does not answer).
CallFn = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
Merge = Callable[[Any], int]
Digest = Callable[[], str]


@dataclass(frozen=True, slots=True)
class Replica:
    name: str
    dump: MethodHandler
    merge: Merge
    resync: bool
    digest: Digest | None = None
    #: what the pull asks with (an older node ignores it and answers its older form)
    args: dict[str, Any] | None = None


class ReplicaSet:
    """The node's replicated tables; see the module docstring."""

    def __init__(self, call: CallFn, register_rpc: Callable[[str, MethodHandler], None]) -> None:
        self._call = call
        self._register_rpc = register_rpc
        self.tables: dict[str, Replica] = {}
        #: anti-entropy rounds run / tables found apart and pulled (both directions)
        self.stats = {"exchanges": 0, "repairs": 0}
        self._tasks: set[asyncio.Task[None]] = set()
        register_rpc("replicas_digest", self._on_digest)

    def add(
        self,
        name: str,
        dump: MethodHandler,
        merge: Merge,
        *,
        resync: bool = False,
        digest: Digest | None = None,
        args: dict[str, Any] | None = None,
    ) -> None:
        self.tables[name] = Replica(name, dump, merge, resync, digest, args)
        self._register_rpc(f"{name}_dump", dump)

    def digests(self) -> dict[str, str]:
        return {t.name: t.digest() for t in self.tables.values() if t.digest is not None}

    async def exchange(self, node: str) -> list[str]:
        """One anti-entropy round with `node`: the tables found apart (pulled here, and pulled
        back by `node` from us). Raises RpcError when `node` does not answer."""
        self.stats["exchanges"] += 1
        answer = await self._call(node, "replicas_digest", {"digests": self.digests()})
        theirs = answer.get("digests") if isinstance(answer, dict) else None
        if not isinstance(theirs, dict):
            return []
        apart = [name for name, d in self.digests().items() if theirs.get(name) != d]
        if apart:
            self.stats["repairs"] += len(apart)
            log.info("cluster: anti-entropy with %s: %s apart", node, ", ".join(apart))
            await self.pull(node, names=apart)
        return apart

    async def _on_digest(self, args: dict[str, Any], from_node: str) -> dict[str, Any]:
        """The peer's side of `exchange`: answer our digests; pull what differs from it."""
        theirs = args.get("digests")
        ours = self.digests()
        if isinstance(theirs, dict):
            apart = [name for name, d in ours.items() if name in theirs and theirs[name] != d]
            if apart:
                task = asyncio.get_running_loop().create_task(self._pull_quietly(from_node, apart))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return {"digests": ours}

    async def _pull_quietly(self, node: str, names: list[str]) -> None:
        try:
            await self.pull(node, names=names)
        except RpcError as exc:
            log.info("cluster: anti-entropy pull from %s failed: %s", node, exc)

    async def run(self, peers: Callable[[], list[str]], interval: Callable[[], float]) -> None:
        """Every `interval()` seconds, `exchange` with one random node of `peers()`."""
        rng = random.Random()
        while True:
            await asyncio.sleep(interval() * rng.uniform(0.75, 1.25))
            candidates = peers()
            if not candidates:
                continue
            try:
                await self.exchange(rng.choice(candidates))
            except RpcError as exc:
                log.info("cluster: anti-entropy round failed: %s", exc)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def pull(
        self, node: str, *, resync_only: bool = False, names: list[str] | None = None
    ) -> dict[str, int]:
        """Pull the tables from `node` (all, the resync ones, or those `names`) and merge
        them: name -> entries changed here.

        Raises RpcError when `node` answered none of them (so the caller may try another).
        """
        changed: dict[str, int] = {}
        failures = 0
        tables = [
            t
            for t in self.tables.values()
            if (t.resync or not resync_only) and (names is None or t.name in names)
        ]
        for table in tables:
            try:
                answer = await self._call(node, f"{table.name}_dump", dict(table.args or {}))
            except RpcError as exc:
                failures += 1
                log.info("cluster: pulling %s from %s failed: %s", table.name, node, exc)
                if failures == len(tables):
                    raise
                continue
            try:
                changed[table.name] = table.merge(answer)
            except Exception:  # a malformed answer must not stop the other tables
                log.exception("cluster: cannot merge %s pulled from %s", table.name, node)
        level = logging.INFO if any(changed.values()) else logging.DEBUG
        summary = ", ".join(f"{n} {name}" for name, n in changed.items()) or "nothing"
        log.log(level, "cluster: pulled from %s: %s", node, summary)
        return changed

    async def pull_all(self, candidates: list[str]) -> str | None:
        """Every table from the first candidate that answers; returns its name (None: none)."""
        for node in candidates:
            try:
                await self.pull(node)
            except RpcError:
                continue
            return node
        return None
