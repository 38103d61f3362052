"""Fuzz a live connection driver: random packet sequences and byte mutations into a `Channel`.

The rule and the checks are in `driver.py`. Run (not part of the test suite):

    python tests/fuzz/fuzz_driver.py -runs=1000000            # atheris (coverage-guided)
    python tests/fuzz/fuzz_driver.py --iterations 1000000      # plain random loop, no atheris

A fresh broker is made every `--reset` inputs (default 5000) so that sessions and retained
messages left by earlier inputs stay bounded.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:  # atheris is optional: without it, only the plain loop runs
    import atheris
except ImportError:  # pragma: no cover
    atheris = None

if atheris is not None and "--iterations" not in sys.argv:
    with atheris.instrument_imports(include=["broker"]):
        from driver import Driver
        from fuzz_corpus import ByteSource
else:
    from driver import Driver
    from fuzz_corpus import ByteSource

RESET = 5000
_state: dict[str, Driver] = {}


def test_one_input(data: bytes) -> None:
    driver = _state.get("driver")
    if driver is None or driver.inputs >= RESET:
        driver = _state["driver"] = Driver()
    driver.run(ByteSource(data))


def plain_loop(iterations: int, seed: int, reset: int) -> None:
    rng = random.Random(seed)
    started = time.monotonic()
    driver = Driver()
    totals = [0, 0, 0]
    for i in range(iterations):
        if driver.inputs >= reset:
            totals = [t + n for t, n in zip(totals, _counts(driver), strict=True)]
            driver = Driver()
        state = rng.getstate()
        try:
            driver.run(rng)
        except Exception:
            rng.setstate(state)
            print(f"FAILURE at input {i} (seed {seed}); replay with random.Random state",
                  file=sys.stderr)  # fmt: skip
            raise
        if (i + 1) % 100_000 == 0:
            print(f"  {i + 1} inputs, {time.monotonic() - started:.0f} s", flush=True)
    totals = [t + n for t, n in zip(totals, _counts(driver), strict=True)]
    elapsed = time.monotonic() - started
    print(f"fuzz_driver: {iterations} inputs ({totals[0]} left open/accepted, {totals[1]} "
          f"closed/rejected, {totals[2]} reached CONNECTED), 0 failures, {elapsed:.0f} s "
          f"({iterations / elapsed:,.0f}/s), seed {seed}")  # fmt: skip


def _counts(driver: Driver) -> list[int]:
    return [driver.accepted, driver.rejected, driver.connected]


def main() -> None:
    if "--iterations" in sys.argv or atheris is None:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--iterations", type=int, default=10_000)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--reset", type=int, default=RESET)
        args = parser.parse_args()
        plain_loop(args.iterations, args.seed, args.reset)
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
