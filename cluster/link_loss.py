"""Pending RPCs to a peer whose process is gone fail at once, not at their timeout.

Why: a takeover claim sent to the client id's owner just before that owner was SIGKILLed
waited for the RPC timeout (3 s) or the dead verdict (2.5-5 s on loopback), and then its
CONNECT went on alone: two CONNECTs of one id made meanwhile on two nodes could both stay up
(the fault suite, kill during takeover). A killed process's sockets are closed by its kernel,
so our link to it ends at once (EOF or a reset). An ended link alone does not prove the peer
gone (it may have closed that connection and still serve the request: its answer comes over
*its* link to us, `cluster.transport`), so when calls to that peer are pending the link is
dialled again at once:

* the dial fails (refused: nothing listens there any more; or it times out): the calls made
  up to the moment the link ended fail with `NodeUnreachable` (a claim then goes to the
  id's stand-in owner, `cluster.takeover`);
* a peer of another run (epoch) answers: it restarted and never had those calls: they fail;
* the same run answers: it is alive, and the calls wait for their answers as before.

A dial that fails (no check running: a call made once the link's backoff had ended queued its
request on a new connection that never came up) drops the requests queued on it: the pending
calls to that peer fail too, as a call made while the link backs off fails at once.

A link that ends while nothing is pending costs nothing here (links reconnect lazily).
"""

from __future__ import annotations

import logging
from collections import Counter

from cluster.rpc import RpcEndpoint
from cluster.transport import Transport
from cluster.wire import Address, Hello

log = logging.getLogger("cluster.runtime")


class LinkLoss:
    """`Transport.on_link_down` and (part of) `on_link_up`: see the module docstring."""

    def __init__(self, transport: Transport, rpc: RpcEndpoint, stats: Counter[str]) -> None:
        self.transport = transport
        self.rpc = rpc
        self.stats = stats
        #: Links dialled again to see whether the peer is still there:
        #: address -> (peer name, its epoch, the last request id made before the link ended).
        self._checking: dict[Address, tuple[str, int, int]] = {}
        #: The node that last answered on each address.
        self._names: dict[Address, str] = {}

    def down(self, address: Address, peer: Hello | None) -> None:
        """Our link to `address` ended; `peer` answered on it (None: it never came up)."""
        check = self._checking.pop(address, None)
        if peer is not None:
            self._names[address] = peer.name
            if self.rpc.pending_to(peer.name):
                self._checking[address] = (peer.name, peer.epoch, self.rpc.last_id)
                self.stats["rpc/link_checks"] += 1
                self.transport.redial(address)
        elif check is not None:
            self._fail(check, "its link ended and a new one failed")
        else:
            # A dial failed: the requests queued for it were dropped with its queue, so no
            # answer comes to them (the peer is unreachable now, as for a call made while
            # the link backs off, which fails at once).
            names = self.rpc.nodes_at(address)
            name = self._names.get(address)
            if name is not None and self.rpc.pending_to(name):
                names.add(name)
            for name in sorted(names):
                self._fail((name, 0, self.rpc.last_id), "a link to it failed")

    def up(self, address: Address, hello: Hello) -> None:
        """Our link to `address` is up again: the peer of the check, or another run?"""
        self._names[address] = hello.name
        check = self._checking.pop(address, None)
        if check is not None and (hello.name != check[0] or hello.epoch != check[1]):
            self._fail(check, "it restarted")

    def _fail(self, check: tuple[str, int, int], why: str) -> None:
        name, _, up_to = check
        failed = self.rpc.fail_node(name, up_to)
        if failed:
            self.stats["rpc/failed_at_link_loss"] += failed
            log.info("cluster: %d pending call(s) to %s failed: %s", failed, name, why)
