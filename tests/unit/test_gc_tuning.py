"""`broker.app.tune_gc`: a running node collects garbage less often and never walks what it
held at start-up (the figures are in its docstring and the README's Performance section)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from broker.app import GC_GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_raises_the_young_threshold_and_freezes_what_exists() -> None:
    gen0, gen1, gen2 = gc.get_threshold()
    held = [object() for _ in range(10)]  # something alive at "start-up"
    tune_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, gen1, gen2)
    assert gen0 < GC_GEN0_THRESHOLD
    assert gc.get_freeze_count() > 0
    assert held
