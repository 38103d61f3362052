"""acl_file: topic access control from a mosquitto ACL file.

File syntax (mosquitto's)::

    # topic lines before any `user` line apply to clients without a username
    topic read $SYS/#
    user alice
    topic readwrite alice/#          # access: read | write | readwrite (default) | deny
    topic deny alice/secret
    pattern write clients/%c/#       # every client; %c = client id, %u = username

Decisions, as mosquitto 2.0 makes them: a matching `deny` line refuses; otherwise any matching
line granting the access allows; otherwise the request is refused (default deny once a file is
loaded). "publish" needs write access to the topic, "subscribe" read access to the filter; a
wildcard in a subscription filter only matches the same wildcard (or a wider one) in the ACL,
so `topic read a/b` does not allow subscribing to `a/+`. A pattern is skipped for a client
whose %c or %u value holds `+` or `#`, or when %u is used and the client has no username.
A publish to ``$delayed/<seconds>/<topic>`` is checked against `<topic>`, the topic that
will in the end be published (so delayed publish is no way around the ACL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from broker.core.hooks import ClientInfo
from broker.core.topics import topic_matches, validate_topic_filter
from broker.plugins.base import Plugin, PluginContext, PluginLoadError
from broker.plugins.delayed_publish import parse_delayed

__all__ = ["Acl", "AclFilePlugin", "AclRule", "filter_within", "parse_acl"]

log = logging.getLogger(__name__)

READ, WRITE = 1, 2
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}
_ACTIONS = {"publish": WRITE, "subscribe": READ}


@dataclass(frozen=True, slots=True)
class AclRule:
    topic: str
    access: int  # READ | WRITE bits; 0 = deny


@dataclass(slots=True)
class Acl:
    anonymous: list[AclRule]
    users: dict[str, list[AclRule]]
    patterns: list[AclRule]

    def check(self, client_id: str, username: str | None, access: int, topic: str) -> bool:
        rules = list(self.anonymous if username is None else self.users.get(username, ()))
        for pattern in self.patterns:
            topic_filter = _expand(pattern.topic, client_id, username)
            if topic_filter is not None:
                rules.append(AclRule(topic_filter, pattern.access))
        # A topic name: plain matching. A subscription filter must lie within the rule's
        # filter, or `topic read a/+` would let a client subscribe to `a/#`.
        matches = topic_matches if access == WRITE else filter_within
        matching = [rule for rule in rules if matches(rule.topic, topic)]
        if any(rule.access == 0 for rule in matching):
            return False
        return any(rule.access & access for rule in matching)


def filter_within(rule: str, sub: str) -> bool:
    """Is every topic that filter `sub` matches also matched by filter `rule`?

    For a topic name this is `topic_matches(rule, sub)`; a wildcard in `sub` is only covered by
    the same wildcard (or `#`) at that level of `rule`.
    """
    if sub.startswith("$") and rule.split("/", 1)[0] in ("+", "#"):
        return False  # MQTT-4.7.2-1: a wildcard first level never matches a $ topic
    rule_levels = rule.split("/")
    sub_levels = sub.split("/")
    for i, level in enumerate(rule_levels):
        if level == "#":
            return True
        if i >= len(sub_levels):
            return False
        sub_level = sub_levels[i]
        if sub_level == "#" or (level != "+" and level != sub_level):
            return False
    return len(rule_levels) == len(sub_levels)


def _expand(topic: str, client_id: str, username: str | None) -> str | None:
    if "%u" in topic:
        if username is None or "+" in username or "#" in username:
            return None
        topic = topic.replace("%u", username)
    if "%c" in topic:
        if "+" in client_id or "#" in client_id:
            return None
        topic = topic.replace("%c", client_id)
    return topic


def parse_acl(text: str, source: str = "<acl>") -> Acl:
    """Parse an ACL file; ValueError names the file and line of the first problem."""
    acl = Acl([], {}, [])
    current = acl.anonymous
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        where = f"{source}:{number}"
        if keyword == "user":
            if not rest:
                raise ValueError(f"{where}: 'user' needs a username")
            current = acl.users.setdefault(rest, [])
        elif keyword in ("topic", "pattern"):
            first, _, remainder = rest.partition(" ")
            access = _ACCESS.get(first)
            topic = remainder.strip() if access is not None else rest
            if access is None:
                access = READ | WRITE
            if not topic:
                raise ValueError(f"{where}: '{keyword}' needs a topic")
            if not validate_topic_filter(topic):
                raise ValueError(f"{where}: invalid topic filter {topic!r}")
            rule = AclRule(topic, access)
            (acl.patterns if keyword == "pattern" else current).append(rule)
        else:
            raise ValueError(f"{where}: unknown directive {keyword!r} (topic, user or pattern)")
    return acl


class AclFilePlugin(Plugin):
    name = "acl_file"
    description = "Topic access control with a mosquitto ACL file (topic, user, pattern)"

    def __init__(self) -> None:
        super().__init__()
        self.file = ""
        self.acl = Acl([], {}, [])

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        self.file = str(ctx.config.get("file") or ctx.node_config.acl_file)
        if not self.file:
            raise PluginLoadError("no ACL file: set acl_file, or file in [plugins.acl_file]")
        self.acl = self._read()
        log.info("acl_file: loaded %s", self.file)
        hook = self.authorize
        self.attach(ctx.broker.hooks.authorize, hook)
        # Its answers follow from the file's rules, the client's id and username, the action
        # and the topic alone: remembered by the fast path until `reload` bumps the epoch.
        self.attach(ctx.broker.hooks.pure_authorize, hook)

    def _read(self) -> Acl:
        """Read and parse the whole file; PluginLoadError with the reason."""
        try:
            with open(self.file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise PluginLoadError(f"{self.file}: cannot read ACL file: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise PluginLoadError(f"{self.file}: not valid UTF-8 at byte {exc.start}") from None
        try:
            return parse_acl(text, self.file)
        except ValueError as exc:
            raise PluginLoadError(str(exc)) from None

    def reload(self) -> bool:
        """Read the ACL file again (SIGHUP): the new rules replace the old ones at once, or,
        when the file cannot be read or parsed, the error is logged and the old ones kept."""
        try:
            acl = self._read()
        except PluginLoadError as exc:
            log.error("acl_file: RELOAD FAILED, keeping the rules loaded before: %s", exc)
            return False
        self.acl = acl
        if self._ctx is not None:
            self._ctx.broker.hooks.authorize_epoch += 1  # remembered answers are void
        log.info("acl_file: reloaded %s", self.file)
        return True

    def authorize(self, client: ClientInfo, action: str, topic: str) -> bool | None:
        access = _ACTIONS.get(action)
        if access is None:
            return None
        if access == WRITE:
            delayed = parse_delayed(topic)
            if delayed is not None:
                topic = delayed[1]
        return self.acl.check(client.client_id, client.username, access, topic)
