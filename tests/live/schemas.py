"""The shared schema checker (tests/schema_check.py), importable from this package."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from schema_check import schemas  # noqa: E402

__all__ = ["schemas"]
