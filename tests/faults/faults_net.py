"""A private network of network namespaces: one per node, plus one "switch" namespace.

Theory of operation. The switch namespace holds Linux bridges `br0..brN` and, for node `i`, the
switch end `p<i>` of a veth pair whose other end is `eth0` in the node's namespace with the
address `SUBNET.<10+i>/24`. Every node port starts on `br0`, so all nodes share one segment.

* A **partition** into groups moves each group's ports onto its own bridge: no frame crosses
  between bridges, and nothing routes between them (no namespace has a route or forwarding).
* A **bridge node** (sees both sides, the sides do not see each other) keeps every port on
  `br0` and marks all ports but the middle one `isolated`: isolated ports only exchange frames
  with non-isolated ones (the kernel's bridge port isolation).
* **Heal** puts every port back on `br0` with isolation off.

The addresses exist only inside namespaces this module created; the root namespace gets no
interface, no address and no route, so no traffic can leave the machine. Tearing down deletes
the namespaces, which destroys their veths and bridges with them. Names carry a per-process,
per-network prefix (`mbf<pid>x<n>`), so parallel runs never clash, and `sweep_stale()` deletes
namespaces of that prefix family whose owning PID is gone (left over by a killed run).

The test process reaches a namespace without leaving its own: `NsThread` is one worker thread
that entered the namespace with setns(2) (a network namespace is per thread on Linux); sockets it
creates live in that namespace for good and are then used from the event loop as usual.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import itertools
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence

SUBNET = "10.213.14"  # only ever configured inside namespaces created here
PREFIX = "mbf"
_CLONE_NEWNET = 0x40000000
_ISOLATED = "type bridge_slave isolated"
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def can_run() -> str | None:
    """None when this machine can build namespaces, else the reason it cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "iproute2 (ip, bridge) is not installed"
    probe = f"{PREFIX}{os.getpid()}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(argv: Sequence[str], stdin: str | None = None) -> None:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}\n{stdin or ''}")


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete namespaces of our prefix whose creating process is gone; returns their names."""
    swept = []
    for name in _namespaces():
        match = re.fullmatch(rf"{PREFIX}(\d+)x\d+\w*", name)
        if match is None or _alive(int(match.group(1))):
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        swept.append(name)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _setns(name: str) -> None:
    """Worker-thread initializer: move this thread into namespace `name`."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NsThread:
    """One thread living in a namespace, to create sockets there."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._pool = concurrent.futures.ThreadPoolExecutor(1, initializer=_setns, initargs=(ns,))

    def socket(self) -> socket.socket:
        """A non-blocking TCP socket in the namespace (blocks the caller briefly)."""
        sock = self._pool.submit(socket.socket, socket.AF_INET, socket.SOCK_STREAM).result(10)
        sock.setblocking(False)
        return sock

    async def connect(self, host: str, port: int) -> socket.socket:
        """A TCP connection made from inside the namespace."""
        sock = await asyncio.get_running_loop().run_in_executor(None, self.socket)
        try:
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def listener(self, host: str, port: int) -> socket.socket:
        """A listening socket bound inside the namespace."""
        sock = self.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        return sock

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Net:
    """Namespaces for `n` nodes on one switch; partition, bridge and heal at will."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.prefix = f"{PREFIX}{os.getpid()}x{next(_counter)}"
        self.switch = f"{self.prefix}sw"
        self.node_ns = [f"{self.prefix}n{i}" for i in range(n)]
        self.addrs = [f"{SUBNET}.{10 + i}" for i in range(n)]
        self._threads: dict[str, NsThread] = {}
        self.layout: list[list[int]] = [list(range(n))]  # current groups, for the history

    def create(self) -> None:
        """Build the switch and the nodes; on any failure, remove what was made."""
        try:
            for ns in (self.switch, *self.node_ns):
                _run(["ip", "netns", "add", ns])
            lines = [f"link add br{b} type bridge" for b in range(self.n)]
            lines += [f"link set br{b} up" for b in range(self.n)]
            for i, ns in enumerate(self.node_ns):
                lines += [
                    f"link add p{i} type veth peer name eth0 netns {ns}",
                    f"link set p{i} master br0",
                    f"link set p{i} up",
                ]
            _run(["ip", "-n", self.switch, "-batch", "-"], "\n".join(lines) + "\n")
            for ns, addr in zip(self.node_ns, self.addrs, strict=True):
                _run(
                    ["ip", "-n", ns, "-batch", "-"],
                    f"link set lo up\naddr add {addr}/24 dev eth0\nlink set eth0 up\n",
                )
        except BaseException:
            self.destroy()
            raise

    def thread(self, i: int) -> NsThread:
        ns = self.node_ns[i]
        if ns not in self._threads:
            self._threads[ns] = NsThread(ns)
        return self._threads[ns]

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Each group on its own bridge; nodes left out of every group stay on br0 together."""
        layout = [sorted(g) for g in groups]
        placed = {i for g in layout for i in g}
        rest = [i for i in range(self.n) if i not in placed]
        bridges = [rest, *layout] if rest else layout
        lines = []
        for b, group in enumerate(bridges):
            for i in group:
                lines += [f"link set p{i} master br{b}", f"link set dev p{i} {_ISOLATED} off"]
        _run(["ip", "-n", self.switch, "-batch", "-"], "\n".join(lines) + "\n")
        self.layout = [g for g in bridges if g]

    def bridge_node(self, middle: int) -> None:
        """All on br0, all ports but `middle`'s isolated: the middle sees both, the rest only it."""
        lines = []
        for i in range(self.n):
            flag = "off" if i == middle else "on"
            lines += [f"link set p{i} master br0", f"link set dev p{i} {_ISOLATED} {flag}"]
        _run(["ip", "-n", self.switch, "-batch", "-"], "\n".join(lines) + "\n")
        self.layout = [[i, middle] for i in range(self.n) if i != middle]

    def heal(self) -> None:
        self.partition([list(range(self.n))])

    def connected(self, a: int, b: int) -> bool:
        """Whether the current layout lets node `a` reach node `b`."""
        return a == b or any(a in g and b in g for g in self.layout)

    def destroy(self) -> None:
        for thread in self._threads.values():
            thread.close()
        self._threads.clear()
        existing = set(_namespaces())
        for ns in (*self.node_ns, self.switch):
            if ns in existing:
                with contextlib.suppress(subprocess.SubprocessError):
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def exec_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        """`argv` run inside node `i`'s namespace (ip netns exec execs it: same PID)."""
        return ["ip", "netns", "exec", self.node_ns[i], *argv]
