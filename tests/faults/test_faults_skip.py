"""The fault suite skips, saying why, where namespaces cannot be made (no netns needed here)."""

from __future__ import annotations

import faults_net
import pytest


def test_no_root_is_a_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults_net.os, "geteuid", lambda: 1000)
    assert faults_net.can_run() == "network namespaces need root"


def test_no_iproute2_is_a_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults_net.os, "geteuid", lambda: 0)
    monkeypatch.setattr(faults_net.shutil, "which", lambda name: None)
    assert faults_net.can_run() == "iproute2 (ip, bridge) is not installed"
