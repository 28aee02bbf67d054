"""The VM entry point of the meetup.com collector.

    python trigger_gcf.py --config config.json [--duration S] [--streams a,b]
    python trigger_gcf.py --config config.json dead-letters list|resend

See `python trigger_gcf.py --help` and config.example.json.
"""

from __future__ import annotations

import sys

from collector.cli import main

if __name__ == "__main__":
    sys.exit(main())
