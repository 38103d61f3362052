"""``minibroker ctl``: EMQX's ``emqx_ctl`` verbs over the ``/api/v3`` REST API of any node.

Connection settings, first found wins: the flags ``--url``/``--app``/``--secret``, the
environment (``MINIBROKER_URL``, ``MINIBROKER_APP``, ``MINIBROKER_SECRET``), a TOML file given
with ``--config`` (keys ``url``, ``app``, ``secret``, at the top level or in ``[ctl]``), then the
defaults ``http://127.0.0.1:8080`` and ``admin``/``public``. The global flags may come before or
after the verb.

Output: aligned tables (or ``key  value`` lines for one object); ``--json`` prints the API's
answer as JSON for scripts. Exit codes: 0 success, 1 an error (a message on stderr: cannot reach
the node, authentication failed, not found, ...), 2 bad usage (argparse).

Plain ``urllib`` (blocking, one request at a time): a ctl command is a handful of requests.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CtlError", "add_ctl_parser", "ctl_main", "format_table"]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_APP = "admin"
DEFAULT_SECRET = "public"
LEVELS = ("debug", "info", "warning", "error", "critical")
BAN_KINDS = ("client_id", "username", "ip_address")


class CtlError(Exception):
    """A failure to report on stderr with exit code 1."""


# -- HTTP ----------------------------------------------------------------------------------------


def q(value: str) -> str:
    """A path parameter, percent-encoded (`/`, `#`, `+` included)."""
    return urllib.parse.quote(value, safe="")


def _is_envelope(answer: Any) -> bool:
    """The released EMQX 3.x envelope: an integer `code` with only data/meta/message beside it
    (a seed answer never has that shape except `{"code": 0}`, which unwraps to itself)."""
    if not isinstance(answer, dict) or "code" not in answer:
        return False
    code = answer["code"]
    keys_ok = set(answer) <= {"code", "data", "meta", "message"}
    return keys_ok and isinstance(code, int) and not isinstance(code, bool)


@dataclass(slots=True)
class Client:
    url: str
    app: str
    secret: str
    timeout: float = 10.0

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        what: str = "",
        auth: bool = True,
        raw: bool = False,
    ) -> Any:
        """`path` under the base URL; the decoded JSON answer (the text with `raw`).

        `what` names the thing looked up, for the 404 message ("client 'c1'").
        """
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            token = base64.b64encode(f"{self.app}:{self.secret}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, what) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            raise CtlError(f"cannot reach {self.url}: {why}") from None
        except (OSError, TimeoutError) as exc:
            raise CtlError(f"cannot reach {self.url}: {exc}") from None
        if raw:
            return text
        try:
            answer = json.loads(text)
        except ValueError:
            raise CtlError(f"{self.url} did not answer JSON (is it a minibroker node?)") from None
        return self._unwrap(answer, what)

    def _unwrap(self, answer: Any, what: str) -> Any:
        """The seed-format answer, whichever format the node serves.

        A node with `api_format = "emqx"` wraps every answer in `{"code": 0, "data"[, "meta"]}`
        and reports errors as HTTP 200 `{"code": N, "message"}`: unwrap here, once, so every
        verb reads seed shapes (pages back to `{"items", "meta"}`).
        """
        if not _is_envelope(answer):
            return answer
        code, message = answer["code"], str(answer.get("message", ""))
        if code != 0:
            if message in ("not_found", "session_not_found"):  # seed: 404
                raise CtlError(f"not found: {what}" if what else "not found")
            if message == "nodedown":  # seed: 503
                raise CtlError(f"node down: {what}" if what else "node down")
            raise CtlError(f"{message or 'error'} (code {code})")
        if "meta" in answer:
            return {"items": answer.get("data", []), "meta": answer["meta"]}
        return answer.get("data", answer)

    def _http_error(self, exc: urllib.error.HTTPError, what: str) -> CtlError:
        message = ""
        try:
            body = json.loads(exc.read().decode("utf-8", "replace"))
            if isinstance(body, dict):
                message = str(body.get("message", ""))
        except (ValueError, OSError):
            pass
        if exc.code == 401:
            return CtlError(f"authentication failed for app {self.app!r} at {self.url}")
        if exc.code == 404:
            return CtlError(f"not found: {what}" if what else "not found")
        if exc.code == 503:
            return CtlError(f"node down: {what}" if what else "node down")
        return CtlError(f"{message or exc.reason} (HTTP {exc.code})")

    def items(self, path: str) -> list[Any]:
        """Every row of a paginated list."""
        answer = self.request("GET", path)
        return list(answer["items"]) if isinstance(answer, dict) else list(answer)

    def local_node(self) -> str:
        text = self.request("GET", "/status", auth=False, raw=True)
        match = re.match(r"Node (\S+) is started", text)
        if match is None:
            raise CtlError(f"{self.url}/status: unexpected answer {text!r}")
        return match.group(1)


# -- output --------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A header line and one line per row, columns padded to their widest cell."""
    cells = [list(columns)] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return "\n".join(lines)


def format_object(obj: dict[str, Any]) -> str:
    width = max((len(k) for k in obj), default=0)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}".rstrip() for k, v in obj.items())


@dataclass(slots=True)
class Output:
    data: Any
    text: str


def _table(data: list[dict[str, Any]], columns: Sequence[str]) -> Output:
    return Output(data, format_table(data, columns))


def _objects(data: list[dict[str, Any]], what: str) -> Output:
    if not data:
        raise CtlError(f"not found: {what}")
    return Output(data, "\n\n".join(format_object(row) for row in data))


def _ok(data: Any, text: str) -> Output:
    return Output(data, text)


def _pivot(per_node: list[tuple[str, dict[str, Any]]]) -> Output:
    """name -> value per node (metrics, stats): one column per node."""
    nodes = [node for node, _ in per_node]
    names: list[str] = []
    for _node, values in per_node:
        names.extend(n for n in values if n not in names)
    rows = [{"name": n, **{node: values.get(n) for node, values in per_node}} for n in names]
    data = [{"node": node, **values} for node, values in per_node]
    return Output(data, format_table(rows, ["name", *nodes]))


def _until(value: str) -> float:
    """`--until`: Unix seconds, or a duration from now (`90s`, `10m`, `2h`, `7d`)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if match:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return time.time() + float(match.group(1)) * scale
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither Unix seconds nor a duration like 10m, 2h, 7d"
        ) from None


def _text(value: str) -> str:
    """argparse type of a client id, filter, plugin name or ban target: not empty (an empty one
    would name the list itself in the URL)."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _seconds(value: str) -> float:
    """argparse type of `--timeout`: a positive, finite number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _when(until: Any) -> str:
    """A ban's end as local time; a value the platform cannot convert is shown as is."""
    if until is None:
        return "forever"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
    except (OverflowError, OSError, ValueError, TypeError):
        return str(until)


# -- commands ------------------------------------------------------------------------------------

Command = Callable[[Client, argparse.Namespace], Output]

CONNECTION_COLUMNS = (
    "client_id",
    "username",
    "ipaddress",
    "port",
    "node",
    "proto_ver",
    "keepalive",
    "connected_at",
)
SESSION_COLUMNS = (
    "client_id",
    "node",
    "clean_start",
    "expiry_interval",
    "subscriptions_count",
    "inflight_len",
    "mqueue_len",
    "created_at",
)


def cmd_status(c: Client, a: argparse.Namespace) -> Output:
    text = str(c.request("GET", "/status", auth=False, raw=True))
    match = re.match(r"Node (\S+) is started", text)
    return _ok({"node": match.group(1) if match else "", "status": text}, text)


def cmd_cluster_status(c: Client, a: argparse.Namespace) -> Output:
    nodes = c.request("GET", "/api/v3/nodes/")
    out = _table(nodes, ("node", "node_status", "version", "uptime", "connections", "memory_used"))
    running = sum(1 for n in nodes if n.get("node_status") == "Running")
    stopped = len(nodes) - running
    summary = f"{running} running node(s)" + (f", {stopped} stopped" if stopped else "")
    out.text = f"Cluster status: {summary}\n{out.text}"
    return out


def _membership(c: Client, a: argparse.Namespace, action: str, body: Any = None) -> Any:
    """POST /cluster/<action>; the refusals that need words of their own."""
    try:
        node, seed = getattr(a, "node", ""), getattr(a, "seed", "")
        return c.request("POST", f"/api/v3/cluster/{action}", body, what=f"node {node!r}")
    except CtlError as exc:
        for reason, text in (
            ("cluster_disabled", "this node runs without [cluster] (cluster_disabled)"),
            ("bad_seed", f"bad seed {seed!r}: expected HOST:PORT (a cluster port)"),
            ("bad_node", f"{node} is the node you talk to: use `cluster leave`"),
        ):
            if reason in str(exc):
                raise CtlError(text) from None
        raise


def cmd_cluster_join(c: Client, a: argparse.Namespace) -> Output:
    answer = _membership(c, a, "join", {"seed": a.seed})
    return _ok(answer, f"ok: {c.local_node()} joins the cluster through {a.seed}")


def cmd_cluster_leave(c: Client, a: argparse.Namespace) -> Output:
    node, answer = c.local_node(), _membership(c, a, "leave")
    return _ok(answer, f"ok: {node} left the cluster; it runs alone until `cluster join`")


def cmd_cluster_force_leave(c: Client, a: argparse.Namespace) -> Output:
    left = _membership(c, a, f"force_leave/{q(a.node)}").get("result") == "left"
    how = "was asked to leave and left" if left else "is marked left"
    return _ok({"node": a.node, "result": "left" if left else "removed"}, f"ok: {a.node} {how}")


def cmd_nodes(c: Client, a: argparse.Namespace) -> Output:
    nodes = c.request("GET", "/api/v3/nodes/")
    columns = ("node", "node_status", "version", "uptime", "connections", "load1", "memory_used")
    return _table(nodes, columns)


def cmd_version(c: Client, a: argparse.Namespace) -> Output:
    """This command's version, then each node's (they may differ during a rolling upgrade)."""
    from broker.server.banner import broker_version

    brokers = c.request("GET", "/api/v3/brokers/")
    nodes = {b["node"]: b["version"] for b in brokers}
    lines = [f"minibroker ctl {broker_version()}"]
    lines += [f"{node}: minibroker {version}" for node, version in nodes.items()]
    return _ok({"ctl": broker_version(), "nodes": nodes}, "\n".join(lines))


def cmd_clients_list(c: Client, a: argparse.Namespace) -> Output:
    return _table(c.items("/api/v3/connections/"), CONNECTION_COLUMNS)


def cmd_clients_show(c: Client, a: argparse.Namespace) -> Output:
    rows = c.request("GET", f"/api/v3/connections/{q(a.client_id)}")
    return _objects(rows, f"client {a.client_id!r}")


def cmd_clients_kick(c: Client, a: argparse.Namespace) -> Output:
    answer = c.request(
        "DELETE", f"/api/v3/connections/{q(a.client_id)}", what=f"client {a.client_id!r}"
    )
    return _ok(answer, f"ok: client {a.client_id!r} kicked")


def cmd_sessions_list(c: Client, a: argparse.Namespace) -> Output:
    return _table(c.items("/api/v3/sessions/"), SESSION_COLUMNS)


def cmd_sessions_show(c: Client, a: argparse.Namespace) -> Output:
    rows = c.request("GET", f"/api/v3/sessions/{q(a.client_id)}")
    return _objects(rows, f"session {a.client_id!r}")


def cmd_routes_list(c: Client, a: argparse.Namespace) -> Output:
    return _table(c.items("/api/v3/routes/"), ("topic", "node"))


def cmd_routes_show(c: Client, a: argparse.Namespace) -> Output:
    rows = c.request("GET", f"/api/v3/routes/{q(a.filter)}")
    if not rows:
        raise CtlError(f"not found: route {a.filter!r}")
    return _table(rows, ("topic", "node"))


SUB_COLUMNS = ("client_id", "topic", "qos", "node")


def cmd_subs_list(c: Client, a: argparse.Namespace) -> Output:
    return _table(c.items("/api/v3/subscriptions/"), SUB_COLUMNS)


def cmd_subs_show(c: Client, a: argparse.Namespace) -> Output:
    return _table(c.request("GET", f"/api/v3/subscriptions/{q(a.client_id)}"), SUB_COLUMNS)


def cmd_subs_add(c: Client, a: argparse.Namespace) -> Output:
    body = {"client_id": a.client_id, "topic": a.filter, "qos": a.qos}
    answer = c.request("POST", "/api/v3/mqtt/subscribe", body, what=f"session {a.client_id!r}")
    return _ok(answer, f"ok: {a.client_id!r} subscribed to {a.filter!r} (qos {a.qos})")


def cmd_subs_del(c: Client, a: argparse.Namespace) -> Output:
    body = {"client_id": a.client_id, "topic": a.filter}
    answer = c.request("POST", "/api/v3/mqtt/unsubscribe", body, what=f"session {a.client_id!r}")
    return _ok(answer, f"ok: {a.client_id!r} unsubscribed from {a.filter!r}")


def cmd_plugins_list(c: Client, a: argparse.Namespace) -> Output:
    answer = c.request("GET", "/api/v3/plugins/")
    rows = [{"node": entry["node"], **plugin} for entry in answer for plugin in entry["plugins"]]
    return Output(answer, format_table(rows, ("node", "name", "version", "active", "description")))


def _plugin_action(c: Client, a: argparse.Namespace, action: str) -> Output:
    node = a.node or c.local_node()
    path = f"/api/v3/nodes/{q(node)}/plugins/{q(a.name)}/{action}"
    try:
        answer = c.request("PUT", path, what=f"plugin {a.name!r} on node {node!r}")
    except CtlError as exc:
        if "already_started" in str(exc):
            raise CtlError(f"plugin {a.name!r} is already loaded on {node}") from None
        if "not_started" in str(exc):
            raise CtlError(f"plugin {a.name!r} is not loaded on {node}") from None
        if str(exc).startswith(("not found", "node down", "authentication failed", "cannot reach")):
            raise  # not the plugin's answer: the node, the app or the path
        # the plugin refused: the node's answer is the reason ("no password file: ...")
        raise CtlError(f"cannot {action} plugin {a.name!r} on {node}: {exc}") from None
    return _ok(answer, f"ok: plugin {a.name!r} {action}ed on {node}")


def cmd_plugins_load(c: Client, a: argparse.Namespace) -> Output:
    return _plugin_action(c, a, "load")


def cmd_plugins_unload(c: Client, a: argparse.Namespace) -> Output:
    return _plugin_action(c, a, "unload")


def cmd_banned_list(c: Client, a: argparse.Namespace) -> Output:
    rows = c.items("/api/v3/banned/")
    shown = [{**row, "until": _when(row.get("until"))} for row in rows]
    return Output(rows, format_table(shown, ("as", "who", "reason", "by", "until")))


def cmd_banned_add(c: Client, a: argparse.Namespace) -> Output:
    body: dict[str, Any] = {"who": a.who, "as": a.kind, "reason": a.reason}
    if a.until is not None:
        body["until"] = a.until
    answer = c.request("POST", "/api/v3/banned/", body)
    return _ok(answer, f"ok: {a.kind} {a.who!r} banned")


def cmd_banned_del(c: Client, a: argparse.Namespace) -> Output:
    answer = c.request(
        "DELETE", f"/api/v3/banned/{q(a.who)}?as={q(a.kind)}", what=f"{a.kind} {a.who!r}"
    )
    return _ok(answer, f"ok: ban on {a.kind} {a.who!r} lifted")


def cmd_listeners(c: Client, a: argparse.Namespace) -> Output:
    answer = c.request("GET", "/api/v3/listeners/")
    rows = [
        {"node": entry["node"], **listener} for entry in answer for listener in entry["listeners"]
    ]
    return Output(
        answer, format_table(rows, ("node", "protocol", "listen_on", "max_conns", "current_conns"))
    )


def cmd_metrics(c: Client, a: argparse.Namespace) -> Output:
    answer = c.request("GET", "/api/v3/metrics/")
    out = _pivot([(entry["node"], entry["metrics"]) for entry in answer])
    out.data = answer
    return out


def cmd_stats(c: Client, a: argparse.Namespace) -> Output:
    answer = c.request("GET", "/api/v3/stats/")
    out = _pivot([(e["node"], {k: v for k, v in e.items() if k != "node"}) for e in answer])
    out.data = answer
    return out


def cmd_log_set_level(c: Client, a: argparse.Namespace) -> Output:
    body = {"level": a.level}
    if a.node:
        answer = c.request(
            "PUT", f"/api/v3/nodes/{q(a.node)}/log_level", body, what=f"node {a.node!r}"
        )
        return _ok(answer, f"ok: log level of {a.node} set to {a.level}")
    answer = c.request("PUT", "/api/v3/log_level", body)
    return _ok(answer, f"ok: log level of every node set to {a.level}")


# -- parser --------------------------------------------------------------------------------------


def _globals(parser: argparse.ArgumentParser) -> None:
    """The connection/output flags; SUPPRESS so that a flag given after the verb is kept and an
    absent one does not overwrite the same flag given before it."""
    s = argparse.SUPPRESS
    parser.add_argument(
        "--url",
        default=s,
        metavar="URL",
        help=f"management API base URL ({DEFAULT_URL}; env MINIBROKER_URL)",
    )
    parser.add_argument(
        "--app", default=s, metavar="ID", help=f"AppID ({DEFAULT_APP}; env MINIBROKER_APP)"
    )
    parser.add_argument(
        "--secret",
        default=s,
        metavar="SECRET",
        help=f"AppSecret ({DEFAULT_SECRET}; env MINIBROKER_SECRET)",
    )
    parser.add_argument(
        "--config", default=s, metavar="FILE", help="TOML file with url, app and secret"
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=s, metavar="S", help="HTTP timeout in seconds (10)"
    )
    parser.add_argument(
        "--json", action="store_true", default=s, help="print the API's answer as JSON"
    )


def add_ctl_parser(sub: Any) -> None:
    """Add `ctl` (the emqx_ctl verbs) to the CLI's subparsers."""
    ctl = sub.add_parser("ctl", help="manage a running node or cluster over its REST API")
    _globals(ctl)
    verbs = ctl.add_subparsers(dest="ctl_command", required=True, metavar="VERB")

    def leaf(parent: Any, name: str, fn: Command, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_)
        _globals(p)
        p.set_defaults(ctl_func=fn)
        return p

    def group(name: str, help_: str) -> Any:
        p = verbs.add_parser(name, help=help_)
        return p.add_subparsers(dest=f"ctl_{name}", required=True, metavar="ACTION")

    leaf(verbs, "status", cmd_status, "is the node running")
    leaf(verbs, "nodes", cmd_nodes, "the nodes of the cluster: status, version, load")
    leaf(verbs, "version", cmd_version, "the version of this command and of every node")
    g = group("cluster", "the cluster")
    leaf(g, "status", cmd_cluster_status, "the running nodes")
    leaf(g, "join", cmd_cluster_join, "join the cluster of a seed").add_argument("seed")
    leaf(g, "leave", cmd_cluster_leave, "this node leaves (it keeps running)")
    leaf(g, "force-leave", cmd_cluster_force_leave, "remove a node").add_argument("node")

    g = group("clients", "connected clients")
    leaf(g, "list", cmd_clients_list, "every connection in the cluster")
    leaf(g, "show", cmd_clients_show, "one connection").add_argument(
        "client_id", metavar="ID", type=_text
    )
    leaf(g, "kick", cmd_clients_kick, "disconnect a client").add_argument(
        "client_id", metavar="ID", type=_text
    )

    g = group("sessions", "sessions (online and offline)")
    leaf(g, "list", cmd_sessions_list, "every session in the cluster")
    leaf(g, "show", cmd_sessions_show, "one session").add_argument(
        "client_id", metavar="ID", type=_text
    )

    g = group("routes", "the cluster route table")
    leaf(g, "list", cmd_routes_list, "every route")
    leaf(g, "show", cmd_routes_show, "the routes of a filter").add_argument(
        "filter", metavar="FILTER", type=_text
    )

    g = group("subscriptions", "subscriptions")
    leaf(g, "list", cmd_subs_list, "every subscription in the cluster")
    leaf(g, "show", cmd_subs_show, "the subscriptions of a client").add_argument(
        "client_id", metavar="ID", type=_text
    )
    p = leaf(g, "add", cmd_subs_add, "subscribe a session to a filter")
    p.add_argument("client_id", metavar="ID", type=_text)
    p.add_argument("filter", metavar="FILTER", type=_text)
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    p = leaf(g, "del", cmd_subs_del, "unsubscribe a session from a filter")
    p.add_argument("client_id", metavar="ID", type=_text)
    p.add_argument("filter", metavar="FILTER", type=_text)

    g = group("plugins", "plugins")
    leaf(g, "list", cmd_plugins_list, "the plugins of every node")
    for name, fn in (("load", cmd_plugins_load), ("unload", cmd_plugins_unload)):
        p = leaf(g, name, fn, f"{name} a plugin (on the node answering, or --node)")
        p.add_argument("name", metavar="NAME", type=_text)
        p.add_argument("--node", metavar="NODE", default=None)

    g = group("banned", "the banned list")
    leaf(g, "list", cmd_banned_list, "every ban")
    p = leaf(g, "add", cmd_banned_add, "ban a client id, username or IP address")
    p.add_argument("--as", dest="kind", choices=BAN_KINDS, required=True)
    p.add_argument("who", metavar="WHO", type=_text)
    p.add_argument("--reason", default="", metavar="TEXT")
    p.add_argument(
        "--until",
        type=_until,
        default=None,
        metavar="WHEN",
        help="Unix seconds, or a duration from now: 10m, 2h, 7d (default: forever)",
    )
    p = leaf(g, "del", cmd_banned_del, "lift a ban")
    p.add_argument("--as", dest="kind", choices=BAN_KINDS, required=True)
    p.add_argument("who", metavar="WHO", type=_text)

    leaf(verbs, "listeners", cmd_listeners, "the listeners of every node")
    leaf(verbs, "metrics", cmd_metrics, "the metrics (counters) of every node")
    leaf(verbs, "stats", cmd_stats, "the stats (gauges) of every node")

    g = group("log", "logging")
    p = leaf(g, "set-level", cmd_log_set_level, "set the log level (every node, or --node)")
    p.add_argument("level", choices=LEVELS, metavar="LEVEL", help=", ".join(LEVELS))
    p.add_argument("--node", metavar="NODE", default=None)


# -- main ----------------------------------------------------------------------------------------


def _file_settings(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise CtlError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CtlError(f"{path}: invalid TOML: {exc}") from None
    table = doc.get("ctl", doc)
    if not isinstance(table, dict):
        raise CtlError(f"{path}: [ctl] must be a table")
    out: dict[str, str] = {}
    for key in ("url", "app", "secret"):
        if key in table:
            if not isinstance(table[key], str):
                raise CtlError(f"{path}: {key!r} must be a string")
            out[key] = table[key]
    return out


def _check_url(url: str) -> None:
    """A URL urllib would choke on (a bad port, an unclosed IPv6 bracket) is a usage mistake
    to report in one line, not an exception from deep inside http.client."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise CtlError(f"bad URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise CtlError(f"bad URL {url!r}: expected http://HOST[:PORT]")


def make_client(args: argparse.Namespace) -> Client:
    """Flags, then the environment, then --config, then the defaults."""
    config = getattr(args, "config", None)
    from_file = _file_settings(config) if config else {}

    def pick(key: str, default: str) -> str:
        flag = getattr(args, key, None)
        if flag is not None:
            return str(flag)
        env = os.environ.get(f"MINIBROKER_{key.upper()}")
        if env:
            return env
        return from_file.get(key, default)

    url = pick("url", DEFAULT_URL)
    if "://" not in url:
        url = "http://" + url
    _check_url(url)
    return Client(
        url,
        pick("app", DEFAULT_APP),
        pick("secret", DEFAULT_SECRET),
        float(getattr(args, "timeout", 10.0)),
    )


def ctl_main(args: argparse.Namespace) -> int:
    """Run one ctl verb; 0 on success, 1 with a message on stderr otherwise."""
    fn: Command = args.ctl_func
    try:
        out = fn(make_client(args), args)
    except CtlError as exc:
        print(f"minibroker ctl: error: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(out.data, indent=2, ensure_ascii=False))
    elif out.text:
        print(out.text)
    return 0
