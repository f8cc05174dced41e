"""Run an anchor (a published reference training script) and read its result.

An anchor is run as `python ANCHOR DATA_DIR [THREADS]`; it may print anything (per-epoch
lines, ...) and ends with one line `ACC SECONDS`: its test accuracy (a fraction, or a
percentage) and the seconds it took by its own clock. ../shared/anchors/README.md describes
the ones this project uses. With another seed than 0 it runs through
`python -m benchmarks.anchor_seeded`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .common import ROOT, module_command, module_env

SEEDED = "benchmarks.anchor_seeded"
DEFAULT_ANCHOR = ROOT.parent / "shared" / "anchors" / "airbench94_cpu.py"

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_RESULT = re.compile(rf"^\s*{_NUM}\s*(%?)\s+{_NUM}\s*s?\s*$")


class AnchorError(Exception):
    """The anchor is missing, failed, or printed no result; the message is one line."""


def parse_result(lines: list[str]) -> tuple[float, float]:
    """(accuracy as a fraction, seconds) from the last `ACC SECONDS` line of the output."""
    for line in reversed(lines):
        m = _RESULT.match(line)
        if m:
            acc, percent, seconds = float(m.group(1)), m.group(2), float(m.group(3))
            if percent or acc > 1:
                acc /= 100
            if not 0 <= acc <= 1 or seconds <= 0:
                raise AnchorError(f"implausible anchor result line: {line.strip()!r}")
            return acc, seconds
    last = next((s.strip() for s in reversed(lines) if s.strip()), "(no output)")
    raise AnchorError(f"no final 'ACC SECONDS' line in the anchor's output; last line: {last!r}")


def display(path: Path) -> str:
    """A path as short as possible: relative to the project when it is inside or beside it."""
    path = Path(path).resolve()
    for base, prefix in ((ROOT, ""), (ROOT.parent, "../")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


def run_anchor(anchor: str | Path, data_dir: str | Path, threads: int | None = None,
               echo: Callable[[str], None] = print, seed: int = 0) -> dict:
    """Run the anchor to completion, echoing its output; return its name, `seed`,
    `test_acc`, `seconds` (the anchor's own timing), `wall_seconds` (the whole subprocess),
    `threads` and `command`. Seed 0 is the script as published; another seed runs it
    through benchmarks.anchor_seeded."""
    anchor = Path(anchor)
    if not anchor.is_file():
        raise AnchorError(f"anchor not found: {anchor} (pass --anchor PATH)")
    args = [str(anchor), str(data_dir)] + ([str(threads)] if threads else [])
    shown = ["python", display(anchor), display(Path(data_dir))] + args[2:]
    cmd, env = [sys.executable, *args], None
    if seed:
        cmd, env = module_command(SEEDED, str(seed), *args), module_env()
        shown = ["python", "-m", SEEDED, str(seed), *shown[1:]]
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            echo(f"anchor | {lines[-1]}")
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C): do not leave it running
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        last = next((s.strip() for s in reversed(lines) if s.strip()), "(no output)")
        raise AnchorError(f"anchor {anchor} failed (exit {rc}): {last}")
    acc, seconds = parse_result(lines)
    return {"name": anchor.name, "seed": seed, "test_acc": acc, "seconds": seconds,
            "wall_seconds": wall, "threads": threads, "command": shlex.join(shown)}
