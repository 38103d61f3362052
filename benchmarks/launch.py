"""`python -m benchmarks.launch start ...`: `minibroker` on uvloop when it is installed.

The broker runs on `asyncio.run`, which uses the current event loop policy; installing uvloop's
policy before calling `broker.cli.main` is all it takes, without touching the broker. Set
`MINIBROKER_BENCH_LOOP=asyncio` to force the default loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys


def main() -> int:
    if os.environ.get("MINIBROKER_BENCH_LOOP", "uvloop") == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from broker.cli import main as broker_main

    return broker_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
