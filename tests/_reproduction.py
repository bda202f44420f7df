"""Puts ``benchmarks/`` on the path so that the tests of benchmarks/reproduce.py can import ``reproduction`` (its
modules, ``benchmarks/reproduction/``) as the script itself does."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
