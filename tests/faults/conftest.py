"""The fault suite: real node processes in network namespaces (see faults_net.py).

Short profile by default (each scenario once, bounded); `MINIBROKER_FAULTS=long` runs the long
profile (longer workloads and more fault rounds); `MINIBROKER_FAULT_ROUNDS=N` sets the rounds
(a soak of one scenario, by hand). Everything skips, with the reason, on a machine
that cannot create network namespaces (not root, no iproute2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults_checker import REPORTS
from faults_net import can_run, sweep_stale


@pytest.fixture(scope="session")
def netns() -> None:
    """Skip unless namespaces can be made; first remove namespaces left by dead runs of ours."""
    reason = can_run()
    if reason is not None:
        pytest.skip(reason)
    sweep_stale()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault report: each scenario, each property, operations checked, violations found."""
    if REPORTS:
        terminalreporter.section("fault suite: properties under faults (measured)")
        for text in REPORTS:
            terminalreporter.write_line(text)
