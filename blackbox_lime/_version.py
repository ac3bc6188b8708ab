"""The package's version and the commit of the code that runs; imported by the package's modules (never the package
root, which imports them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def git_commit(mark_dirty: bool = False) -> str | None:
    """The commit of the source checkout this package runs from, or None outside one (an installed wheel).
    ``mark_dirty``: append "-dirty" when tracked files differ from it (what benchmarks record)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
        commit = head.stdout.strip() if head.returncode == 0 else ""
        if not commit:
            return None
        if mark_dirty:
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5, check=False)
            commit += "-dirty" if status.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return None
    return commit
