"""Read back what a local run collected, from its data folder.

    python -m standin.collected counts              objects per label, documents
    python -m standin.collected list rsvps [-n 20]  object names of one label
    python -m standin.collected object rsvps/1672114274_1496767464097.json
    python -m standin.collected doc members m1936372
    python -m standin.collected alerts [-n 10]      the last Slack messages

--data-dir (default local-data) names the folder the local run wrote. The layout
is that of Cloud Storage and Firestore: gcs/<bucket>/<label>/<id>_<mtime>.json and
firestore/<collection>/m<id>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

LABELS = ("rsvps", "open_events", "event_comments", "photos", "open_venues")
DEFAULT_BUCKET = "meetup-streams"


def count_objects(data_dir: Path, bucket: str = DEFAULT_BUCKET) -> dict[str, int]:
    """Objects stored per label."""
    return {label: len(object_names(data_dir, label, bucket)) for label in LABELS}


def object_names(data_dir: Path, label: str, bucket: str = DEFAULT_BUCKET) -> set[str]:
    """Names (without the label folder) of the objects stored for a label."""
    try:
        with os.scandir(data_dir / "gcs" / bucket / label) as entries:
            return {
                entry.name
                for entry in entries
                if entry.name.endswith(".json") and not entry.name.startswith(".")
            }
    except FileNotFoundError:
        return set()


def count_documents(data_dir: Path, collection: str) -> int:
    return _count_json(data_dir / "firestore" / collection)


def alerts(data_dir: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The Slack messages the stand-in accepted, oldest first, as it records them:
    {"received_ms": ..., "message": {...}}."""
    path = data_dir / "alerts.jsonl"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as file:
        lines = deque(file, maxlen=last) if last else list(file)
    return [json.loads(line) for line in lines if line.strip()]


def _count_json(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(
                1
                for entry in entries
                if entry.name.endswith(".json") and not entry.name.startswith(".")
            )
    except FileNotFoundError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standin.collected",
        description="Read back what a local run collected.",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("local-data"))
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("counts", help="objects per label and documents per collection")
    listing = commands.add_parser("list", help="object names of one label")
    listing.add_argument("label", choices=LABELS)
    listing.add_argument("-n", type=int, default=20, help="at most this many")
    show_object = commands.add_parser("object", help="print one stored object")
    show_object.add_argument("name", help="e.g. rsvps/1672114274_1496767464097.json")
    document = commands.add_parser("doc", help="print one Firestore document")
    document.add_argument("collection")
    document.add_argument("document_id", help="e.g. m1936372")
    tail = commands.add_parser("alerts", help="the last Slack messages")
    tail.add_argument("-n", type=int, default=10, help="how many")
    args = parser.parse_args(argv)

    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        parser.error(f"no data folder at {data_dir}: run `make run` first")

    if args.command == "counts":
        for label, count in count_objects(data_dir, args.bucket).items():
            print(f"{label:15} {count:>9} objects")
        firestore = data_dir / "firestore"
        if firestore.is_dir():
            for collection in sorted(p.name for p in firestore.iterdir()):
                count = count_documents(data_dir, collection)
                print(f"{collection:15} {count:>9} documents")
        print(f"{'alerts':15} {len(alerts(data_dir)):>9} Slack messages")
    elif args.command == "list":
        folder = data_dir / "gcs" / args.bucket / args.label
        names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
        for name in names[: args.n]:
            print(f"{args.label}/{name}")
        print(f"({len(names)} in all)", file=sys.stderr)
    elif args.command == "object":
        path = _inside(data_dir / "gcs" / args.bucket, args.name)
        if path is None or not path.is_file():
            parser.error(f"no object {args.name!r} in bucket {args.bucket}")
        sys.stdout.write(path.read_text(encoding="utf-8") + "\n")
    elif args.command == "doc":
        path = _inside(
            data_dir / "firestore", f"{args.collection}/{args.document_id}.json"
        )
        if path is None or not path.is_file():
            parser.error(f"no document {args.document_id!r} in {args.collection!r}")
        print(json.dumps(json.loads(path.read_bytes()), indent=2, ensure_ascii=False))
    else:
        for record in alerts(data_dir, args.n):
            message = record.get("message", {})
            print(message.get("text") or json.dumps(message))
    return 0


def _inside(root: Path, name: str) -> Path | None:
    """root/name, or None if name would lead out of root."""
    path = (root / name).resolve()
    return path if path.is_relative_to(root.resolve()) else None


if __name__ == "__main__":
    sys.exit(main())
