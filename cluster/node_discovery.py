"""DNS discovery of seeds (`dns:NAME:PORT`, e.g. a Kubernetes headless service): resolve the
names at start and every `dns_refresh_interval` seconds, and join what is not a member yet.

Why a module of its own: it is the one part of the cluster runtime that talks to DNS, apart
from the wiring, forwarding and membership driving (`cluster.runtime`,
`cluster.node_membership`). `ClusterNode` inherits `DnsDiscovery`; this module never imports
`cluster.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import TYPE_CHECKING

from cluster.membership import Membership
from cluster.node_config import ClusterConfig
from cluster.wire import Address, Outgoing

log = logging.getLogger("cluster.runtime")


class DnsDiscovery:
    """Seeds from DNS; mixed into `ClusterNode`, whose `__init__` sets the attributes declared
    here."""

    name: str
    port: int
    address: Address
    config: ClusterConfig
    seeds: list[Address]
    dns_seeds: list[Address]
    resolved: list[Address]
    stats: Counter[str]
    _running: bool
    _wake: asyncio.Event

    if TYPE_CHECKING:  # `ClusterNode` and `MembershipDriver` define these

        @property
        def membership(self) -> Membership: ...
        def now(self) -> float: ...
        def send_outgoing(self, out: list[Outgoing]) -> None: ...

    def _all_seeds(self) -> list[Address]:
        out: list[Address] = []
        for seed in [*self.seeds, *self.resolved]:
            if seed != self.address and seed not in out:
                out.append(seed)
        return out

    def _is_self(self, address: Address) -> bool:
        """Our own record in the DNS answer (a pod resolving its headless service)."""
        host, port = address
        own_host = self.name.rpartition("@")[2]
        return port == self.port and host in (self.address[0], own_host)

    async def resolve_dns_seeds(self) -> list[Address]:
        """Every A/AAAA address of the DNS seeds (names that do not resolve are logged)."""
        loop = asyncio.get_running_loop()
        out: list[Address] = []
        for name, port in self.dns_seeds:
            try:
                async with asyncio.timeout(self.config.dns_timeout):
                    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError) as exc:
                self.stats["dns/failed"] += 1
                log.warning("cluster: cannot resolve %s: %s", name, exc)
                continue
            for _family, _type, _proto, _canon, sockaddr in infos:
                address: Address = (str(sockaddr[0]), int(sockaddr[1]))
                if address not in out and not self._is_self(address):
                    out.append(address)
        self.stats["dns/resolved"] += 1
        return out

    async def _refresh_dns(self) -> None:
        """Re-resolve the DNS seeds periodically; join addresses that are not members yet."""
        while self._running:
            await asyncio.sleep(self.config.dns_refresh_interval)
            if not self._running:
                return
            resolved = await self.resolve_dns_seeds()
            members = {m.address for m in self.membership.live_members()}
            new = [a for a in resolved if a not in members and a != self.address]
            changed = resolved != self.resolved
            self.resolved = resolved
            if new or changed:
                if new:
                    log.info("cluster: DNS discovery: joining %s",
                             ", ".join(f"{h}:{p}" for h, p in new))  # fmt: skip
                self.send_outgoing(self.membership.join(self._all_seeds(), self.now()))
                self._wake.set()
