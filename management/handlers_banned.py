"""Handlers of `/banned`: the cluster-wide banned list (client ids, usernames, IP addresses).

A ban is written on every running node (`ban_add` is idempotent, so this is right whether or not
the cluster also replicates the table) and each node disconnects its matching clients at once.
The list is the union of the nodes' tables, so a node that missed an update does not hide a ban.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from aiohttp import web

from broker.core.banned import BAN_KINDS
from management.auth import APP_ID_KEY
from management.common import (
    as_number,
    as_str,
    check_result,
    missing,
    node_call,
    paginate,
    params,
    reply,
    view_of,
)
from management.errors import BadParam


def _kind(p: dict[str, Any]) -> str:
    kind = as_str(p["as"], "as")
    if kind not in BAN_KINDS:
        raise BadParam("as", show_code=False)
    return kind


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    """A banned object as the API shows it: `at` and `until` integer Unix seconds (the store
    keeps floats)."""
    out = dict(entry)
    out.pop("hlc", None)  # the replication's order, not part of the API's object
    for key in ("at", "until"):
        if isinstance(out.get(key), int | float):
            out[key] = int(out[key])
    return out


async def list_banned(request: web.Request) -> web.Response:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for _node, entries in await view_of(request).call_all("banned", {}):
        for entry in entries:
            seen.setdefault((entry["as"], entry["who"]), entry)
    rows = sorted(seen.values(), key=lambda e: (e.get("at", 0), e["as"], e["who"]))
    return paginate(request, [_row(e) for e in rows])


async def create_banned(request: web.Request) -> web.Response:
    p = await params(request)
    missing(p, "who", "as")
    kind = _kind(p)
    who = as_str(p["who"], "who")
    if kind == "ip_address":
        try:
            who = str(ipaddress.ip_address(who.strip()))
        except ValueError:
            raise BadParam("ip_address", show_code=False) from None
    entry: dict[str, Any] = {
        "who": who,
        "as": kind,
        "reason": as_str(p.get("reason", ""), "reason"),
        "desc": as_str(p.get("desc", ""), "desc"),
        "by": as_str(p.get("by") or request.get(APP_ID_KEY, ""), "by"),
        "at": time.time(),
    }
    if p.get("until") not in (None, ""):
        entry["until"] = int(as_number(p["until"], "until"))  # Unix seconds, whole
    view = view_of(request)
    entry["hlc"] = await node_call(request, view.local_node, "hlc_now", {})  # one stamp
    answers = await view.call_all("ban_add", {"entry": entry})
    stored = entry
    for _node, answer in answers:
        stored = check_result(answer)["entry"]
        break  # the local node answers first
    return reply(_row(stored), status=201)


async def delete_banned(request: web.Request) -> web.Response:
    p = await params(request)
    missing(p, "as")
    kind = _kind(p)
    view = view_of(request)
    stamp = await node_call(request, view.local_node, "hlc_now", {})
    args = {"as": kind, "who": request.match_info["who"], "hlc": stamp}
    await view.call_all("ban_delete", args)
    return reply("ok")
