"""Run an anchor script with another seed, the script itself unchanged.

    python -m benchmarks.anchor_seeded SEED ANCHOR.py DATA_DIR [THREADS]

The anchors (../shared/anchors) seed torch once, `torch.manual_seed(0)`, and take no seed
argument. This runs the script as `__main__` with `torch.manual_seed(s)` turned into
`torch.manual_seed(s + SEED)`, so SEED 0 is the script as published.
"""

from __future__ import annotations

import runpy
import sys

import torch


def main() -> None:
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    if len(sys.argv) < 3:
        raise SystemExit("usage: " + __doc__.strip().splitlines()[2].strip())
    offset, script = int(sys.argv[1]), sys.argv[2]
    seed = torch.manual_seed
    torch.manual_seed = lambda s: seed(s + offset)
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
