"""Plain QoS 0 frames to changing topics (`broker.protocol.runs.PublishFrames`), passed on as bytes.

Why: a publisher that cycles through many topics sends no two frames to one topic in a row,
so each frame would be a `PublishRun` of one and pay every per-run decision of
`handle_publish_run` and `broker.core.runs_delivery` (about 6 us a frame, as much as the
packet path). Here one loop over the frames of a read does, per frame, only what depends on
its topic, and everything else once per read:

* once per read: the conditions under which no message of the read could be treated
  differently (`_open`: no publish rate limit, no publish hooks, and no other node that could
  want one, `RunForwarder.alone`); else the frames go back as runs of one, today's path;
* per frame: the topic checks of `handle_publish_run` (no wildcard, no `$`, `topic_limit`),
  the router (`SubscriptionTrie.match_all`: its cache, else the parent's frontier), and the
  ACL when authorize hooks are loaded: each topic asked once per read, or once until the
  rules change when every hook is pure (`_answers`, `Hooks.pure_authorize`);
* per distinct subscriber list the router answers with (the trie hands out the same list
  object for every topic a single filter matches): who gets it (`_plan`, as
  `runs_delivery.local_targets` decides it), computed once per read;
* per frame and subscriber: the frame's place in that subscriber's output, which grows as
  one span of the read's bytes while the subscriber gets every frame;
* per subscriber, at the end: one write (`ClientPort.send_frames`) and its counters.

The first frame any of this cannot pass on as bytes (a subscription identifier, an offline
subscriber, topic aliases or another protocol family, a shared group, a `$` topic, a
subscriber whose output may reach `max_outgoing_buffer` within the read, ...) ends the loop:
what came before is written, and that frame goes back as a `PublishRun` of one (today's path,
which may hand it on as a packet), the frames after it as `PublishFrames` again. So every
subscriber sees the frames in the order they were published (MQTT-4.6.0-6), and each message
is counted as the packet path counts it.
"""

from __future__ import annotations

import weakref

from broker.core.broker import Broker
from broker.core.client_port import ClientPort
from broker.core.connection import Connection
from broker.core.handle_publish import topic_limit
from broker.core.hooks import ClientInfo
from broker.core.session import Session, Subscription
from broker.core.states import CONNECTED
from broker.protocol.runs import PublishFrames, PublishRun

#: What goes back to the channel's dispatch loop: for today's path, then the fast path again.
Leftover = list[PublishRun | PublishFrames]


class _Out:
    """One subscriber's output for the read: `count` frames of `size` bytes to send,
    `dropped` past the cap, the span of the read's bytes being added to (`lo`, `hi`) and the
    spans before it (`chunks`)."""

    __slots__ = ("chunks", "count", "dropped", "hi", "lo", "port", "room", "session", "size")

    def __init__(self, port: ClientPort, session: Session, room: int) -> None:
        self.port = port
        self.session = session
        self.room = room
        self.count = 0
        self.size = 0
        self.dropped = 0
        self.lo = 0
        self.hi = -1
        self.chunks: list[bytes] = []


def _open(broker: Broker) -> bool:
    """No message of a read could be treated differently from the next for reasons other
    than its topic (what `handle_publish_run` and `runs_delivery.plan_run` check per run):
    no publish rate limit or hooks, and no other node that could want one of them (a cluster
    node alone in its cluster, `RunForwarder.alone`: then the shared groups that matter are
    the local ones, which the router's answer shows)."""
    if broker.settings.publish_rate is not None or broker.hooks.message_publish:
        return False
    hooks = broker.forward_hooks
    if not hooks and broker.shared_dispatcher is None:
        return True
    forwarder = broker.run_forwarder
    return len(hooks) <= 1 and forwarder is not None and forwarder.alone()


def handle_publish_frames(channel: Connection, frames: PublishFrames) -> Leftover:
    """Pass on the frames of `frames` as bytes, in order, up to the first that cannot be
    (module docstring); return what is left, for the channel to hand to today's path."""
    broker = channel.broker
    first = frames.first
    topics = frames.topics
    n = len(topics)
    if channel.state != CONNECTED or not _open(broker):
        return [frames.run(i) for i in range(first, n)]
    session = channel.session
    info = channel.info
    assert session is not None and info is not None
    publisher = session.client_id
    settings = broker.settings
    max_levels = settings.max_topic_levels
    max_length = settings.max_topic_length
    hooks = broker.hooks
    authorize = hooks.run_authorize if hooks.authorize else None
    allowed = _answers(broker, info) if authorize is not None else {}
    match_all = broker.router.match_all
    plans: dict[int, tuple[object, list[_Out] | None]] = {}
    outs: dict[str, _Out] = {}
    data = frames.data
    ends = frames.ends
    # A topic holds `+` or `#` only if the read's bytes do (they rarely do): one C search.
    wild = b"+" in data or b"#" in data
    dropped = 0
    start = frames.start(first)
    last: object = None  # the router's list for the previous frame, and its targets
    targets: list[_Out] | None = None
    stop = n
    for i in range(first, n):
        topic = topics[i]
        if (
            not topic
            or topic[0] == "$"
            or (wild and ("+" in topic or "#" in topic))
            or (max_levels and topic.count("/") >= max_levels)
            or (max_length and len(topic) * 4 > max_length and topic_limit(settings, topic))
        ):
            stop = i
            break
        normal, groups = match_all(topic)
        if groups:
            stop = i
            break
        if normal is not last:
            known = plans.get(id(normal))
            if known is None:
                # The list is kept in `plans`, so its id is not reused during the read.
                plan = _plan(broker, normal, publisher, frames, outs)
                known = plans[id(normal)] = (normal, plan)
            last = normal
            targets = known[1]
            if targets is None:
                stop = i
                break
        assert targets is not None
        end = ends[i]
        if authorize is not None:
            ok = allowed.get(topic)
            if ok is None:
                ok = allowed[topic] = authorize(info, "publish", topic)
                if len(allowed) > _ACL_TOPICS:
                    allowed.clear()  # bounded: a client of ever-new topics starts over
            if not ok:
                dropped += 1
                start = end
                continue
        if not targets:
            dropped += 1  # nobody subscribed: dropped, as `Broker.publish` counts it
            start = end
            continue
        for out in targets:
            # Whether a subscriber that may reach `max_outgoing_buffer` with this frame drops
            # it depends on how much the transport sends meanwhile: today's path asks.
            if out.size > out.room >= 0:
                break
        else:
            for out in targets:
                if out.room < 0:
                    out.dropped += 1  # over the cap before the read: every frame drops
                    continue
                if out.hi != start:  # not the next frame of its span: a new span
                    if out.hi > out.lo:
                        out.chunks.append(data[out.lo : out.hi])
                    out.lo = start
                out.hi = end
                out.count += 1
                out.size += end - start
            start = end
            continue
        stop = i
        break
    i = stop
    _flush(broker, outs, data)
    done = i - first
    if done:
        counters = broker.metrics.counters
        counters["messages/received"] += done
        counters["messages/qos0/received"] += done
        counters["packets/received"] += done
        counters["packets/publish/received"] += done
        if dropped:
            counters["messages/dropped"] += dropped
        channel.recv_msg += done
        channel.recv_pkt += done
    if i == n:
        return []
    left: Leftover = [frames.run(i)]
    rest = frames.rest(i + 1)
    if rest is not None:
        left.append(rest)
    return left


#: Publish decisions remembered per client (`_answers`), at most.
_ACL_TOPICS = 4096


class _Acl:
    """The remembered publish decisions of a broker's pure authorize hooks: per (client id,
    username), topic -> allowed; valid for `key` (the epoch and the hooks)."""

    __slots__ = ("answers", "key")

    def __init__(self, key: tuple[object, ...]) -> None:
        self.key = key
        self.answers: dict[tuple[str, str | None], dict[str, bool]] = {}


_ACLS: weakref.WeakKeyDictionary[Broker, _Acl] = weakref.WeakKeyDictionary()


def _answers(broker: Broker, info: ClientInfo) -> dict[str, bool]:
    """Where to remember this client's publish decisions: for this read only, unless every
    authorize hook is pure (`Hooks.pure_authorize`); then across reads, forgotten when a
    hook comes or goes or its owner bumps `Hooks.authorize_epoch` (an ACL reload)."""
    hooks = broker.hooks
    if not hooks.authorize_is_pure():
        return {}
    key = (hooks.authorize_epoch, *hooks.authorize)
    acl = _ACLS.get(broker)
    if acl is None or acl.key != key:
        acl = _ACLS[broker] = _Acl(key)
    who = (info.client_id, info.username)
    answers = acl.answers.get(who)
    if answers is None:
        if len(acl.answers) >= _ACL_TOPICS:
            acl.answers.clear()
        answers = acl.answers[who] = {}
    return answers


def _flush(broker: Broker, outs: dict[str, _Out], data: bytes) -> None:
    """Write each subscriber's frames of the read at once and count them."""
    for out in outs.values():
        count = out.count
        if count:
            span = data[out.lo : out.hi]
            chunks = out.chunks
            out.port.send_frames(b"".join(chunks) + span if chunks else span, count)
        dropped = out.dropped
        if dropped:
            broker.limits["max_outgoing_buffer"] += dropped
        out.session.count_passed(count, dropped)


def _plan(
    broker: Broker,
    normal: list[tuple[str, Subscription]],
    publisher: str,
    frames: PublishFrames,
    outs: dict[str, _Out],
) -> list[_Out] | None:
    """The outputs of the subscribers `normal` (the router's answer) stands for, each once
    (MQTT-3.3.5-1), as `runs_delivery.local_targets` finds them; None when one of them needs
    today's path. A subscriber first met here gets its `_Out` in `outs`."""
    sessions = broker.sessions
    connected = broker.connected
    targets: list[_Out] = []
    for client_id, sub in normal:
        if sub.no_local and client_id == publisher:
            continue  # MQTT-3.8.3-3
        if sub.identifier is not None:
            return None
        session = sessions.get(client_id)
        if session is None:
            continue
        out = outs.get(client_id)
        if out is None:
            port = connected.get(client_id)
            if port is None or session.outlet is not port:
                return None
            room = port.frames_room(frames.v5, frames.longest)
            if room is None:
                return None
            out = outs[client_id] = _Out(port, session, room)
        if out not in targets:
            targets.append(out)
    return targets
