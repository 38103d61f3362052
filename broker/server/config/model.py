"""The configuration model: what the node is started with, every setting declared once.

Why this shape: operators come from mosquitto and EMQX, so the top-level keys use mosquitto's
names where the meaning is the same and the node/cluster/management sections follow EMQX. Each
field declared with `setting(...)` *is* the declaration of one TOML key (see
`broker.core.schema`); the core's own settings come from `CoreOptions`, which `BrokerConfig`
extends. Defaults match a config-less mosquitto 2.0 / EMQX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.core.schema import declare, setting
from broker.core.settings import CoreOptions

__all__ = [
    "API_FORMATS",
    "LISTENER_NAMES",
    "AlarmsConfig",
    "BrokerConfig",
    "ListenerConfig",
    "ManagementApp",
    "ManagementConfig",
]

#: The tables a `ListenerConfig` field may be limited to (`Spec.only`).
MQTT_LISTENERS = frozenset({"listener.tcp", "listener.ws", "listener.ssl", "listener.wss"})
WS_LISTENERS = frozenset({"listener.ws", "listener.wss"})
TLS_LISTENERS = frozenset({"listener.ssl", "listener.wss"})
#: `[management] api_format`: the seed document's REST shapes, or EMQX 3.x's.
API_FORMATS = ("seed", "emqx")


@dataclass(slots=True)
class ListenerConfig:
    """One socket the node binds: MQTT/TCP, MQTT/WebSocket, management HTTP or cluster."""

    bind: str = field(
        metadata=declare(kind="bind", doc='address to bind; "0.0.0.0" or "::" for all interfaces')
    )
    port: int = field(metadata=declare(lo=0, hi=65535, note="0 picks a free port", doc="TCP port"))
    enabled: bool = setting(True, doc="false: not started")
    path: str = setting(
        "/mqtt", kind="ws_path", only=WS_LISTENERS, doc="URL path of the WebSocket endpoint"
    )
    max_connections: int = setting(
        0, lo=0, note="0 = no per-listener limit", only=MQTT_LISTENERS,
        doc="clients connected at once on this listener; more are closed at accept",
    )  # fmt: skip
    max_connection_rate: float = setting(
        0.0, kind="rate", only=MQTT_LISTENERS,
        doc="new connections accepted per second (token bucket); 0 = unlimited",
    )  # fmt: skip
    certfile: str = setting(
        "", only=TLS_LISTENERS, doc="PEM server certificate (and chain); needed when enabled"
    )
    keyfile: str = setting("", only=TLS_LISTENERS, doc="PEM private key of the certificate")
    cafile: str = setting("", only=TLS_LISTENERS, doc="PEM CA file that checks client certificates")
    require_certificate: bool = setting(
        False, only=TLS_LISTENERS, doc="true: no valid client certificate, no handshake"
    )
    use_identity_as_username: bool = setting(
        False, only=TLS_LISTENERS,
        doc="true: the client certificate's CN is the username (needs require_certificate)",
    )  # fmt: skip
    tls_version: str = setting(
        "tlsv1.2", choices=("tlsv1.2", "tlsv1.3"), note="the minimum", only=TLS_LISTENERS,
        doc="the oldest TLS version accepted",
    )  # fmt: skip
    #: None = the top-level value, "" = the top-level file (mosquitto's per_listener_settings).
    allow_anonymous: bool | None = setting(
        None, only=MQTT_LISTENERS, doc="this listener's own allow_anonymous (unset: top level)"
    )
    password_file: str = setting(
        "", kind="nonempty", only=MQTT_LISTENERS,
        doc="this listener's own password file (unset: the top-level one)",
    )  # fmt: skip


#: [listener.<section>] -> the name its connections carry (`Channel.listener`, ClientInfo).
LISTENER_NAMES = {"tcp": "tcp", "ws": "ws", "ssl": "tls", "wss": "wss"}


@dataclass(slots=True)
class ManagementApp:
    """An API app from [[management.apps]]: HTTP Basic user `id`, password `secret`."""

    id: str = field(metadata=declare(kind="nonempty", doc="HTTP Basic user name (required)"))
    secret: str = field(
        metadata=declare(kind="nonempty", secret=True, doc="HTTP Basic password (required)")
    )
    name: str = setting("", doc="shown in the API and dashboard")
    desc: str = setting("", doc="shown in the API and dashboard")
    status: bool = setting(True, doc="false: the app is refused")
    expired: int | None = setting(
        None, lo=0, note="Unix seconds", doc="time from which the app is refused; unset = never"
    )


@dataclass(slots=True)
class ManagementConfig(ListenerConfig):
    """The management HTTP listener plus the API's own settings (EMQX's names)."""

    max_row_limit: int = setting(10000, lo=1, doc="default and largest `_limit` of paginated lists")
    metrics_auth: bool = setting(False, doc="true: GET /metrics needs an app's credentials")
    default_app: bool = setting(True, doc="false: remove EMQX's default app admin/public")
    dashboard: bool = setting(True, doc="serve the web dashboard under /dashboard/")
    max_body_size: int = setting(
        1_048_576, lo=1024, doc="bytes; a larger request body is answered 413"
    )
    api_format: str = setting(
        "seed", choices=API_FORMATS, doc="REST response shapes: the seed document's or EMQX 3.x's"
    )
    apps: list[ManagementApp] = setting(
        factory=list, kind="apps", doc="API apps, one [[management.apps]] table each"
    )


@dataclass(slots=True)
class AlarmsConfig:
    """High-water marks of the node's monitors (EMQX os_mon names); fractions of 1."""

    sysmem_high_watermark: float = setting(0.70, kind="fraction", doc="used / total system memory")
    procmem_high_watermark: float = setting(
        0.05, kind="fraction", doc="this process's RSS / total system memory"
    )
    cpu_high_watermark: float = setting(0.80, kind="positive", doc="load1 / number of cores")
    connections_high_watermark: int = setting(0, lo=0, note="0 = off", doc="connected clients")
    check_interval: float = setting(
        5.0, kind="seconds", note="0 = no timer", doc="seconds between two checks"
    )


def _tcp_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=1883)


def _ws_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=8083, path="/mqtt")


def _ssl_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=8883, enabled=False)


def _wss_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=8084, enabled=False, path="/mqtt")


def _management_default() -> ManagementConfig:
    return ManagementConfig(bind="127.0.0.1", port=8080)


def _cluster_default() -> ListenerConfig:
    return ListenerConfig(bind="127.0.0.1", port=7946)


@dataclass(slots=True)
class BrokerConfig(CoreOptions):
    """Everything the node needs to start: the core's options plus the edges' settings."""

    password_file: str = setting("", doc="mosquitto password file: loads the auth_passwd plugin")
    acl_file: str = setting("", doc="mosquitto ACL file: loads the acl_file plugin")
    sys_interval: float = setting(
        10.0, kind="seconds", doc="seconds between $SYS updates; 0 disables them"
    )
    persistence: bool = setting(
        False, doc="true: retained messages and persistent sessions in <data_dir>/broker.db"
    )
    #: mosquitto's autosave_interval: at most this much of acknowledged messages is lost.
    persistence_interval: int = setting(
        1000, lo=10, hi=3_600_000, note="milliseconds",
        doc="ms between flushes of what changed (the durability window)",
    )  # fmt: skip
    durable_acks: bool = setting(
        False,
        doc="true (with persistence): PUBACK/PUBREC of a message queued into a persistent "
        "session, and PUBREL/PUBCOMP of a persistent session's QoS 2 flow, only once that is "
        "committed to disk",
    )
    data_dir: str = setting(
        "./data", section="node", kind="nonempty", doc="directory for persistent state"
    )
    cookie: str = setting(
        "minibroker", section="node", kind="nonempty", secret=True,
        doc="shared secret of the cluster's nodes",
    )  # fmt: skip
    tcp: ListenerConfig = field(default_factory=_tcp_default)
    ws: ListenerConfig = field(default_factory=_ws_default)
    ssl: ListenerConfig = field(default_factory=_ssl_default)
    wss: ListenerConfig = field(default_factory=_wss_default)
    management: ManagementConfig = field(default_factory=_management_default)
    cluster: ListenerConfig = field(default_factory=_cluster_default)
    cluster_join: list[str] = setting(
        factory=list, section="cluster", key="join", kind="peers",
        doc='seeds "host:port"; "dns:NAME:PORT" = every A/AAAA record of NAME',
    )  # fmt: skip
    cluster_dns_refresh_interval: float = setting(
        30.0, section="cluster", key="dns_refresh_interval", kind="positive",
        doc="seconds between two resolutions of the dns: seeds",
    )  # fmt: skip
    cluster_advertise: str = setting(
        "", section="cluster", key="advertise", kind="advertise",
        doc='what peers dial: "host" or "host:port"; "" = the bind address and bound port',
    )  # fmt: skip
    cluster_forward_buffer: int = setting(
        50_000, section="cluster", key="forward_buffer", lo=0, hi=10_000_000,
        doc="QoS 1/2 messages held per peer until it acknowledges them (resent after a "
        "reconnect; dropped and counted when the peer leaves, stays dead past dead_hold, or "
        "the buffer is full)",
    )  # fmt: skip
    cluster_forward_buffer_bytes: int = setting(
        16 * 1024 * 1024, section="cluster", key="forward_buffer_bytes", lo=0,
        hi=4 * 1024 * 1024 * 1024, note="bytes", doc="bytes of forward_buffer per peer",
    )  # fmt: skip
    cluster_dead_hold: float = setting(
        60.0, section="cluster", key="dead_hold", kind="seconds", note="0 = drop at the verdict",
        doc="seconds a peer declared dead keeps its routes and held QoS 1/2 messages (resent "
        "if it comes back in time; then dropped and counted)",
    )  # fmt: skip
    cluster_sync_timeout: float = setting(
        5.0, section="cluster", key="sync_timeout", kind="seconds", note="0 = do not wait",
        doc="with seeds: the MQTT listeners open once a peer's route table is merged, or after "
        "this many seconds (a node must not acknowledge publishes it cannot route yet)",
    )  # fmt: skip
    cluster_tls_enable: bool = setting(
        False, section="cluster", key="tls_enable",
        doc="true: mutual TLS on the cluster link (every node of the cluster must set it)",
    )  # fmt: skip
    cluster_tls_certfile: str = setting(
        "", section="cluster", key="tls_certfile",
        doc="PEM certificate (and chain) of this node, signed by the cluster CA",
    )  # fmt: skip
    cluster_tls_keyfile: str = setting(
        "", section="cluster", key="tls_keyfile", doc="PEM private key of tls_certfile"
    )
    cluster_tls_cafile: str = setting(
        "", section="cluster", key="tls_cafile",
        doc="PEM cluster CA: a peer without a certificate it signed is refused",
    )  # fmt: skip
    cluster_tls_verify_hostname: bool = setting(
        False, section="cluster", key="tls_verify_hostname",
        doc="true: a peer's certificate must also name the host it is dialled at",
    )  # fmt: skip
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    #: plugin name -> its validated [plugins.<name>] table (only the keys the file sets)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def mqtt_listeners(self) -> dict[str, ListenerConfig]:
        """The MQTT listeners by the name their connections carry: tcp, ws, tls, wss."""
        return {name: getattr(self, section) for section, name in LISTENER_NAMES.items()}

    def listener_allow_anonymous(self) -> dict[str, bool]:
        """Listener name -> its own allow_anonymous, for the listeners that set one."""
        return {
            name: listener.allow_anonymous
            for name, listener in self.mqtt_listeners().items()
            if listener.allow_anonymous is not None
        }

    def listener_password_files(self) -> dict[str, str]:
        """Listener name -> its own password file, for the listeners that set one."""
        return {
            name: listener.password_file
            for name, listener in self.mqtt_listeners().items()
            if listener.password_file
        }
