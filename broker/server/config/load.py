"""The loader: TOML text -> a validated `BrokerConfig`, or every problem of the file at once.

Every mistake (unknown key, wrong type, out-of-range value) is reported once, on one line,
naming the file, the table and the key, because a broker that silently ignores a typo in
``max_inflight_messages`` is worse than one that refuses to start. The walk goes on past a
mistake, so one run names them all (`ConfigError.problems`), not one per attempt. The keys and
their checks come from the schema; what is left here is the walk over the document and the few
rules that tie two keys together.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from broker.server.config.checks import Check, ConfigError, Invalid, check_for, show
from broker.server.config.model import BrokerConfig, ListenerConfig, ManagementApp
from broker.server.config.schema import (
    APPS,
    TABLES,
    TOP,
    Key,
    foreign_plugin_keys,
    keys,
    section_names,
)

__all__ = ["apply_overrides", "load_config", "parse_config"]


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _suggest_section(name: str) -> str:
    close = difflib.get_close_matches(name, section_names(), n=1, cutoff=0.6)
    return f" (did you mean [{close[0]}]?)" if close else ""


def _check(key: Key) -> Check:
    if key.spec.kind == "apps":
        return _apps
    return check_for(key.annotation, key.spec)


def _apps(value: object, where: str) -> list[ManagementApp]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Invalid(f"{where} must be an array of tables [[management.apps]], got {show(value)}")
    schema = keys()[APPS]
    apps: list[ManagementApp] = []
    for item in value:
        fields: dict[str, Any] = {}
        for name, raw in item.items():
            if name not in schema:
                raise Invalid(
                    f"unknown key '{name}' in [[management.apps]]{_suggest(name, schema)}"
                )
            fields[schema[name].attr] = _check(schema[name])(
                raw, f"'{name}' in [[management.apps]]"
            )
        required = [name for name, key in schema.items() if key.default is dataclasses.MISSING]
        missing = [name for name in required if schema[name].attr not in fields]
        if missing:
            raise Invalid(f"[[management.apps]] needs {' and '.join(repr(k) for k in missing)}")
        if any(app.id == fields["id"] for app in apps):
            raise Invalid(f"[[management.apps]] defines app {fields['id']!r} twice")
        apps.append(ManagementApp(**fields))
    return apps


class _Loader:
    """Walks the parsed TOML document and fills a BrokerConfig."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.cfg = BrokerConfig()
        #: every problem found (the walk skips what it cannot take and goes on)
        self.problems: list[str] = []

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {message}")

    def note(self, message: str) -> None:
        self.problems.append(f"{self.source}: {message}")

    def table(self, doc: Mapping[str, object], key: str, section: str) -> dict[str, object]:
        value = doc[key]
        if not isinstance(value, dict):
            full = key if section == TOP else f"{section}.{key}"
            raise self.fail(f"'{key}' in [{section}] must be a table [{full}], got {show(value)}")
        return value

    def walk(self, values: Mapping[str, object], prefix: str) -> None:
        """Fill the table `prefix` ("" = top level) and the tables nested in it."""
        section = prefix or TOP
        schema = keys().get(section, {})
        own: dict[str, object] = {}
        for key, value in values.items():
            name = f"{prefix}.{key}" if prefix else key
            try:
                if key in schema:
                    own[key] = value
                elif prefix == "plugins" and name not in keys():
                    self.foreign_plugin(key, self.table(values, key, section))
                elif name in section_names():
                    self.walk(self.table(values, key, section), name)
                elif (not prefix and isinstance(value, dict)) or section not in keys():
                    # a table at the top, or anything under [listener]: sections, not keys
                    raise self.fail(f"unknown section [{name}]{_suggest_section(name)}")
                else:
                    raise self.fail(f"unknown key '{key}' in [{section}]{_suggest(key, schema)}")
            except ConfigError as exc:
                self.problems.append(str(exc))
        self.fill(section, own)

    def fill(self, section: str, values: Mapping[str, object]) -> None:
        schema = keys().get(section, {})
        checked: dict[str, Any] = {}
        for key, value in values.items():
            try:
                checked[key] = _check(schema[key])(value, f"'{key}' in [{section}]")
            except Invalid as exc:
                self.note(str(exc))
        if section.startswith("plugins."):
            self.cfg.plugins[section.removeprefix("plugins.")] = checked
            return
        for key, value in checked.items():
            target = schema[key].holder
            setattr(getattr(self.cfg, target) if target else self.cfg, schema[key].attr, value)

    def foreign_plugin(self, name: str, values: dict[str, object]) -> None:
        """Not a built-in: only `enabled` is checked here, the rest when the plugin loads."""
        section = f"plugins.{name}"
        for key in foreign_plugin_keys(name).values():
            if key.key in values:
                try:
                    _check(key)(values[key.key], f"'{key.key}' in [{section}]")
                except Invalid as exc:
                    self.note(str(exc))
        self.cfg.plugins[name] = dict(values)

    def check_rules(self) -> None:
        """The rules that tie two keys together."""
        cfg = self.cfg
        for attr in ("ssl", "wss"):
            self.check_tls(getattr(cfg, attr), TABLES[attr])
        hook = cfg.plugins.get("web_hook", {})
        if hook.get("enabled") and "url" not in hook:
            self.note("'url' in [plugins.web_hook] is required when the plugin is enabled")
        for name, top_key in (("auth_passwd", "password_file"), ("acl_file", "acl_file")):
            file = cfg.plugins.get(name, {}).get("file")
            if file and getattr(cfg, top_key) and file != getattr(cfg, top_key):
                self.note(
                    f"'{top_key}' at the top level and 'file' in [plugins.{name}] name different "
                    "files; set only one of them"
                )

    def check_tls(self, tls: ListenerConfig, section: str) -> None:
        if tls.enabled and not (tls.certfile and tls.keyfile):
            self.note(f"[{section}] is enabled: set 'certfile' and 'keyfile'")
        if tls.require_certificate and not tls.cafile:
            self.note(f"'require_certificate' in [{section}] needs 'cafile'")
        if tls.use_identity_as_username and not tls.require_certificate:
            self.note(
                f"'use_identity_as_username' in [{section}] needs 'require_certificate = true'"
            )


def parse_config(text: str, source: str = "<string>") -> BrokerConfig:
    """Parse and validate TOML text; ``source`` names the file in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    loader = _Loader(source)
    loader.walk(doc, "")
    loader.check_rules()
    if loader.problems:
        raise ConfigError(*loader.problems)
    return loader.cfg


def load_config(path: str | os.PathLike[str] | None) -> BrokerConfig:
    """Read one TOML file; ``None`` means "no file": built-in defaults."""
    if path is None:
        return BrokerConfig()
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read configuration: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 at byte {exc.start}") from None
    return parse_config(text, source)


def _override(table: str, key: str, value: object, flag: str) -> Any:
    """A command-line value, checked as the file's `key` in `table` is."""
    try:
        return _check(keys()[table][key])(value, flag)
    except Invalid as exc:
        raise ConfigError(f"command line: {exc}") from None


def apply_overrides(
    cfg: BrokerConfig,
    *,
    node_name: str | None = None,
    host: str | None = None,
    mqtt_port: int | None = None,
    ws_port: int | None = None,
    http_port: int | None = None,
    cluster_port: int | None = None,
    join: Iterable[str] | None = None,
    data_dir: str | None = None,
    advertise: str | None = None,
) -> BrokerConfig:
    """Return a copy of ``cfg`` with command-line values applied (flags win over the file).

    ``host`` sets the bind address of every listener; ``join`` replaces the file's list.
    The input config is not modified.
    """
    out = copy.deepcopy(cfg)
    if node_name is not None:
        out.node_name = _override("node", "name", node_name, "--node-name")
    if data_dir is not None:
        out.data_dir = _override("node", "data_dir", data_dir, "--data-dir")
    if host is not None:
        bind = _override("listener.tcp", "bind", host, "--host")
        for holder in TABLES:
            listener = getattr(out, holder)
            if isinstance(listener, ListenerConfig):
                listener.bind = bind
    ports = (
        (mqtt_port, "tcp", "--mqtt-port"),
        (ws_port, "ws", "--ws-port"),
        (http_port, "management", "--http-port"),
        (cluster_port, "cluster", "--cluster-port"),
    )
    for port, holder, flag in ports:
        if port is not None:
            getattr(out, holder).port = _override(TABLES[holder], "port", port, flag)
    if join is not None:
        out.cluster_join = _override("cluster", "join", list(join), "--join")
    if advertise is not None:
        out.cluster_advertise = _override("cluster", "advertise", advertise, "--advertise")
    return out
