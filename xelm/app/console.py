"""What the commands print: JSON for ``--json``, progress only where a person watches."""

from __future__ import annotations

import json
import sys


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def interactive(args) -> bool:
    """Progress bars and chatter: not under ``--json``, and only on a terminal."""
    return not getattr(args, "json", False) and sys.stderr.isatty()
