"""How every benchmark reports: the machine, then one JSON document."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on."""
    return {"cpus": os.cpu_count(), "platform": platform.platform()}


def emit(report: dict[str, Any], out: Path | None) -> None:
    """Print ``report`` as JSON, and write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
