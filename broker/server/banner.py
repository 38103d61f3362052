"""The start banner: what the node is, where it listens, and how clients authenticate.

Why: the first thing an operator reads after ``minibroker start``. It must show the addresses
that were *actually* bound (ephemeral ports resolved) and shout when anonymous clients can reach
the broker from outside the machine, the classic open-broker mistake.
"""

from __future__ import annotations

import ipaddress
from importlib import metadata

from broker.server.config import BrokerConfig

__all__ = ["broker_version", "format_banner", "is_loopback"]

_DEFAULT_COOKIE = BrokerConfig().cookie

# Listener kinds that do not accept MQTT clients; every other kind counts as MQTT (so an
# unexpected kind errs on the side of warning).
_NON_MQTT_PREFIXES = ("http", "management", "cluster")


def broker_version() -> str:
    """Installed distribution version, or the source tree's ``broker.__version__``."""
    try:
        return metadata.version("minibroker")
    except metadata.PackageNotFoundError:
        from broker import __version__

        return __version__


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume reachable from outside


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _address(kind: str, host: str, port: int, ws_path: str) -> str:
    hp = _hostport(host, port)
    scheme = kind.lower()
    if scheme == "mqtt/tcp":
        return f"mqtt://{hp}"
    if scheme in ("mqtt/tls", "mqtt/ssl", "mqtts"):
        return f"mqtts://{hp}"
    if scheme == "mqtt/ws":
        return f"ws://{hp}{ws_path}"
    if scheme == "mqtt/wss":
        return f"wss://{hp}{ws_path}"
    if scheme.startswith(("http", "management")):
        return f"http://{hp}"
    return hp


def _is_mqtt(kind: str) -> bool:
    return not kind.lower().startswith(_NON_MQTT_PREFIXES)


def format_banner(cfg: BrokerConfig, listeners: list[tuple[str, str, int]], auth_mode: str) -> str:
    """Render the multi-line banner; ``listeners`` are (kind, host, port) as actually bound."""
    http = [(host, port) for kind, host, port in listeners if kind.lower().startswith("http")]
    dashboard = bool(http) and cfg.management.dashboard
    width = max([len(kind) for kind, _, _ in listeners] + [len("dashboard")] * dashboard, default=0)
    lines = [f"minibroker {broker_version()} started, node {cfg.node_name}"]
    for kind, host, port in listeners:
        lines.append(f"  {kind.ljust(width)}  {_address(kind, host, port, cfg.ws.path)}")
    if not listeners:
        lines.append("  (no listeners enabled)")
    if dashboard:
        url = f"http://{_hostport(*http[0])}/dashboard/"
        lines.append(f"  {'dashboard'.ljust(width)}  {url}")
    lines.append(f"  auth: {auth_mode}")
    per_listener = cfg.listener_allow_anonymous()  # keyed tcp/ws/tls/wss, as "mqtt/<name>"
    exposed = [
        f"{kind} on {_hostport(host, port)}"
        for kind, host, port in listeners
        if _is_mqtt(kind)
        and not is_loopback(host)
        and per_listener.get(kind.lower().rpartition("/")[2], cfg.allow_anonymous)
    ]
    if exposed:
        lines.append(
            "WARNING: anonymous clients are allowed and MQTT is reachable from other hosts "
            f"({', '.join(exposed)}); set allow_anonymous = false and a password_file"
        )
    cluster_exposed = [
        (host, port)
        for kind, host, port in listeners
        if kind.lower().startswith("cluster") and not is_loopback(host)
    ]
    if cluster_exposed and cfg.cookie == _DEFAULT_COOKIE:
        lines.append(
            "WARNING: the cluster listens on a non-loopback address with the default cookie "
            f"{_DEFAULT_COOKIE!r}; set [node] cookie to a secret"
        )
    return "\n".join(lines)
