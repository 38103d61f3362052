"""Topic patterns (`%i`, `%c`, `%%`) and the filter sets of the many-subscriptions scenario.

emqtt-bench's conventions: `%i` is the client's sequence number within its group and `%c` its
client id, so `bench/%i` gives every publisher its own topic. Unknown `%x` sequences are an error
rather than a silent literal, so a typo does not turn a per-client topic into a shared one.
"""

from __future__ import annotations

__all__ = ["expand", "path_filters", "unrelated_filters"]


def expand(pattern: str, index: int, client_id: str = "") -> str:
    """Replace `%i` with `index`, `%c` with `client_id` and `%%` with `%`."""
    if "%" not in pattern:
        return pattern
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError(f"dangling '%' at the end of topic pattern {pattern!r}")
        code = pattern[i + 1]
        if code == "i":
            out.append(str(index))
        elif code == "c":
            out.append(client_id)
        elif code == "%":
            out.append("%")
        else:
            raise ValueError(f"unknown '%{code}' in topic pattern {pattern!r} (use %i, %c, %%)")
        i += 2
    return "".join(out)


def unrelated_filters(total: int, clients: int, prefix: str = "bench/ms") -> list[list[str]]:
    """`total` wildcard filters spread over `clients` lists, none matching `{prefix}/pub/<n>`.

    Two shapes alternate so a trie must look at both wildcard kinds on the publish path:
    `{prefix}/c<k>/f<j>/+` (a sibling of `pub` at level 3) and `{prefix}/+/c<k>-f<j>/#` (a `+`
    at level 3 whose children never equal the publisher's number). A broker that scans every
    filter per message slows down with `total`; one with a trie does not.
    """
    if total < 0 or clients < 1:
        raise ValueError("total must be >= 0 and clients >= 1")
    lists: list[list[str]] = [[] for _ in range(min(clients, max(total, 1)))]
    for j in range(total):
        k = j % len(lists)
        if j % 2 == 0:
            lists[k].append(f"{prefix}/c{k}/f{j}/+")
        else:
            lists[k].append(f"{prefix}/+/c{k}-f{j}/#")
    return lists


def path_filters(
    total: int, clients: int, publishers: int, topics: int, prefix: str = "bench/wc"
) -> list[list[str]]:
    """`total` wildcard filters over `clients` lists that lie on the paths of the topics
    `{prefix}/<p>/<k>` (p < `publishers`, k < `topics`) without matching any of them.

    Three shapes in turn, so that a trie walk meets a literal level, `+` and `#` at every depth
    while only the subscriber's `{prefix}/+/+` matches: `{prefix}/+/x<j>` (a sibling of that
    filter's last `+`), `{prefix}/<p>/<k>/x<j>/#` (one level below a published topic: its `#`
    does not reach up to it) and `{prefix}/<p>/+/x<j>` (a `+` at the topic's last level with a
    level more). The work of matching one topic does not depend on `total` in a trie.
    """
    if total < 0 or clients < 1 or publishers < 1 or topics < 1:
        raise ValueError("total must be >= 0, clients, publishers and topics >= 1")
    lists: list[list[str]] = [[] for _ in range(min(clients, max(total, 1)))]
    for j in range(total):
        shape = j % 3
        if shape == 0:
            filt = f"{prefix}/+/x{j}"
        elif shape == 1:
            filt = f"{prefix}/{j % publishers}/{j % topics}/x{j}/#"
        else:
            filt = f"{prefix}/{j % publishers}/+/x{j}"
        lists[j % len(lists)].append(filt)
    return lists
