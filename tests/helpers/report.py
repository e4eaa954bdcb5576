"""Figures of the reliability scenarios: one JSON line per measurement, and the Markdown
table of ``docs/RELIABILITY.md`` rendered from them.

    BDI_RELIABILITY_REPORT=/tmp/rel.jsonl .venv/bin/python -m pytest tests/reliability -q
    .venv/bin/python -m tests.helpers.report /tmp/rel.jsonl
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> str:
    """CPU model, cores, memory and Python: where the figures were measured."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        mem = "unknown memory"
    return f"{cpu}, {os.cpu_count()} cores, {mem}, Python {platform.python_version()}"


@dataclass(frozen=True)
class Reporter:
    """Appends ``{"scenario", "test", "at", "machine", "holds", **figures}`` to ``path``."""

    path: Path | None
    test: str

    def __call__(self, scenario: str, *, holds: bool, **figures: Any) -> dict[str, Any]:
        line = {
            "scenario": scenario,
            "test": self.test.rsplit("::", 1)[-1],
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "holds": bool(holds),
            **figures,
        }
        text = json.dumps(line, default=str)
        print(text)  # shown by pytest -s, and with the output of a failing test
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(text + "\n")
        return line


_META = ("scenario", "test", "at", "machine", "holds")


def render(lines: list[dict[str, Any]]) -> str:
    """One table row per measurement: scenario, test, held or not, the figures."""
    rows = ["| # | test | holds | figures |", "|---|---|---|---|"]
    for line in sorted(lines, key=lambda x: (int(str(x["scenario"]).lstrip("S")), x["test"])):
        figures = ", ".join(f"{k}={v}" for k, v in line.items() if k not in _META)
        mark = "yes" if line["holds"] else "**no**"
        rows.append(f"| {line['scenario']} | `{line['test']}` | {mark} | {figures} |")
    first = lines[0] if lines else {}
    head = f"Measured {first.get('at', '?')} on {first.get('machine', '?')}.\n\n"
    return head + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.helpers.report RESULTS.jsonl", file=sys.stderr)
        return 2
    lines = [json.loads(t) for t in Path(argv[0]).read_text().splitlines() if t.strip()]
    sys.stdout.write(render(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
