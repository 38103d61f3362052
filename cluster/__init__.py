"""minibroker clustering: pure (sans-IO) parts, and the asyncio runtime that drives them.

* `cluster.wire`: frames `[length][version][type][msgpack body]`, `MessageType`, handshake,
  FORWARD and RPC bodies (the only module that imports msgpack);
* `cluster.membership`: SWIM membership of one node (`Membership`), with `cluster.members`
  (member records and table), `cluster.membership_config` (timings and formulas),
  `cluster.probe` (failure detector), `cluster.transmit` (the retransmit-limited queue) and
  `cluster.delegate` (the interface, and the member events, through which routes ride on it);
* `cluster.routes`: the cluster route table (`RouteTable`, `RouteDelta`);
* `cluster.sync`: `RouteSync`, the membership delegate that gossips and push/pulls routes;
* `cluster.sim`: an in-memory network with a virtual clock (tests, `benchmarks.cluster_sim`);
* `cluster.shared_dispatch`: `ClusterSharedDispatcher`, one member per shared group cluster-wide;
* `cluster.takeover`: a client id unique in the cluster (surrender RPC, `ClusterSessionLocator`);
  the locator inherits the registry owner's side (`cluster.takeover_owner`) and the
  registration rounds (`cluster.takeover_rounds`); `cluster.takeover_wire` holds the RPC names
  and the surrendered state's helpers;
* `cluster.ports`: plugs those two into the broker's ports (`broker.core.cluster_port`) and the
  runtime (`cluster.runtime`, asyncio).
* `cluster.transport` (asyncio): TCP links, the cookie handshake, bounded per-peer send queues;
* `cluster.rpc`: request/response with ids and timeouts (`RpcError`: `NodeUnreachable`,
  `RpcTimeout`, `RemoteError`);
* `cluster.replicas` (asyncio): the tables every node holds a copy of, pulled from peers and
  compared by digest every push/pull interval; `cluster.replicated_state`: the broker's
  tables (retained messages, bans, the last-writer-wins tables), ordered by hybrid-clock stamps;
* `cluster.runtime`: `ClusterNode`, which runs membership, route sync, forwarding, retained
  replication and RPC for one node.

The pure modules do no I/O and read no clock: the runtime passes `now` and sends what it is
given. Only `transport`, `rpc`, `replicas` and `runtime` touch asyncio.
"""
