#!/usr/bin/env python
"""Print finished recipe runs side by side (their results.json): metric at step 0 and at the end, tokens, speed.

    python recipes/compare_runs.py runs/demo/softmax runs/demo/dagpam
"""

from __future__ import annotations

import sys

from hf_attnswap.training.loop import run_recipe
from hf_attnswap.training.report import compare_runs


def main(argv: list[str] | None = None) -> int:
    folders = sys.argv[1:] if argv is None else argv
    if not folders or any(f.startswith("-") for f in folders):
        print(__doc__)
        return 2
    compare_runs(folders)
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main))
