"""Latency of save_stream_data for 500-item chunks, over real HTTP to a
functions-framework process, on the local backend and on fake-gcs-server.

    .venv/bin/python -m bench.bench_functions [--chunks 40] [--chunk-size 500]

Prints one line per backend: chunks sent, p50 and p99 latency, items/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import requests

from standin import cloud
from standin.functions import serve_function

BUCKET = "bench-data"


def rsvp_chunk(start_id: int, size: int) -> bytes:
    items = (
        {
            "rsvp_id": start_id + n,
            "mtime": 1_500_000_000_000 + start_id + n,
            "response": "yes",
            "member": {"member_id": 1000 + n % 300, "member_name": "Nick"},
            "event": {"event_id": "240465167", "event_name": "Nerf Wars!"},
            "group": {"group_id": 1822458, "group_city": "Toronto"},
        }
        for n in range(size)
    )
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def measure(
    url: str, chunks: int, chunk_size: int, bucket: str = BUCKET, first_id: int = 0
) -> dict[str, float]:
    """Post chunks of new RSVPs, ids from first_id on, one after the other."""
    session = requests.Session()
    latencies = []
    started = time.perf_counter()
    for chunk in range(chunks):
        body = rsvp_chunk(first_id + chunk * chunk_size, chunk_size)
        sent = time.perf_counter()
        answer = session.post(
            url,
            params={"label": "rsvps", "bucket": bucket},
            data=body,
            headers={"Content-Type": "application/x-ndjson"},
            timeout=60,
        )
        latencies.append(time.perf_counter() - sent)
        answer.raise_for_status()
        assert answer.json()["stored"] == chunk_size, answer.text
    elapsed = time.perf_counter() - started

    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "items_per_s": chunks * chunk_size / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--chunk-size", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        backends = {"local files": {"LOCAL_DATA_DIR": str(scratch_dir / "data")}}
        gcs = None
        try:
            gcs = cloud.start_fake_gcs(scratch_dir / "logs")
            requests.post(
                f"http://{gcs.address}/storage/v1/b",
                json={"name": BUCKET},
                timeout=10,
            ).raise_for_status()
            backends["fake-gcs-server"] = {
                **gcs.env,
                "GOOGLE_CLOUD_PROJECT": "demo-bench",
            }
        except cloud.EmulatorMissing as missing:
            print(f"fake-gcs-server skipped: {missing}")

        try:
            for name, env in backends.items():
                served = serve_function(
                    "save_stream_data", {"ALLOWED_BUCKETS": BUCKET, **env}
                )
                try:
                    result = measure(served.url, args.chunks, args.chunk_size)
                finally:
                    served.stop()
                print(
                    f"save_stream_data, {name}: {args.chunks} chunks of "
                    f"{args.chunk_size} items: p50 {result['p50_ms']:.0f} ms, "
                    f"p99 {result['p99_ms']:.0f} ms, "
                    f"{result['items_per_s']:,.0f} items/s"
                )
        finally:
            if gcs:
                gcs.stop()


if __name__ == "__main__":
    main()
