"""`python -m benchmarks.launch start ...`: `minibroker start` on the loop the benchmark asks for.

`minibroker start` runs on asyncio's loop unless told otherwise; the benchmark passes
`--loop auto` (uvloop when installed), or `--loop asyncio` with `MINIBROKER_BENCH_LOOP=asyncio`
(the fallback after a broker failed its probe on uvloop, `benchmarks.brokers`).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from broker.cli import main as broker_main

    argv = sys.argv[1:]
    if argv[:1] == ["start"] and "--loop" not in argv:
        wanted = os.environ.get("MINIBROKER_BENCH_LOOP", "uvloop")
        argv += ["--loop", "auto" if wanted == "uvloop" else "asyncio"]
    return broker_main(argv)


if __name__ == "__main__":
    sys.exit(main())
