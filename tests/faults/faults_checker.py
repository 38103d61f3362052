"""The checker: each property of issue 14 part 2 stated over a recorded history.

Every property counts the operations it checked and the violations it found; `transition` is
the part of the violations that fell within `settle` seconds after a fault changed (the time
the membership needs to notice: the detection bound). Reachability is the network's, from the
fault log: a publisher's node "could reach" a session's node when both ran (not killed, not
stopped) and the layout linked them at the time the publish was acknowledged.

* acked_delivered: an acknowledged QoS 1/2 publish reaches every persistent session (`sub<i>`,
  homed on node i) whose node the publisher's node could reach when it acknowledged it.
* qos2_exactly_once: a QoS 2 message reaches a persistent session at most once.
* takeover_no_loss: the roaming session (it moves node every few seconds) gets every
  acknowledged QoS 1/2 publish made while the cluster was whole and quiet.
* shared_group: an acknowledged QoS 1/2 publish made while the cluster was whole and quiet
  reaches some member of `$share/g/w/#`.
* one_session_per_id: two connections with one client id, on two nodes at once, do not both
  stay up (the observation window is 2 s from the later CONNACK).
* retained_converge: after the last heal, every node serves the same retained value per topic.
* no_false_death: no node declares a peer dead while the peer ran and was linked to it for the
  whole detection bound before.
* heal_converge (partition scenarios): from the last heal, every node holds the same route
  table, retained messages and banned list (a ban is made on each side while apart) within
  the detection bound plus one push/pull anti-entropy round; the note gives each time.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from faults_workload import History, Op


@dataclass
class Result:
    name: str
    checked: int = 0
    violations: int = 0
    transition: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""

    def bad(self, example: str, in_transition: bool = False) -> None:
        self.violations += 1
        self.transition += in_transition
        if len(self.examples) < 5:
            self.examples.append(example)

    def line(self) -> str:
        extra = f" ({self.transition} within the detection bound of a fault change)"
        text = f"{self.name:20s} checked {self.checked:6d}  violations {self.violations:5d}"
        text += extra if self.violations else ""
        return text + (f"  [{self.note}]" if self.note else "")


def _received(ops: list[Op]) -> dict[str, Counter[str]]:
    got: dict[str, Counter[str]] = defaultdict(Counter)
    for op in ops:
        if op.kind == "recv":
            got[op.process][op.value] += 1
    return got


def _acked(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.kind == "publish" and op.outcome == "ok" and op.qos >= 1]


def check(
    h: History,
    sub_nodes: list[int],
    settle: float,
    retained: dict[int, dict[str, str] | None],
    deaths: list[tuple[int, float, int]],
    converge_note: str,
) -> dict[str, Result]:
    """All properties over the history; `deaths` = (observer, time, target) from node logs."""
    got = _received(h.ops)
    acked = _acked(h.ops)
    out = {name: Result(name) for name in (
        "acked_delivered", "qos2_exactly_once", "takeover_no_loss", "shared_group",
        "one_session_per_id", "retained_converge", "no_false_death",
    )}  # fmt: skip

    def near_change(t: float) -> bool:
        return t - h.last_change_before(t) < settle

    def when(t: float) -> str:
        """Where `t` falls among the faults (the examples say it: a cause is found by time)."""
        state = h.state(t)
        return f"{t - state.time:.1f} s after {state.label}"

    r = out["acked_delivered"]
    for op in acked:
        for i in sub_nodes:
            if h.reachable(op.end, op.node, i):
                r.checked += 1
                if got[f"sub{i}"][op.value] == 0:
                    r.bad(f"{op.value} acked by n{op.node} not at sub{i}, {when(op.end)}",
                          near_change(op.end))  # fmt: skip

    def where(name: str, value: str) -> str:
        """The node and time of each receipt (which copy delivered it, for the node logs)."""
        return ", ".join(f"n{o.node} at {h.state(o.end).label}+{o.end - h.state(o.end).time:.1f}s"
                         for o in h.ops if o.kind == "recv" and o.process == name
                         and o.value == value)  # fmt: skip

    r = out["qos2_exactly_once"]
    for op in h.ops:
        if op.kind == "publish" and op.qos == 2:
            for name in [f"sub{i}" for i in sub_nodes] + ["roam"]:
                count = got[name][op.value]
                if count:
                    r.checked += 1
                    if count > 1:
                        r.bad(f"{op.value} {count}x at {name} ({where(name, op.value)}), "
                              f"{when(op.end)}", near_change(op.end))  # fmt: skip

    quiet = [op for op in acked if h.quiet(op.end, settle)]
    r = out["takeover_no_loss"]
    for op in quiet:
        r.checked += 1
        if got["roam"][op.value] == 0:
            r.bad(f"{op.value} acked by n{op.node} not at roam")

    r = out["shared_group"]
    members = [f"shr{i}" for i in sub_nodes]
    for op in quiet:
        r.checked += 1
        if not any(got[m][op.value] for m in members):
            r.bad(f"{op.value} acked by n{op.node} reached no group member")

    r = out["one_session_per_id"]
    sessions: dict[str, list[Op]] = defaultdict(list)
    for op in h.ops:
        if op.kind == "session" and op.outcome == "ok":
            sessions[op.process].append(op)
    for ident, conns in sessions.items():
        if len(conns) == 2 and h.reachable(
            max(c.start for c in conns), conns[0].node, conns[1].node
        ):
            r.checked += 1
            if all(c.extra.get("alive_at_end") for c in conns):
                r.bad(f"{ident} live on n{conns[0].node} and n{conns[1].node}")

    r = out["retained_converge"]
    views = [v for v in retained.values() if v is not None]
    topics = sorted({t for v in views for t in v})
    written = {op.value for op in h.ops if op.kind == "retain"}
    for topic in topics:
        r.checked += 1
        values = {v.get(topic) for v in views}
        if len(values) != 1 or not values <= written:
            r.bad(f"{topic}: {sorted(map(str, values))}")
    if len(views) < len(retained):
        r.bad(f"{len(retained) - len(views)} node(s) not readable after heal")
    r.note = converge_note

    r = out["no_false_death"]
    r.checked = h.n * (h.n - 1)  # every ordered (observer, target) pair, over the whole run
    false_pairs: set[tuple[int, int]] = set()
    for observer, t, target in deaths:
        linked = all(
            h.reachable(s.time, observer, target) for s in h.faults if t - settle <= s.time <= t
        ) and h.reachable(t - settle, observer, target)
        if linked and (observer, target) not in false_pairs:
            false_pairs.add((observer, target))
            r.bad(f"n{observer} declared n{target} dead at +{t - h.faults[0].time:.1f} s")
    r.note = f"{len(deaths)} dead verdicts logged"
    return out


def heal_result(times: dict[str, float | None] | None, bound: float) -> Result:
    """`heal_converge` from `converge_after`'s times (None: no heal in the scenario)."""
    r = Result("heal_converge")
    if times is None:
        r.note = "no heal"
        return r
    for kind, took in times.items():
        r.checked += 1
        if took is None:
            r.bad(f"{kind} still apart {bound:.0f} s after the heal")
    shown = ", ".join(
        f"{kind} {'-' if took is None else f'{took:.1f} s'}" for kind, took in times.items()
    )
    r.note = f"agreed after the heal: {shown} (bound {bound:.0f} s)"
    return r


#: Every scenario's report, printed at the end of the pytest run (conftest's terminal summary).
REPORTS: list[str] = []

DEAD = re.compile(r"node n(\d+)@\S+ is dead")


def deaths_from_logs(lines: dict[int, list[tuple[float, str]]]) -> list[tuple[int, float, int]]:
    """(observer, time, target) for every "node X is dead" a node logged."""
    found = []
    for observer, entries in lines.items():
        for t, text in entries:
            match = DEAD.search(text)
            if match:
                found.append((observer, t, int(match.group(1))))
    return found


def report(scenario: str, results: dict[str, Result], counts: Counter[str]) -> str:
    head = f"== {scenario}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    lines = [head] + ["  " + r.line() for r in results.values()]
    for r in results.values():
        lines += [f"    e.g. {e}" for e in r.examples[:2]]
    return "\n".join(lines)
