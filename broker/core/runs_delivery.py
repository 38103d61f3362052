"""Runs of plain QoS 0 frames (`broker.protocol.runs`) routed once and delivered as bytes.

Why here and not in `broker.core.broker`: these are the `Broker.publish` decisions for a whole
run, taken only when they come out the same for each of its messages; everything else goes
back to `publish`, one message at a time, so behaviour never depends on this module.

* `plan_run` (a client's run): who gets it as its bytes (a `RunPlan`'s targets) and which
  other nodes it is forwarded to (its nodes, asked of `Broker.run_forwarder`, the cluster's
  `broker.core.cluster_port.RunForwarder`); None when `publish` must see the messages.
* `publish_run` delivers a planned run and forwards it.
* `deliver_forwarded_run` is the receiving node's side: a run another node forwarded, given to
  the local subscribers as `publish(message, forward=False, shared=False)` would give each of
  its messages; False when it cannot (`run_messages` then makes the messages).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from broker.core.broker import Broker
from broker.core.client_port import ClientPort
from broker.core.cluster_port import WaitDrained
from broker.core.message import Message
from broker.core.session import Session
from broker.protocol.decode import expand_run
from broker.protocol.packets import Publish
from broker.protocol.runs import PublishRun

#: The local subscribers that get a run's bytes, each once.
Targets = list[tuple[Session, ClientPort]]

_NO_NODES: frozenset[str] = frozenset()


#: Where a client's run goes: (local targets, other nodes). A plain tuple, not a NamedTuple:
#: made once per read, and a NamedTuple's Python-level `__new__` cost 0.2 us of a lone
#: message's ~4.4 us in the core (README "Latency of a lone message").
RunPlan = tuple[Targets, AbstractSet[str]]


def plan_run(broker: Broker, run: PublishRun, publisher: str) -> RunPlan | None:
    """The plan for a run published by client `publisher`, or None when `Broker.publish` must
    see its messages one by one: publish hooks, a forward hook that is not the cluster's or
    a node that cannot take a run (`RunForwarder.run_nodes`), a shared group (here or in the
    cluster), or what `local_targets` declines."""
    dispatcher = broker.shared_dispatcher
    if broker.hooks.message_publish or (
        dispatcher is not None and dispatcher.has_groups(run.topic)
    ):
        return None
    nodes: AbstractSet[str] = _NO_NODES
    hooks = broker.forward_hooks
    if hooks:
        forwarder = broker.run_forwarder
        if forwarder is None or len(hooks) != 1:
            return None
        remote = forwarder.run_nodes(run.topic)
        if remote is None:
            return None
        nodes = remote
    targets = local_targets(broker, run, publisher, shared=True)
    if targets is None:
        return None
    return targets, nodes


def local_targets(
    broker: Broker, run: PublishRun, publisher: str, *, shared: bool
) -> Targets | None:
    """The sessions and connections `publish` would deliver each message of `run` to, each
    once; None when one of them needs the message: a subscription identifier, a subscriber
    offline or one the bytes do not fit (`ClientPort.passes`: topic aliases, Maximum Packet
    Size), or (`shared`, a lone node) a shared group. `shared=False` (a forwarded copy)
    leaves shared groups out, as `publish` does."""
    normal, groups = broker.router.match_all(run.topic)
    if groups and shared and broker.shared_dispatcher is None:
        return None  # (with a dispatcher, `publish` leaves them to it: `plan_run` asked it)
    sessions = broker.sessions
    connected = broker.connected
    targets: Targets = []
    for client_id, sub in normal:
        if sub.no_local and client_id == publisher:
            continue  # MQTT-3.8.3-3
        if sub.identifier is not None:
            return None
        session = sessions.get(client_id)
        if session is None:
            continue
        port = connected.get(client_id)
        if port is None or session.outlet is not port or not port.passes(run):
            return None
        targets.append((session, port))
    if len(targets) > 1 and len(normal) > 1:  # one copy per client (MQTT-3.3.5-1)
        targets = list({id(session): (session, port) for session, port in targets}.values())
    return targets


def publish_run(
    broker: Broker, run: PublishRun, plan: RunPlan, publisher: str
) -> WaitDrained | None:
    """Deliver the authorized `run` as `plan_run` planned it: its bytes in one write to each
    local subscriber and one entry per other node, counted per message as `publish` counts;
    how to wait for a congested node (as `Published.wait_drained`)."""
    targets, nodes = plan
    wait_drained = None
    if nodes:
        forwarder = broker.run_forwarder
        assert forwarder is not None
        wait_drained = forwarder.forward_run(run, publisher, nodes)
    elif not targets:
        broker.metrics.counters["messages/dropped"] += run.count  # as `publish`, per message
        return None
    _deliver(run, targets)
    return wait_drained


def deliver_forwarded_run(broker: Broker, run: PublishRun, publisher: str) -> bool:
    """Give a run forwarded by another node to the local subscribers, as `publish(message,
    forward=False, shared=False)` gives each message; False (nothing done) when that takes the
    messages (`run_messages`)."""
    targets = local_targets(broker, run, publisher, shared=False)
    if targets is None:
        return False
    _deliver(run, targets)
    return True


def run_messages(run: PublishRun, publisher: str, timestamp: float, node: str) -> list[Message]:
    """The Messages of `run`, each as `handle_publish` would make it from its PUBLISH (with
    the frame's bytes as `Message.frames`): the way back to the per-message path."""
    out: list[Message] = []
    for packet in expand_run(run):
        assert isinstance(packet, Publish)
        message = Message(
            packet.topic, packet.payload, 0, False, packet.properties, publisher, timestamp, node
        )
        frames = packet.frames
        if frames is not None and frames.fits(packet.topic, packet.payload, packet.properties):
            message.frames = frames
        out.append(message)
    return out


def _deliver(run: PublishRun, targets: Targets) -> None:
    count = run.count
    for session, port in targets:
        sent = port.send_run(run)
        session.count_passed(sent, count - sent)
