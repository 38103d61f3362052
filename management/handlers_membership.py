"""Handlers of the cluster membership endpoints (our addition; emqx_ctl has them as
`cluster join | leave | force-leave`, EMQX 3.x's REST API does not).

They act on the node that serves the request, as emqx_ctl acts on its own node, through the
view's `ClusterAdmin` (`cluster.admin`); a node without [cluster] answers 400
`cluster_disabled`.
"""

from __future__ import annotations

from aiohttp import web

from broker.server.config import ConfigError, validate_host_port
from cluster.admin import ClusterAdmin
from cluster.rpc import RpcError
from management.common import CODE_BAD_PARAM, ApiError, as_str, missing, params, view_of


def _admin(request: web.Request) -> ClusterAdmin:
    admin = getattr(view_of(request), "admin", None)
    if not isinstance(admin, ClusterAdmin):
        raise ApiError(400, "cluster_disabled", CODE_BAD_PARAM)
    return admin


async def cluster_join(request: web.Request) -> web.Response:
    """Body `{"seed": "host:port"}`: a cluster address of any node of the cluster to join."""
    admin = _admin(request)
    p = await params(request)
    missing(p, "seed")
    try:
        seed = validate_host_port(as_str(p["seed"], "seed").strip())
    except ConfigError:
        raise ApiError(400, "bad_seed", CODE_BAD_PARAM) from None
    await admin.join(seed)
    return web.json_response("ok")


async def cluster_leave(request: web.Request) -> web.Response:
    """This node leaves the cluster and runs alone (already alone: nothing to do)."""
    await _admin(request).leave()
    return web.json_response("ok")


async def cluster_force_leave(request: web.Request) -> web.Response:
    """`{"node", "result"}`: "left" (it was alive and was asked to leave) or "removed" (it was
    dead or suspect and is now marked left everywhere)."""
    admin = _admin(request)
    node = request.match_info["node"]
    try:
        result = await admin.force_leave(node)
    except ValueError:
        raise ApiError(400, "bad_node", CODE_BAD_PARAM) from None
    except LookupError:
        raise ApiError(404, "not_found") from None
    except RpcError:
        raise ApiError(503, "nodedown") from None
    return web.json_response({"node": node, "result": result})
