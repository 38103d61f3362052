"""The `[plugins.<name>]` keys of the built-in plugins, declared once like every other setting.

The loader checks a built-in plugin's table against these; a plugin installed from elsewhere
declares `Plugin.config_keys` and has its table checked when it loads. The plugins read their
defaults from here (`plugin_defaults`), so a default is written in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from broker.core.schema import setting

__all__ = ["PLUGIN_OPTIONS", "WEB_HOOK_EVENTS", "plugin_defaults"]

#: Events the web_hook plugin can post (EMQX's hook names).
WEB_HOOK_EVENTS = (
    "client.connected",
    "client.disconnected",
    "session.subscribed",
    "message.publish",
)


@dataclass(slots=True)
class PluginOptions:
    enabled: bool = setting(False, doc="true: loaded at start")


@dataclass(slots=True)
class FileOptions(PluginOptions):
    file: str = setting("", kind="nonempty", doc="the file (unset: the top-level key's file)")


@dataclass(slots=True)
class DelayedPublishOptions(PluginOptions):
    max_pending: int = setting(10000, lo=1, doc="delayed messages held at once")


@dataclass(slots=True)
class WebHookOptions(PluginOptions):
    url: str = setting("", kind="url", doc="where events are POSTed (required when enabled)")
    events: list[str] = setting(
        factory=lambda: list(WEB_HOOK_EVENTS), choices=WEB_HOOK_EVENTS, doc="events posted"
    )
    queue_size: int = setting(10000, lo=1, doc="events waiting to be posted; more are dropped")
    max_retries: int = setting(3, lo=0, hi=100, doc="retries of a failed POST")
    retry_backoff: float = setting(0.5, kind="seconds", doc="seconds before the first retry")
    timeout: float = setting(5.0, kind="positive", doc="seconds a POST may take")
    encode_payload: str = setting(
        "plain", choices=("plain", "base64"), doc="how message payloads are put in the JSON"
    )


@dataclass(slots=True)
class PresenceOptions(PluginOptions):
    qos: int = setting(0, lo=0, hi=2, doc="QoS of the presence messages")


#: Built-in plugin name -> the declaration of its table.
PLUGIN_OPTIONS: dict[str, type[PluginOptions]] = {
    "auth_passwd": FileOptions,
    "acl_file": FileOptions,
    "delayed_publish": DelayedPublishOptions,
    "web_hook": WebHookOptions,
    "presence": PresenceOptions,
    # credentials come from the REST API (replicated tables), not from the config
    "auth_clientid": PluginOptions,
    "auth_username": PluginOptions,
}


def plugin_defaults(name: str) -> dict[str, Any]:
    """The default of every key of a built-in plugin's table."""
    return asdict(PLUGIN_OPTIONS[name]())
