"""How many items a second one stand-in stream serves to a reader that only counts.

The stand-in runs in this process with one stream at "as fast as possible" and a
cap of --items new items; the reader runs in a child process (so the two do not
share an interpreter lock), connects live, and counts the item chunks in the raw
chunked response (each ends in a newline and the chunk's CRLF) without parsing
anything, until it has them all. The figure is items / seconds from the first
byte to the last item, as the reader measured it.

    .venv/bin/python bench/bench_standin.py [--items 1000000] [--label rsvps]

The target is >= 20,000 items/s, so that the stand-in is never what a benchmark
of the collector measures.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from standin.server import LABELS, StandIn, StandInConfig, StreamConfig  # noqa: E402

ITEM_END = b"\n\r\n"  # the item's newline, then the chunk's CRLF
TARGET_ITEMS_PER_S = 20_000


def read_and_count(port: int, label: str, items: int, timeout_s: float) -> dict:
    """Read `items` items of the stream; how long it took from the first byte."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.sendall(f"GET /2/{label} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    received = 0
    counted = 0
    carry = b""
    started = None
    headers: bytes | None = b""
    while counted < items:
        size = sock.recv_into(view)
        if size == 0:
            break
        if started is None:
            started = time.perf_counter()
        received += size
        window = carry + bytes(view[:size])
        if headers is not None:
            # The response headers end in CRLF CRLF, which holds ITEM_END too.
            headers += window
            if b"\r\n\r\n" not in headers:
                carry = b""
                continue
            window = headers.split(b"\r\n\r\n", 1)[1]
            headers = None
        # An item's end may straddle two reads: look at the last bytes again.
        counted += window.count(ITEM_END)
        carry = window[-(len(ITEM_END) - 1) :]
        if window.endswith(ITEM_END):
            carry = b""
    elapsed = time.perf_counter() - (started or time.perf_counter())
    sock.close()
    return {"items": counted, "bytes": received, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--label", choices=LABELS, default="rsvps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--read", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.read:
        result = read_and_count(args.read, args.label, args.items, args.timeout)
        print(json.dumps(result))
        return 0

    config = StandInConfig(
        seed=args.seed,
        streams={args.label: StreamConfig(rate=None, max_items=args.items)},
    )
    with StandIn(config) as standin:
        reader = subprocess.run(
            [
                sys.executable,
                __file__,
                "--read",
                str(standin.port),
                "--label",
                args.label,
                "--items",
                str(args.items),
                "--timeout",
                str(args.timeout),
            ],
            capture_output=True,
            text=True,
            timeout=args.timeout + 30,
            check=True,
        )
        result = json.loads(reader.stdout)
        served = standin.stats()["streams"][args.label]["items_served"]

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = result["items"] / result["seconds"] if result["seconds"] else 0.0
    verdict = "meets" if rate >= TARGET_ITEMS_PER_S else "MISSES"
    print(
        f"bench_standin: {args.label}: {result['items']:,} items "
        f"({result['bytes'] / 1e6:,.0f} MB) read in {result['seconds']:.2f} s = "
        f"{rate:,.0f} items/s, {result['bytes'] / 1e6 / result['seconds']:,.0f} MB/s "
        f"(served {served:,}, stand-in peak RSS {peak_mb:,.0f} MB; {verdict} the "
        f"target of {TARGET_ITEMS_PER_S:,}/s)"
    )
    return 0 if result["items"] == args.items else 1


if __name__ == "__main__":
    sys.exit(main())
