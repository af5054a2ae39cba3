"""Store outages on the real engine: an embedded store whose directories nothing may change.

`chattr +i` stops even root (whom chmod does not stop), so a test or the soak running as root
sees inserts fail as on a full or broken disk; elsewhere `can_make_immutable` says no and the
outage is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path


def directories(root: Path) -> list[str]:
    """Every directory under `root` (links not followed), `root` first."""
    return [str(root)] + [
        os.path.join(top, name) for top, names, _ in os.walk(root) for name in names
        if not os.path.islink(os.path.join(top, name))
    ]  # fmt: skip


def set_immutable(paths: Sequence[str], on: bool) -> None:
    """Let nothing be created or removed in these directories, or undo it. Directories only:
    chattr refuses the links chDB keeps there."""
    subprocess.run(["chattr", "+i" if on else "-i", *paths], check=True)


def can_make_immutable(directory: Path) -> bool:
    """Whether this process may use chattr in `directory` (root, a filesystem that supports it)."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        return False
    probe = directory / "chattr-probe"
    probe.mkdir(exist_ok=True)
    try:
        set_immutable([str(probe)], True)
    except subprocess.CalledProcessError:
        return False
    set_immutable([str(probe)], False)
    probe.rmdir()
    return True


@contextlib.contextmanager
def store_outage(store: Path) -> Iterator[None]:
    """The embedded store at `store` unwritable (every directory of it) for the with-block."""
    paths = directories(store)
    set_immutable(paths, True)
    try:
        yield
    finally:
        set_immutable(paths, False)
