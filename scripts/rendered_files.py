"""Write generated files, or with --check only report the stale ones (render_*.py)."""

from __future__ import annotations

import sys
from pathlib import Path


def sync(files: dict[Path, str], *, check: bool, script: str, root: Path) -> int:
    """Exit status: 1 if `check` and a file differs from its rendering, else 0."""
    stale = []
    for path, text in files.items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(root)}")
    for path in stale:
        print(f"{path.relative_to(root)} is stale: run scripts/{script}", file=sys.stderr)
    return 1 if stale else 0
