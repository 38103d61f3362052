"""The node-local query table: one async function per fact or action the API needs from a node.

Theory of operation
-------------------
`QUERIES[name](ctx, args)` runs on the node that owns the data: locally through
`management.view.LocalView`, or on a remote node when the cluster's RPC server receives
`(name, args)` and runs the same table against its own `NodeContext`. Therefore:

* `args` and the result are plain data (dict/list/str/int/float/bool/None), msgpack-able;
* every row already carries `node`, so the API can merge rows of several nodes as they are;
* an expected failure is a result, not an exception: `{"error": "<reason>"}` (the API turns the
  reason into its status); only bugs raise.

Queries return whole row lists; the API layer paginates (so `meta.count` is the cluster total).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import os
import platform
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from broker.core.banned import BAN_KINDS, BanEntry
from broker.core.channel import Channel
from broker.core.hlc import stamp_from_wire
from broker.core.message import Message, is_expired
from broker.core.metrics import METRIC_NAMES, STAT_NAMES
from broker.core.session import Session, Subscription
from broker.core.topics import parse_shared, validate_topic_filter, validate_topic_name
from broker.plugins.manager import (
    PluginAlreadyLoaded,
    PluginLoadError,
    PluginNotFound,
    PluginNotLoaded,
)
from broker.server.listeners import ListenerStats
from broker.server.logs import set_level
from management.apps import AppStore
from management.formats import human_bytes, local_datetime, undefined, uptime

if TYPE_CHECKING:
    from broker.core.broker import Broker
    from broker.server.config import BrokerConfig
    from broker.server.node import Node

log = logging.getLogger(__name__)

Row = dict[str, Any]
Rows = list[Row]


class PluginManagerLike(Protocol):
    """What the API uses of `broker.plugins.manager.PluginManager`.

    `load`/`unload` raise `PluginNotFound`, `PluginAlreadyLoaded`, `PluginNotLoaded` or
    `PluginLoadError` (from broker.plugins.manager). Either may be a coroutine function; tests
    may inject a fake with this shape.
    """

    def list(self) -> Rows: ...

    def load(self, name: str) -> object: ...

    def unload(self, name: str) -> object: ...


class AlarmManagerLike(Protocol):
    """What the API uses of `broker.server.alarms.AlarmManager`: raised and cleared alarms."""

    def list(self) -> Rows: ...

    def history(self) -> Rows: ...


@dataclass(kw_only=True)
class NodeContext:
    """Everything a query may read or act on, for one node."""

    broker: Broker
    node: Node
    config: BrokerConfig
    version: str
    started_at: float
    plugins: PluginManagerLike | None = None
    alarms: AlarmManagerLike | None = None
    #: The node's API apps (the `/apps` endpoints change them on every node).
    apps: AppStore | None = None
    #: Listeners outside `node.listeners` (the management HTTP server).
    extra_listeners: list[ListenerStats] = field(default_factory=list)

    @property
    def node_name(self) -> str:
        return self.broker.node_name

    def listeners(self) -> list[ListenerStats]:
        return [*self.node.listeners, *self.extra_listeners]


QueryFn = Callable[[NodeContext, dict[str, Any]], Awaitable[Any]]
QUERIES: dict[str, QueryFn] = {}


def query(name: str) -> Callable[[QueryFn], QueryFn]:
    def register(fn: QueryFn) -> QueryFn:
        QUERIES[name] = fn
        return fn

    return register


def error(reason: str) -> Row:
    return {"error": reason}


def is_error(result: object) -> str | None:
    """The reason of an `{"error": ...}` result, else None."""
    if isinstance(result, dict) and isinstance(result.get("error"), str):
        return str(result["error"])
    return None


def runtime_release() -> str:
    """What we report as EMQX's `otp_release`: the Python runtime and its event loop."""
    try:
        loop_module = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:  # not called from a running loop
        loop_module = "asyncio"
    return f"Python {platform.python_version()}/{loop_module}"


# -- broker and node ---------------------------------------------------------------------------


@query("broker_info")
async def broker_info(ctx: NodeContext, args: dict[str, Any]) -> Row:
    now = time.time()
    return {
        "datetime": local_datetime(now),
        "node_status": "Running",
        "sysdescr": "minibroker",
        "uptime": uptime(now - ctx.started_at),
        "version": ctx.version,
        "otp_release": runtime_release(),
    }


def _max_fds() -> int:
    """The process's open-file limit; when unlimited, the kernel's cap (fs.nr_open)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        return int(soft)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1_048_576  # Linux's default nr_open


@query("node_info")
async def node_info(ctx: NodeContext, args: dict[str, Any]) -> Row:
    """Node figures from the OS: memory_total is the machine's RAM, memory_used this process's
    resident set; process_available/process_used are the fd limit and the open fds (the
    resources that bound a Python broker's clients, as Erlang processes bound EMQX's)."""
    proc = psutil.Process()
    load1, load5, load15 = os.getloadavg()
    max_fds = _max_fds()
    return {
        "name": ctx.node_name,
        "node_status": "Running",
        "version": ctx.version,
        "uptime": uptime(time.time() - ctx.started_at),
        "otp_release": runtime_release(),
        "memory_total": int(psutil.virtual_memory().total),
        "memory_used": int(proc.memory_info().rss),
        "process_available": max_fds,
        "process_used": int(proc.num_fds()),
        "max_fds": max_fds,
        "connections": len(ctx.broker.connected),
        "load1": f"{load1:.2f}",
        "load5": f"{load5:.2f}",
        "load15": f"{load15:.2f}",
    }


def node_info_list_form(info: Row) -> Row:
    """The list form (`GET /nodes/`) shows the memory figures human-readable."""
    out = dict(info)
    for key in ("memory_total", "memory_used"):
        if isinstance(out.get(key), int):
            out[key] = human_bytes(out[key])
    return out


# -- clients -----------------------------------------------------------------------------------


def connection_row(ctx: NodeContext, channel: Channel) -> Row:
    """EMQX's connection object; Erlang-only figures (mailbox, heap, reductions) are 0."""
    return {
        "client_id": channel.client_id or "",
        "username": undefined(channel.username),
        "ipaddress": channel.peer_host,
        "port": channel.peer_port,
        "node": ctx.node_name,
        "zone": "external",
        "peercert": "nossl",
        "proto_name": channel.proto_name,
        "proto_ver": channel.version,
        "clean_start": channel.clean_start,
        "keepalive": channel.keepalive,
        "is_bridge": channel.is_bridge,
        "is_super": False,  # no superuser notion here: never bypasses the ACL
        "mountpoint": "undefined",  # no mountpoints: topics are not prefixed
        "connected_at": local_datetime(channel.connected_at),
        "conn_mod": channel.listener,
        "recv_oct": channel.recv_oct,
        "recv_cnt": channel.recv_cnt,
        "recv_pkt": channel.recv_pkt,
        "recv_msg": channel.recv_msg,
        "send_oct": channel.send_oct,
        "send_cnt": channel.send_cnt,
        "send_pkt": channel.send_pkt,
        "send_msg": channel.send_msg,
        "send_pend": channel.link.buffered(),
        "mailbox_len": 0,
        "heap_size": 0,
        "reductions": 0,
    }


@query("connections")
async def connections(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    """Connected clients; `client_id` narrows to that one."""
    client_id = args.get("client_id")
    if client_id is not None:
        channel = ctx.broker.connected.get(str(client_id))
        return [connection_row(ctx, channel)] if isinstance(channel, Channel) else []
    return [connection_row(ctx, ch) for ch in channels(ctx)]


def channels(ctx: NodeContext) -> list[Channel]:
    """The node's connections as the channels they are (the Broker sees them as `ClientPort`s,
    which carry less than a connection row shows)."""
    return [ch for ch in list(ctx.broker.connected.values()) if isinstance(ch, Channel)]


@query("kick")
async def kick(ctx: NodeContext, args: dict[str, Any]) -> bool:
    client_id = str(args["client_id"])
    channel = ctx.broker.connected.get(client_id)
    if channel is not None:
        log.info("kicked %s (username %r) from %s:%s (management API)", channel.client_id,
                 channel.username, channel.peer_host, channel.peer_port)  # fmt: skip
    return ctx.broker.kick(client_id)


def session_row(ctx: NodeContext, session: Session) -> Row:
    settings = ctx.broker.settings
    return {
        "client_id": session.client_id,
        "username": undefined(session.username),
        "clean_start": session.clean_start,
        "binding": "local",
        "expiry_interval": session.expiry_interval,
        "created_at": local_datetime(session.created_at),
        "node": ctx.node_name,
        "subscriptions_count": len(session.subscriptions),
        "max_subscriptions": settings.max_subscriptions,  # 0 = unlimited
        "inflight_len": len(session.inflight),
        "max_inflight": session.max_inflight,
        "mqueue_len": len(session.queue),
        "max_mqueue": session.max_queued,
        "mqueue_dropped": session.mqueue_dropped,
        "awaiting_rel_len": len(session.awaiting_rel),
        "max_awaiting_rel": settings.max_awaiting_rel,
        "deliver_msg": session.deliver_msg,
        "enqueue_msg": session.enqueue_msg,
        "mailbox_len": 0,
        "heap_size": 0,
        "reductions": 0,
    }


@query("sessions")
async def sessions(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    """Every session on the node, online or offline; `client_id` narrows to that one."""
    table = ctx.broker.sessions
    client_id = args.get("client_id")
    if client_id is not None:
        session = table.get(str(client_id))
        return [session_row(ctx, session)] if session is not None else []
    return [session_row(ctx, s) for s in list(table.values())]


def _subscription_rows(ctx: NodeContext, session: Session) -> Rows:
    return [
        {
            "node": ctx.node_name,
            "topic": sub.topic_filter,
            "client_id": sub.client_id,
            "qos": sub.qos,
        }
        for sub in session.subscriptions.values()
    ]


@query("subscriptions")
async def subscriptions(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    table = ctx.broker.sessions
    client_id = args.get("client_id")
    if client_id is not None:
        session = table.get(str(client_id))
        return _subscription_rows(ctx, session) if session is not None else []
    return [row for s in list(table.values()) for row in _subscription_rows(ctx, s)]


@query("hlc_now")
async def hlc_now(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """A new stamp of this node's hybrid clock: the API node stamps a replicated write once
    (a ban, a table row, a retained clear), then sends it with that stamp to every node."""
    return ctx.broker.hlc.now().to_wire()


@query("retained_delete")
async def retained_delete(ctx: NodeContext, args: dict[str, Any]) -> bool:
    """Clear this node's copy of the retained message of `topic` (as an empty retained PUBLISH
    would, but delivering nothing to subscribers); the caller asks every node, with one stamp
    (`hlc`) for the clear. False: none."""
    topic = str(args["topic"])
    if ctx.broker.retained.get(topic) is None:
        return False
    clear = Message(topic, b"", retain=True, timestamp=ctx.broker.clock())
    clear.stamp = stamp_from_wire(args.get("hlc"))  # None: this node stamps it
    if not ctx.broker.retain(clear):
        return False  # a later write of the topic is here already
    log.info("retained message of %r deleted through the management API", topic)
    return True


@query("retained")
async def retained(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    """The retained messages this node holds (the cluster replicates them to every node), by
    topic; a payload that is not UTF-8 is given in base64 (`encoding`)."""
    now = time.time()
    rows: Rows = []
    for topic, message in sorted(ctx.broker.retained, key=lambda item: item[0]):
        if is_expired(message, now):
            continue
        try:
            payload, encoding = message.payload.decode("utf-8"), "plain"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(message.payload).decode("ascii"), "base64"
        rows.append(
            {
                "topic": topic,
                "qos": int(message.qos),
                "payload": payload,
                "encoding": encoding,
                "client_id": message.publisher or "undefined",
                "published_at": int(message.timestamp),
                "node": ctx.node_name,
            }
        )
    return rows


@query("local_routes")
async def local_routes(ctx: NodeContext, args: dict[str, Any]) -> list[str]:
    """The real filters with at least one local subscriber: this node's share of the routes."""
    return sorted(ctx.broker.router.filters())


# -- publish / subscribe -----------------------------------------------------------------------


def _payload(args: dict[str, Any]) -> bytes | None:
    payload = str(args.get("payload", ""))
    if args.get("encoding", "plain") == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        return payload.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON) is no UTF-8
        return None


@query("publish")
async def publish(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """Publish `payload` on each of `topics` as `client_id`; returns the number of deliveries.

    The message goes through the message_publish hooks as a client's would, and is routed from
    this node (so the cluster forwards it to the others).
    """
    broker = ctx.broker
    topics = [str(t) for t in args["topics"]]
    if not topics or not all(validate_topic_name(t) for t in topics):
        return error("bad_topic")
    data = _payload(args)
    if data is None:
        return error("bad_payload")
    qos = int(args.get("qos", 0))
    retain = bool(args.get("retain", False))
    if retain and not broker.settings.retain_available:
        return error("retain_not_supported")
    publisher = str(args.get("client_id") or "http_api")
    delivered = 0
    for topic in topics:
        message = Message(topic, data, qos, retain, {}, publisher, broker.clock(), broker.node_name)
        delivered += broker.publish(message, hooks=True).deliveries
    return delivered


@query("subscribe")
async def subscribe(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """Add subscriptions to the session of `client_id` (online or not), as if it subscribed:
    retained messages of each new normal filter are delivered (Retain Handling 0)."""
    broker = ctx.broker
    client_id = str(args["client_id"])
    topics = [str(t) for t in args["topics"]]
    qos = int(args.get("qos", 0))
    session = broker.sessions.get(client_id)
    if session is None:
        return error("session_not_found")
    if not topics or not all(validate_topic_filter(t) for t in topics):
        return error("bad_topic")
    channel = broker.connected.get(client_id)
    info = channel.info if channel is not None else None
    for filt in topics:
        group, real = parse_shared(filt)
        subscription = Subscription(client_id, filt, real, group, qos)
        existed = broker.subscribe(session, subscription, info)
        broker.send_retained(session, subscription, existed)
    return "ok"


@query("unsubscribe")
async def unsubscribe(ctx: NodeContext, args: dict[str, Any]) -> Any:
    broker = ctx.broker
    session = broker.sessions.get(str(args["client_id"]))
    if session is None:
        return error("session_not_found")
    topic = str(args["topic"])
    if not validate_topic_filter(topic):
        return error("bad_topic")
    broker.unsubscribe(session, topic)
    return "ok"


# -- plugins, listeners, metrics, stats, alarms -------------------------------------------------


@query("plugins")
async def plugins(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    if ctx.plugins is None:
        return []
    return [
        {
            "name": str(p["name"]),
            "version": str(p["version"]),
            "description": str(p["description"]),
            "active": bool(p["active"]),
        }
        for p in ctx.plugins.list()
    ]


#: The plugin manager's exceptions -> the API's reasons.
_PLUGIN_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (PluginNotFound, "not_found"),
    (PluginAlreadyLoaded, "already_started"),
    (PluginNotLoaded, "not_started"),
    (PluginLoadError, "load_failed"),
)


async def plugin_action(ctx: NodeContext, action: str, name: str) -> Any:
    if ctx.plugins is None:
        return error("not_found")
    try:
        result = getattr(ctx.plugins, action)(name)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        for cls, reason in _PLUGIN_ERRORS:
            if isinstance(exc, cls):
                log.warning("plugin %s %s on %s: %s (%s)", action, name, ctx.node_name, reason, exc)
                return {"error": reason, "detail": str(exc)}
        raise
    return "ok"


@query("plugin_load")
async def plugin_load(ctx: NodeContext, args: dict[str, Any]) -> Any:
    return await plugin_action(ctx, "load", str(args["name"]))


@query("plugin_unload")
async def plugin_unload(ctx: NodeContext, args: dict[str, Any]) -> Any:
    return await plugin_action(ctx, "unload", str(args["name"]))


@query("listeners")
async def listeners(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    return [
        {
            "protocol": stats.protocol,
            "listen_on": stats.listen_on,
            "acceptors": 1,  # one asyncio accept loop per listener
            # A cap, always: the listener's max_connections, else the open-file limit
            # (what bounds the connections of an unlimited listener).
            "max_conns": stats.max_conns if stats.max_conns > 0 else _max_fds(),
            "current_conns": stats.current,
            # Always an object (EMQX renders an empty proplist as []; see docs/api.md).
            "shutdown_count": dict(stats.shutdown_count),
        }
        for stats in ctx.listeners()
    ]


@query("metrics")
async def metrics(ctx: NodeContext, args: dict[str, Any]) -> dict[str, int]:
    counters = ctx.broker.metrics.counters
    return {name: int(counters[name]) for name in METRIC_NAMES}


@query("cluster_counters")
async def cluster_counters(ctx: NodeContext, args: dict[str, Any]) -> dict[str, int]:
    """The cluster's counters (`Metrics.cluster`: why forwards were dropped or held; then
    each of `Metrics.cluster_parts` as `<part>/<counter>`, e.g. `takeover/apart/folded`)."""
    metrics = ctx.broker.metrics
    out = {name: int(value) for name, value in metrics.cluster.items()}
    for part, counters in metrics.cluster_parts.items():
        out.update((f"{part}/{name}", int(value)) for name, value in counters.items())
    return out


@query("stats")
async def stats(ctx: NodeContext, args: dict[str, Any]) -> dict[str, int]:
    broker = ctx.broker
    broker.update_stats()
    broker.update_slow_stats()
    values = broker.stats.values
    return {name: int(values[name]) for name in STAT_NAMES}


@query("alarms")
async def alarms(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    if ctx.alarms is None:
        return []
    return [dict(alarm) for alarm in ctx.alarms.list()]


# -- banned ------------------------------------------------------------------------------------


@query("banned")
async def banned(ctx: NodeContext, args: dict[str, Any]) -> Rows:
    return [entry.to_dict() for entry in ctx.broker.banned.entries()]


@query("ban_add")
async def ban_add(ctx: NodeContext, args: dict[str, Any]) -> Row:
    """Store the ban (`args["entry"]`, a banned object) and disconnect the clients it matches.

    Idempotent, so it is safe to run on every node even when the cluster also replicates the
    table. Returns `{"entry": stored, "kicked": n}`.
    """
    entry = BanEntry.from_dict(dict(args["entry"]))
    if entry.kind not in BAN_KINDS:
        return error("bad_as")
    if entry.stamp is not None:  # stamped by the API node (`hlc_now`)
        ctx.broker.hlc.update(entry.stamp)
    stored = ctx.broker.banned.add(entry)
    kicked = ctx.broker.kick_banned()
    return {"entry": stored.to_dict(), "kicked": kicked}


@query("ban_delete")
async def ban_delete(ctx: NodeContext, args: dict[str, Any]) -> bool:
    """Lift the ban; with the API node's stamp (`hlc`), the removal is remembered so that an
    older copy of the ban from a node that was away does not bring it back."""
    stamp = stamp_from_wire(args.get("hlc"))
    if stamp is not None:
        ctx.broker.hlc.update(stamp)
    return ctx.broker.banned.remove(str(args["as"]), str(args["who"]), stamp)


@query("kick_banned")
async def kick_banned(ctx: NodeContext, args: dict[str, Any]) -> int:
    kicked = ctx.broker.kick_banned()
    if kicked:
        log.info("kicked %d banned client(s) on %s", kicked, ctx.node_name)
    return kicked


# -- logging -----------------------------------------------------------------------------------


@query("log_set_level")
async def log_set_level(ctx: NodeContext, args: dict[str, Any]) -> Any:
    """Set this node's (process's) log level: debug, info, warning, error or critical."""
    level = args.get("level")
    if not isinstance(level, str) or not set_level(level):
        return error("bad_level")
    log.warning("log level of %s set to %s", ctx.node_name, level.strip().lower())
    return "ok"
