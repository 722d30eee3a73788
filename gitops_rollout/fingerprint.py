"""A fingerprint of this package's code, for what it keeps on disk between processes.

The pass memo and the snapshot cache keep results that this code computed; a new release, or a
local change to any module, makes them compute again rather than trust what an older version
kept.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path


@functools.cache
def code_fingerprint() -> str:
    """A digest of the interpreter's version and of every module's path, size and mtime."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256(sys.version.encode())
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
