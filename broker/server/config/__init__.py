"""Broker configuration: one TOML file, validated up front, every setting declared once.

The package, by concern: `model` (the dataclasses, whose fields are the declarations; the
core's part is `broker.core.settings.CoreOptions`), `plugin_options` (the built-in plugins'
tables), `checks` (the value checks), `schema` (tables and keys read off the model), `load`
(TOML -> BrokerConfig, command-line overrides), `reference` (the Markdown reference in the
README, printed by `minibroker config-reference`) and `running` (the configuration in force,
secrets masked).

File layout::

    allow_anonymous = true        # and the other mosquitto-named keys at the top level
    [node]            name, data_dir, cookie
    [listener.tcp]    MQTT over TCP (1883); [listener.ws] over WebSocket (8083)
    [listener.ssl]    MQTT over TLS (8883, off); [listener.wss] over WebSocket over TLS (8084, off)
    [management]      the HTTP API (8080), plus [[management.apps]] (repeatable)
    [cluster]         the cluster port (7946), seeds, advertised address
    [alarms]          high-water marks of the node's monitors
    [plugins.<name>]  enabled, plus each plugin's own keys
"""

from __future__ import annotations

from broker.core.settings import SHARED_SUBSCRIPTION_STRATEGIES, parse_publish_limit
from broker.server.config.checks import ConfigError, validate_host_port
from broker.server.config.load import apply_overrides, load_config, parse_config
from broker.server.config.model import (
    API_FORMATS,
    LISTENER_NAMES,
    AlarmsConfig,
    BrokerConfig,
    ListenerConfig,
    ManagementApp,
    ManagementConfig,
)
from broker.server.config.plugin_options import PLUGIN_OPTIONS, WEB_HOOK_EVENTS, plugin_defaults
from broker.server.config.running import MASK, running_config

__all__ = [
    "API_FORMATS",
    "LISTENER_NAMES",
    "MASK",
    "PLUGIN_OPTIONS",
    "SHARED_SUBSCRIPTION_STRATEGIES",
    "WEB_HOOK_EVENTS",
    "AlarmsConfig",
    "BrokerConfig",
    "ConfigError",
    "ListenerConfig",
    "ManagementApp",
    "ManagementConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "parse_publish_limit",
    "plugin_defaults",
    "running_config",
    "validate_host_port",
]
