"""Canaries whose answers the tests compute themselves (shared by the worker and zoo tests).

The simulator answers them with its own arithmetic (fathom.sim.answers.solve), never from a
golden file, so a test that sees them pass or fail proves the probes, not an echo.
"""

from __future__ import annotations

import json
from pathlib import Path

from probes.factuality import Canary

PAIRS = [(17, 23), (48, 76), (125, 8), (99, 11), *((a, a + 7) for a in range(31, 43))]


def multiplications() -> list[Canary]:
    """16 multiplication canaries; the expected answers are computed here."""
    return [
        Canary(f"mul-{i:02d}", f"What is {a} \u00d7 {b}? Answer with just the number.",
               "numeric", answer=a * b)
        for i, (a, b) in enumerate(PAIRS)
    ]  # fmt: skip


def golden_file(path: Path) -> Path:
    """multiplications() as a golden file at `path`."""
    lines = [
        {"id": c.id, "kind": c.kind, "answer": c.answer, "prompt": c.prompt}
        for c in multiplications()
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
