"""`benchmarks.procfs.runtime_seconds` (the CPU time `latency_ab` divides by its messages) counts
what the kernel's clock-tick count does, in nanoseconds, over all of a process's threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from benchmarks.procfs import cpu_seconds, runtime_seconds


def _spin(seconds: float) -> None:
    """Burn about `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_runtime_follows_the_cpu_time_of_every_live_thread() -> None:
    pid = os.getpid()
    spun = threading.Event()
    done = threading.Event()

    def work() -> None:
        _spin(0.1)
        spun.set()
        done.wait(10)

    before = runtime_seconds(pid)
    process_before = time.process_time()
    assert before is not None
    worker = threading.Thread(target=work)
    worker.start()
    _spin(0.1)
    assert spun.wait(10)
    spent = runtime_seconds(pid)
    done.set()
    worker.join(10)
    assert spent is not None
    spent -= before
    process_spent = time.process_time() - process_before
    assert process_spent >= 0.2
    # Both are the kernel's count of the same CPU time (process_time's in its own units).
    assert abs(spent - process_spent) < 0.02 + 0.1 * process_spent, (spent, process_spent)


def test_another_process_and_a_gone_one() -> None:
    script = "import time\nend = time.process_time() + 0.2\n"
    script += "while time.process_time() < end: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        spent = 0.0
        for _ in range(200):  # until it has spun (bounded: 10 s)
            runtime = runtime_seconds(child.pid)
            assert runtime is not None
            spent = runtime
            if spent >= 0.2:
                break
            time.sleep(0.05)
        ticks = cpu_seconds(child.pid)
        assert ticks is not None
        assert spent >= 0.2 and abs(spent - ticks) < 0.05, (spent, ticks)
    finally:
        child.communicate(b"\n", timeout=10)
    assert runtime_seconds(child.pid) is None
