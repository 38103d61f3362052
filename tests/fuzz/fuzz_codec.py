"""Fuzz the sans-IO codec: `Decoder.feed` accepts bytes or raises ProtocolError, nothing else.

Each input picks the decoder's starting version (None, 3.1.1 or 5.0), a `max_packet_size` and a
chunking, then feeds the rest of the input. The rule (h11/wsproto's): every call returns packets or
raises `ProtocolError`; anything else is a crash. Also checked: every packet decoded re-encodes
without error (round-trip of what we accepted).

Run (not part of the test suite; see README "Reliability"):

    python tests/fuzz/fuzz_codec.py -runs=1000000            # atheris (coverage-guided)
    python tests/fuzz/fuzz_codec.py --iterations 1000000      # plain random loop, no atheris

The plain loop mutates valid encodings of every packet type (seeded, reproducible with --seed).
"""

from __future__ import annotations

import argparse
import contextlib
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
    with atheris.instrument_imports():
        from broker.protocol.codec import Decoder, encode
        from broker.protocol.errors import ProtocolError
else:
    from broker.protocol.codec import Decoder, encode
    from broker.protocol.errors import ProtocolError

from fuzz_corpus import seed_packets

VERSIONS = (None, 4, 5, 3)
MAX_SIZES = (268_435_460, 1_048_576, 64, 5)


def run_one(data: bytes) -> int:
    """Decode `data` under the header's settings; return the number of packets accepted."""
    if len(data) < 2:
        return 0
    version = VERSIONS[data[0] & 3]
    max_size = MAX_SIZES[(data[0] >> 2) & 3]
    rng = random.Random(data[1])
    body = data[2:]
    decoder = Decoder(version=version, max_packet_size=max_size)
    count = 0
    pos = 0
    while pos < len(body):
        step = rng.randint(1, max(1, len(body) - pos)) if data[1] & 1 else len(body)
        chunk = body[pos : pos + step]
        pos += step
        try:
            packets = decoder.feed(chunk)
        except ProtocolError:
            return count
        for packet in packets:
            # What we decoded we can write again (in the version we decoded it with).
            with contextlib.suppress(ProtocolError):
                encode(packet, decoder.version or 4)
        count += len(packets)
    return count


def test_one_input(data: bytes) -> None:
    run_one(data)


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(0, 4)):
        op = rng.randrange(6)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            buf.insert(rng.randint(0, len(buf)), rng.randrange(256))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf))]
        elif op == 3 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 4 and buf:
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 8)]
        elif op == 5:
            i = rng.randint(0, len(buf))
            buf[i:i] = rng.choice((b"\xff\xff\xff\xff", b"\x00", b"\x80\x80", b"\xed\xa0\x80"))
    return bytes(buf)


def plain_input(rng: random.Random, corpus: list[bytes]) -> bytes:
    header = bytes((rng.randrange(256), rng.randrange(256)))
    kind = rng.randrange(10)
    if kind == 0:
        return header + rng.randbytes(rng.randint(0, 64))
    parts = [mutate(rng, rng.choice(corpus)) for _ in range(rng.randint(1, 4))]
    return header + b"".join(parts)


def plain_loop(iterations: int, seed: int) -> None:
    rng = random.Random(seed)
    corpus = [encode(p, v) for p, v in seed_packets()]
    started = time.monotonic()
    accepted = 0
    for i in range(iterations):
        data = plain_input(rng, corpus)
        try:
            accepted += run_one(data)
        except Exception:
            print(f"CRASH at input {i} (seed {seed}): {data!r}", file=sys.stderr)
            raise
    elapsed = time.monotonic() - started
    print(f"fuzz_codec: {iterations} inputs, {accepted} packets accepted, 0 crashes, "
          f"{elapsed:.1f} s ({iterations / elapsed:,.0f}/s), seed {seed}")  # fmt: skip


def main() -> None:
    if "--iterations" in sys.argv or atheris is None:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--iterations", type=int, default=100_000)
        parser.add_argument("--seed", type=int, default=0)
        args = parser.parse_args()
        plain_loop(args.iterations, args.seed)
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
