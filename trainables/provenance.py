"""Where a result came from: the code's git commit and the package version go into every row."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this code runs from; MINIMA_GIT_COMMIT overrides it.

    A sweep driver sets the variable for its workers, whose working copy may not be a checkout.
    """
    if os.environ.get("MINIMA_GIT_COMMIT"):
        return os.environ["MINIMA_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.cache
def package_version() -> str:
    try:
        return metadata.version("minima-atlas")
    except metadata.PackageNotFoundError:
        return "unknown"
