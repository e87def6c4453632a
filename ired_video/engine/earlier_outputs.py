"""What an earlier run of a benchmark step left behind and may be reused: a JSON report is
current when it and its companion file are there, the report was written after the input it
was made from, and it names the same inputs as the step about to run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def current_report(report: Path, companion: Path, source: Path, expected: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The JSON in ``report`` if ``companion`` exists too, ``report`` is not older than
    ``source`` and each key of ``expected`` holds its value there; else None (also for a
    report cut short while being written)."""
    if not (report.is_file() and companion.is_file()) or report.stat().st_mtime < source.stat().st_mtime:
        return None
    try:
        found = json.loads(report.read_text())
    except json.JSONDecodeError:
        return None
    return found if all(found.get(key) == value for key, value in expected.items()) else None
