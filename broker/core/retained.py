"""Retained messages, in a trie keyed by topic levels (mosquitto's retain tree).

Theory of operation
-------------------
Each stored topic is split on `/` and stored along a path of nodes; the node at the end of the
path holds the `(topic, message)` entry. A new subscription asks "which retained topics match my
filter?", so the walk here goes the other way round from the subscription trie: it follows the
*filter's* levels through a trie of *topics*:
  * a literal level follows the one child with that name;
  * `+` follows every child (one level, empty levels included);
  * `#` takes the node it is reached from (`a/#` matches `a`) and its whole subtree;
  * at the root, a filter starting with `+` or `#` skips children whose name starts with `$`
    (MQTT-4.7.2-1), so `#` does not return `$SYS/...`.
The cost is the part of the tree the filter can reach, never a scan of unrelated topics. Deleting
a retained message prunes the nodes left empty, so the tree follows the live set of topics.

Shared subscriptions receive no retained messages (MQTT 5 section 4.8.2): callers pass the
filters of normal subscriptions only; a `$share/...` string would be taken literally.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

M = TypeVar("M")


class _Node(Generic[M]):
    """One topic level; `entry` is the (topic, message) stored exactly here, if any."""

    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node[M]] = {}
        self.entry: tuple[str, M] | None = None


class RetainedStore(Generic[M]):
    """topic -> retained message, with filter matching; `max_messages` = 0 means unlimited."""

    __slots__ = ("_len", "_root", "max_messages")

    def __init__(self, max_messages: int = 0) -> None:
        if max_messages < 0:
            raise ValueError("max_messages must be >= 0")
        self.max_messages = max_messages
        self._root: _Node[M] = _Node()
        self._len = 0

    def set(self, topic: str, message: M) -> bool:
        """Store or replace; False (nothing stored) for a new topic when the store is full."""
        levels = topic.split("/")
        node = self._root
        for level in levels:
            child = node.children.get(level)
            if child is None:
                if self.max_messages and self._len >= self.max_messages:
                    # The topic cannot exist yet (a node is missing): refuse before creating nodes.
                    return False
                child = node.children[level] = _Node()
            node = child
        if node.entry is None:
            if self.max_messages and self._len >= self.max_messages:
                return False
            self._len += 1
        node.entry = (topic, message)
        return True

    def delete(self, topic: str) -> bool:
        """Clear the retained message of `topic` (a retained publish with an empty payload)."""
        path: list[tuple[_Node[M], str]] = []
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.entry is None:
            return False
        node.entry = None
        self._len -= 1
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.entry is not None or child.children:
                break
            del parent.children[level]
        return True

    def get(self, topic: str) -> M | None:
        """The message retained on exactly `topic`, or None."""
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return None if node.entry is None else node.entry[1]

    def match(self, filt: str) -> list[tuple[str, M]]:
        """Every retained (topic, message) whose topic matches the (normal, valid) filter."""
        levels = filt.split("/")
        n = len(levels)
        out: list[tuple[str, M]] = []
        stack: list[tuple[_Node[M], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.entry is not None:
                    out.append(node.entry)
                continue
            level = levels[i]
            if level == "#":
                if node.entry is not None:
                    out.append(node.entry)  # the parent: `a/#` matches `a`
                self._collect(node, out, skip_dollar=i == 0)
            elif level == "+":
                if i == 0:
                    stack.extend(
                        (child, 1)
                        for name, child in node.children.items()
                        if not name.startswith("$")
                    )
                else:
                    stack.extend((child, i + 1) for child in node.children.values())
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, i + 1))
        return out

    @staticmethod
    def _collect(start: _Node[M], out: list[tuple[str, M]], skip_dollar: bool) -> None:
        """Append every entry strictly below `start`."""
        if skip_dollar:
            stack = [child for name, child in start.children.items() if not name.startswith("$")]
        else:
            stack = list(start.children.values())
        while stack:
            node = stack.pop()
            if node.entry is not None:
                out.append(node.entry)
            stack.extend(node.children.values())

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[str, M]]:
        """Every (topic, message), in no particular order."""
        out: list[tuple[str, M]] = []
        self._collect(self._root, out, skip_dollar=False)
        return iter(out)

    def topics(self) -> Iterator[str]:
        """Every topic with a retained message."""
        return (topic for topic, _ in self)

    def _is_empty_tree(self) -> bool:
        """True when no node is left below the root (used by tests to check pruning)."""
        return not self._root.children
