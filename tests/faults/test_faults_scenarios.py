"""Issue 14's fault scenarios against real node processes in network namespaces.

Each scenario runs once per session (the first of its tests runs it; the rest read the cached
history) and prints its report: each property with operations checked and violations found.
`EXPECT` says, from measurement, what the current code holds:
* "holds": asserted (0 violations).
* "fails": a known failure of today's code, `xfail(strict=True)` with the reason, so the test
  flips to an error when the cluster is fixed and the entry must move to "holds".
* absent: measured and reported only (the count varies from run to run with timing; asserting
  either way would be a coin toss). The README lists the measured numbers.
Every scenario also asserts that its workload did something (no property checked vacuously).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_checker import REPORTS, Result
from faults_long import LONG_PARTITION, SKEW, long_partition, skew_schedule, skewed
from faults_proxy import Shape
from faults_scenarios import (
    LONG,
    Options,
    baseline,
    cpu_load,
    flapping,
    isolate,
    kill_during_takeover,
    pause,
    restart_each,
    run_scenario,
    split_2_3,
)
from faults_workload import Plan

#: Fault rounds per scenario: 1 short, 3 long; `MINIBROKER_FAULT_ROUNDS` sets it for a soak
#: of one scenario by hand (kill during takeover: 2 kills per round, about 7 s each).
ROUNDS = int(os.environ.get("MINIBROKER_FAULT_ROUNDS", "3" if LONG else "1"))
pytestmark = [
    pytest.mark.faults,
    pytest.mark.usefixtures("netns"),
    pytest.mark.timeout(240 * max(1, ROUNDS // 3)),
]
SCENARIOS = {
    "baseline": (3, Plan([0, 1, 2], [0, 1, 2]), baseline, None),
    "isolate_sub": (3, Plan([0, 1], [0, 1, 2]), lambda c: isolate(c, 2, 6 * ROUNDS), None),
    "isolate_pub": (3, Plan([0, 1, 2], [1, 2]), lambda c: isolate(c, 0, 6 * ROUNDS), None),
    "split_2_3": (5, Plan([0, 1, 2, 3, 4], [0, 2, 4], rate=8), split_2_3, None),
    "flapping": (3, Plan([0, 1, 2], [0, 1, 2]), flapping, Shape(0.01, 0.02, 0.02)),
    "pause": (3, Plan([0, 1, 2], [0, 1, 2]), pause, None),
    "kill_during_takeover": (
        3,
        Plan([0, 1, 2], [0, 1, 2], roam_every=1e9),
        kill_during_takeover,
        None,
    ),
    "restart_each": (3, Plan([0, 1, 2], [0, 1, 2]), restart_each, None),
    "cpu_load": (3, Plan([0, 1, 2], [0, 1, 2]), cpu_load, None),
    # faults_long.py: a cut longer than a short dead_hold; node 1's wall clock off by SKEW.
    "long_partition": (3, Plan([0, 1, 2], [0, 1, 2]), long_partition, None),
    "skew_behind": (3, Plan([0, 1, 2], [0, 1, 2]), skew_schedule, None),
    "skew_ahead": (3, Plan([0, 1, 2], [0, 1, 2]), skew_schedule, None),
}
#: The nodes' options of the scenarios that change them (built when the scenario runs).
OPTIONS: dict[str, Callable[[], Options]] = {
    "long_partition": lambda: LONG_PARTITION,
    "skew_behind": lambda: skewed(1, -SKEW),
    "skew_ahead": lambda: skewed(1, SKEW),
}
PROPERTIES = [
    "acked_delivered", "qos2_exactly_once", "takeover_no_loss", "shared_group",
    "one_session_per_id", "retained_converge", "no_false_death", "heal_converge",
    "held_or_counted", "clock_skew",
]  # fmt: skip

PARTITIONED = ("isolate_sub", "isolate_pub", "split_2_3", "pause")
EXPECT: dict[tuple[str, str], tuple[str, str]] = {
    # Held in every run measured (README).
    # Under kill and restart the nodes run with durable_acks (faults_nodes.py): a PUBREL goes
    # out only once the "released" state is on disk, so a SIGKILLed node no longer sends a
    # completed message again. Measured since: kill_during_takeover 0 twice in 10 runs,
    # restart_each 2 in 10 (one at the roaming session after a restart, one at a kill: a
    # receiver killed after its commit but before its FORWARD_ACK left gets the batch again,
    # and its de-duplication was in memory; it is committed with the sessions since, issue 14:
    # 0 in 4 runs on branch batch-seq), so measured only (before: 1 in 11 and 2 in 8).
    # Asserted under kill and restart too since (issue 14, branch takeover, 2026-12-07): 0 in
    # 19 short and 6 long runs of kill_during_takeover, 18 short and 6 long of restart_each.
    **{
        (scenario, prop): ("holds", "")
        for scenario in ("baseline", "kill_during_takeover", "restart_each", "cpu_load")
        for prop in ("qos2_exactly_once", "no_false_death")
    },
    ("flapping", "no_false_death"): ("holds", ""),
    # The flapping link (cuts shorter than the detection bound): QoS 2 twice 0-1 per run in
    # the runs that first measured it, then 0 in every full short profile kept since the fold
    # and the arrival rule (15 runs: the rehearsals of .ci/run and full fault runs on main,
    # 2026-12-06 and -07, 536-696 checked each), asserted.
    ("flapping", "qos2_exactly_once"): ("holds", ""),
    # QoS 2 at the roaming session around a partition (README "Under faults"): a copy held for
    # a node skips session copies that arrived there after it was published (Broker.late_for),
    # a persistent session drops a repeat (Session.accept_qos2), and an owner refuses a claim
    # delivered late. 0 in every run on branch qos2-dedup (2026-12-06), 5 runs of each
    # scenario before the merge with main (3 alone on 922bfa7, 2 together on 10c4c15 and
    # 8603111), 2 after it (5-62 per run with dead_hold before; on its base isolate_sub 10,
    # split_2_3 9 and 6, pause 0). isolate_sub: 22 in one run of three after the merge, then
    # 24 and 25 in 2 of 6 (branch faults-long): a takeover claim sent into the cut, delivered
    # by a TCP retransmit on the old inbound connection after the heal, swapped the two
    # copies. Closed (Transport.forget closes inbound connections at the dead verdict): no
    # swap in 6 runs since, but 14 in 1 of them from another cause (after the heal the client's
    # next node took the majority side's copy, whose queue repeated what the isolated node's
    # copy had delivered from held forwards), so measured only there. Asserted there too since
    # a claim made after a membership change gathers every copy of the session and folds them
    # (cluster/takeover_fold.py, broker/core/session_fold.py; branch isosub, 2026-12-07): 0 in
    # 62 of 64 runs on 86f2972 and 3bc724e, 31 and 32 in two (a claim made as the links came
    # back, before the membership saw the other side: its copy was not asked); since members
    # whose link is back are asked too (d922afa): 0 in 36 runs, and 13 after merging main
    # (260ef70), isolate_sub alone each time. The long profile still gave 98-101 per run at
    # isolate_sub (a copy resumed on the isolated node delivered the held forwards the other
    # side's copy had delivered); since such a copy parks them until it has folded that copy
    # in (cluster/takeover_heal.py, dcd8309): 0 in 4 long runs.
    **{
        (scenario, "qos2_exactly_once"): ("holds", "")
        for scenario in ("isolate_sub", "isolate_pub", "split_2_3", "pause")
    },
    # Held in every run since stale "dead" verdicts are doubted and replicated writes are
    # ordered by hybrid-clock stamps (3 runs each, README "Under faults").
    **{
        (scenario, prop): ("holds", "")
        for scenario in ("isolate_sub", "isolate_pub", "split_2_3", "flapping")
        for prop in ("no_false_death", "retained_converge", "heal_converge")
    },
    ("baseline", "retained_converge"): ("holds", ""),
    # Reliable forwards (cluster.outbox), persistent sessions that come back with their node
    # and peers that stop backing off towards it. The first-publish loss was the workload's (a
    # cancelled aiomqtt read); with it fixed, 0 lost with no fault and under CPU starvation in
    # every run; on the flapping link (cuts shorter than the detection bound) the held
    # forwards are sent again: 0 lost. Under kill and restart, acks wait for the commit
    # (FORWARD_ACK always, client acks with durable_acks), so the killed node's durability
    # window loses nothing (before: 0-1 lost per run). With that alone kill_during_takeover
    # lost 1 in two runs of 5 and restart_each 1 in one of 5, acked by a peer as the killed
    # node came back (its routes purged at the dead verdict); with dead_hold (below) too,
    # restart_each lost 0 in 8 runs, kill_during_takeover 0 in 7 and 2 in one (acked by the
    # restarted node itself as it came back, before it had its peers' routes): measured only.
    # The restarted node's own acks: its MQTT listeners now open only once a peer's route
    # table is merged (cluster/first_sync.py), and a session moved to a node is committed
    # before its CONNACK (durable_acks): kill_during_takeover 0 lost in 19 short and 6 long
    # runs since (branch takeover, 2026-12-07), asserted. (restart_each: 0 in 18 short and 5
    # long, 1 in one long run: a peer that learnt the restart by gossip had purged the old
    # run's routes before the new run's arrived, the likely cause; they are kept until then
    # since, cluster/sync.py: 0 in 9 short and 3 long runs.)
    **{
        (scenario, "acked_delivered"): ("holds", "")
        for scenario in ("baseline", "cpu_load", "flapping", "restart_each", "kill_during_takeover")
    },
    # A peer declared dead keeps its routes and held forwards for `[cluster] dead_hold` (60 s,
    # cluster/dead_hold.py): what was in flight at the split and what is published after the
    # heal, before the sides see each other alive, now arrives. 0 lost in every run measured:
    # 6 runs of each of these four scenarios on branch dead-grace (4-64 per run on its base).
    **{
        (scenario, "acked_delivered"): ("holds", "")
        for scenario in ("isolate_sub", "isolate_pub", "split_2_3", "pause")
    },
    # The client-id registry (cluster/takeover.py): 0 twin pairs both up in every scenario of
    # three full runs (2-6 pairs each). restart_each had a pair both up in 3 of 13 runs: both
    # claims went to the id's owner while it was down (killed, not yet declared dead) and each
    # CONNECT went on alone; an unreachable owner is now stood in for by the next node of the
    # id's rendezvous order, so the two meet there: 0 pairs both up in 10 runs of restart_each
    # (47 pairs) and 6 of kill_during_takeover (34 pairs) since. A claim already in flight when
    # the owner is killed waited for its 3 s timeout (one pair both up in one long run of
    # kill_during_takeover); it now fails at the end of the link (cluster/link_loss.py) and goes
    # to the stand-in at once: 0 in 6 short + 3 long runs of kill_during_takeover and 6 + 2 of
    # restart_each (branch takeover2, 2026-12-07).
    **{(scenario, "one_session_per_id"): ("holds", "") for scenario in SCENARIOS},
    # takeover_no_loss (cluster/handoff.py): 0 lost with no fault (6 runs, ~288 checked each)
    # and under CPU starvation (6 runs, ~195 each). kill_during_takeover lost 1 in 1 of 10 runs
    # (a message the killed node acknowledged just before the kill, lost at its own subscriber
    # too: the persistence window, not the handoff), so measured only there; restart_each has
    # no quiet time to check it in (0 checked), the partition scenarios are not measured yet.
    # kill_during_takeover since the two changes above: 0 lost in 19 short and 6 long runs
    # (62-69 checked per run; branch takeover, 2026-12-07), asserted. Around partitions and
    # a pause: 0 in every run measured (5 each on branch qos2-dedup, the two rehearsals on
    # main, two full runs on branch takeover: 9 runs, 42-69 checked each), asserted.
    # kill_during_takeover measured only again since (2026-12-07): with the claim to a killed
    # holder failed at once (cluster/link_loss.py) and the copies folded, three rehearsals of
    # .ci/run lost 2, 1 and 2 of 72 at the roaming session, each time messages published just
    # as the session's node was killed (the same publish number every time; 0 in 6 runs of
    # the scenario alone). An evicted copy now passes its queue and what arrives for it on to
    # the winner (b084ca5, 378c7ac); the third loss came after both. Its cause (traced,
    # README "The cause of the third loss"): the lost message was in the evicted copy's
    # inflight window, sent but never released (PUBREL waits for the commit), and eviction
    # passed on the queue only. It now passes on inflight messages not awaiting PUBCOMP too
    # (462e34e; the fold carries them likewise, 07ec22b): 0 lost in 12 runs alone, 2 full
    # short profiles and two rehearsals since (63-72 checked per run), but 1 (publish 28
    # again) in 36 long runs (the first): another path remains, so still measured only.
    # Traced since (the evicted copy names what it had released): a QoS 2 message whose
    # PUBREL was committed but had not reached the client when its node was killed; the
    # client's next node starts a fresh session (Session Present 0), and the client discards
    # the half-done exchange (MQTT-3.2.2-5). 1 in 41 runs. Closed since for paho, which keeps
    # it: the fresh copy takes the released exchange over when the old holder is back (a
    # PUBREL for the old packet id, Session.adopt_released): 0 in 50 runs, then 0 in 60 more
    # (4,152 checked; 2026-12-07, f7121c0): 0 in 110, where the old rate gives 0 in 110 about
    # 7 times in 100. Asserted.
    **{
        (scenario, "takeover_no_loss"): ("holds", "")
        for scenario in ("baseline", "cpu_load", "kill_during_takeover", *PARTITIONED)
    },
    # faults_long.py (branch faults-long, 2026-12-07). A cut longer than dead_hold: every
    # acknowledged QoS 1/2 message for a session across it delivered or counted (held_dropped),
    # 0 uncounted in 3 runs since the routes stay past the grace (before: 241 of 497 sent
    # nowhere, uncounted). Its acked_delivered counts what was dropped and counted after the
    # heal before the sides saw each other (8-48 per run): measured only (the policy).
    ("long_partition", "held_or_counted"): ("holds", ""),
    # Its QoS 2 twice: 3 in one rehearsal (2026-12-07), a message published just after the heal
    # routed to both copies of the roaming session; closed since a copy resumed while a member
    # heals holds its queued QoS 2 until the fold (LateHold.hold_queue). 0 in the 13 runs
    # before this soak and 0 in 36 runs of the soak (14:22-14:38 UTC), as were takeover without
    # loss, retained and heal convergence and no false death in every one of them: asserted.
    **{
        ("long_partition", prop): ("holds", "")
        for prop in (
            "qos2_exactly_once",
            "takeover_no_loss",
            "retained_converge",
            "heal_converge",
            "no_false_death",
        )
    },
    # A node's wall clock 2 s behind / ahead (libfaketime): before live copies were exempt
    # from the arrival rule, 4 / 12 QoS 2 messages lost at the roaming session; 0 in 2 runs
    # of each since. skew_behind lost one QoS 1 message in one of them (not the QoS 2 rule;
    # cause not found): takeover_no_loss measured only there.
    **{
        (scenario, prop): ("holds", "")
        for scenario in ("skew_behind", "skew_ahead")
        for prop in ("clock_skew", "qos2_exactly_once", "acked_delivered", "no_false_death")
    },
    # skew_behind lost one message at the roaming session in 2 of 3 runs, then 1 of 10: a copy
    # routed to the session's new node just after the surrender, arriving there before the
    # session (cluster/handoff.py now sends the old node's own copy too); 0 in 22 runs since.
    **{(scenario, "takeover_no_loss"): ("holds", "") for scenario in ("skew_behind", "skew_ahead")},
}

_cache: dict[str, dict[str, Result]] = {}


def results(name: str, tmp: Path) -> dict[str, Result]:
    if name not in _cache:
        n, plan, faults, shape = SCENARIOS[name]
        try:
            options = OPTIONS[name]() if name in OPTIONS else None
        except RuntimeError as exc:  # e.g. libfaketime not installed
            pytest.skip(str(exc))
        got, text = asyncio.run(run_scenario(name, n, plan, faults, tmp, ROUNDS, shape, options))
        REPORTS.append(text)
        print(text)
        _cache[name] = got
    return _cache[name]


def _cases() -> list[object]:
    cases: list[object] = []
    for scenario in SCENARIOS:
        for prop in PROPERTIES:
            expect = EXPECT.get((scenario, prop))
            if expect is None:
                continue
            verdict, reason = expect
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if verdict == "fails" else []
            cases.append(pytest.param(scenario, prop, marks=marks, id=f"{scenario}-{prop}"))
    return cases


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_runs_and_checks_something(
    scenario: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    got = results(scenario, tmp_path_factory.mktemp(scenario))
    assert got["acked_delivered"].checked > 0
    assert got["qos2_exactly_once"].checked > 0
    assert got["retained_converge"].checked > 0


@pytest.mark.parametrize(("scenario", "prop"), _cases())
def test_property(scenario: str, prop: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    result = results(scenario, tmp_path_factory.mktemp(scenario))[prop]
    assert result.checked > 0, f"{prop}: nothing checked"
    assert result.violations == 0, result.line() + "\n" + "\n".join(result.examples)
