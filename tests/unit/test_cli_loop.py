"""`minibroker start --loop`: asyncio's loop by default (on the lean transports' selector),
uvloop when asked for (or, with `auto`, when it is installed)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from broker.cli import build_parser, loop_factory, main
from broker.server.lean_selector import LeanSelector, new_event_loop


def test_asyncio_means_asyncio_loop_on_the_lean_selector() -> None:
    factory = loop_factory("asyncio")
    assert factory is new_event_loop
    loop = factory()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, LeanSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_auto_and_uvloop_use_uvloop_when_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    assert loop_factory("auto") is new_event_loop
    with pytest.raises(ImportError):
        loop_factory("uvloop")
    assert main(["start", "--loop", "uvloop"]) == 2
    assert "uvloop is not installed" in capsys.readouterr().err


def test_the_default_is_asyncio() -> None:
    assert build_parser().parse_args(["start"]).loop == "asyncio"
