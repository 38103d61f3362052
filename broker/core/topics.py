"""Topic names, topic filters and the reference matcher (MQTT 3.1.1 / 5.0 section 4.7, 4.8.2).

`topic_matches` is deliberately the plain, obviously-correct version: it is used for ACL checks
and as the oracle the subscription trie and the retained store are tested against.
"""

from __future__ import annotations

MAX_TOPIC_BYTES = 65535
SHARE_PREFIX = "$share"
QUEUE_PREFIX = "$queue"  # EMQX's older spelling of a shared subscription without a group name
QUEUE_GROUP = "$queue"


def _utf8_ok(s: str) -> bool:
    """Non-empty, encodable (no lone surrogates), <= 65535 bytes, no U+0000 (MQTT-1.5.3-1/2)."""
    if not s or "\x00" in s:
        return False
    try:
        n = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return n <= MAX_TOPIC_BYTES


def is_utf8(payload: bytes) -> bool:
    """Well-formed UTF-8 (RFC 3629): what Payload Format Indicator 1 promises (3.3.2.3.2)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def has_wildcard(filt: str) -> bool:
    """A Wildcard Subscription (MQTT 5 3.2.2.3.11): `+` or `#` anywhere in the filter."""
    return "+" in filt or "#" in filt


def validate_topic_name(topic: str) -> bool:
    """A topic a PUBLISH may carry: non-empty (MQTT-4.7.3-1), no wildcards (MQTT-3.3.2-2)."""
    return _utf8_ok(topic) and "+" not in topic and "#" not in topic


def _validate_plain_filter(filt: str) -> bool:
    """Wildcards each alone in their level; `#` only last (MQTT-4.7.1-2, MQTT-4.7.1-3)."""
    if not filt:
        return False
    if "+" not in filt and "#" not in filt:
        return True
    levels = filt.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def validate_topic_filter(filt: str) -> bool:
    """A filter a SUBSCRIBE may carry, including `$share/<group>/<filter>` (MQTT-4.8.2-1/2)."""
    if not _utf8_ok(filt):
        return False
    first = filt.split("/", 1)[0]
    if first == SHARE_PREFIX:
        parts = filt.split("/", 2)
        if len(parts) < 3:
            return False
        group, real = parts[1], parts[2]
        if not group or "+" in group or "#" in group:
            return False
        return _validate_plain_filter(real)
    if first == QUEUE_PREFIX:
        parts = filt.split("/", 1)
        return len(parts) == 2 and _validate_plain_filter(parts[1])
    return _validate_plain_filter(filt)


def parse_shared(filt: str) -> tuple[str | None, str]:
    """Split a shared filter into (group, real filter); (None, filt) for a normal filter.

    `$queue/<filter>` (EMQX) gives the group "$queue". A malformed shared filter (no group or no
    real filter) raises ValueError: callers validate first, so reaching that is a bug.
    """
    if not filt.startswith("$"):
        return None, filt
    first = filt.split("/", 1)[0]
    if first == SHARE_PREFIX:
        parts = filt.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise ValueError(f"malformed shared subscription filter: {filt!r}")
        return parts[1], parts[2]
    if first == QUEUE_PREFIX:
        parts = filt.split("/", 1)
        if len(parts) < 2 or not parts[1]:
            raise ValueError(f"malformed $queue filter: {filt!r}")
        return QUEUE_GROUP, parts[1]
    return None, filt


def topic_matches(filt: str, topic: str) -> bool:
    """Does the (plain, valid) filter match the topic name?

    `+` matches exactly one level, possibly empty; `#` matches the parent level and any number of
    levels below it (`a/#` matches `a`, MQTT-4.7.1-2); a topic starting with `$` is not matched by
    a filter whose first level is a wildcard (MQTT-4.7.2-1). Empty levels are levels.
    """
    flevels = filt.split("/")
    tlevels = topic.split("/")
    if topic.startswith("$") and flevels[0] in ("+", "#"):
        return False
    ntopic = len(tlevels)
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= ntopic:
            return False
        if f != "+" and f != tlevels[i]:
            return False
    return len(flevels) == ntopic
