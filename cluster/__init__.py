"""minibroker clustering: the pure (sans-IO) parts.

* `cluster.wire`: frames `[length][version][type][msgpack body]`, `MessageType`, handshake,
  FORWARD and RPC bodies (the only module that imports msgpack);
* `cluster.membership`: SWIM membership of one node (`Membership`), with `cluster.gossip`
  (records, config, delegate, transmit queue), `cluster.members` (member table) and
  `cluster.probe` (failure detector);
* `cluster.routes`: the cluster route table (`RouteTable`, `RouteDelta`);
* `cluster.sync`: `RouteSync`, the membership delegate that gossips and push/pulls routes;
* `cluster.sim`: an in-memory network with a virtual clock (tests, `benchmarks.cluster_sim`).

Nothing here does I/O or reads a clock: the runtime passes `now` and sends what it is given.
"""
