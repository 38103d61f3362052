"""`python -m benchmarks` runs the baseline throughput benchmark."""

from __future__ import annotations

from benchmarks.throughput import main

raise SystemExit(main())
