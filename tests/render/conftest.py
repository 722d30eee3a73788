"""Shared by the render tests: the schema checker lives in tests/ for every suite to use."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
