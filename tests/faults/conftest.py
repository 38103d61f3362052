"""The fault suite: real node processes in network namespaces (see faults_net.py).

Short profile by default (each scenario once, bounded); `MINIBROKER_FAULTS=long` runs the long
profile (longer workloads and more fault rounds). Everything skips, with the reason, on a machine
that cannot create network namespaces (not root, no iproute2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults_net import can_run, sweep_stale

LONG = os.environ.get("MINIBROKER_FAULTS", "short") == "long"


@pytest.fixture(scope="session")
def netns() -> None:
    """Skip unless namespaces can be made; first remove namespaces left by dead runs of ours."""
    reason = can_run()
    if reason is not None:
        pytest.skip(reason)
    sweep_stale()
