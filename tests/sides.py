"""One side of a shipped-against-workaround comparison, in a process of its own.

A libp2p_compat workaround patches py-libp2p for the whole process once installed, so each side
of a comparison runs `python -c SCRIPT SIDE ...` by itself; the script prints its figures.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Sequence


def run_side(script: str, *args: str, timeout: float, prefix: Sequence[str] = ()) -> str:
    """The stdout of `script` run with `args` (behind `prefix`, e.g. `ip netns exec NS`); a
    failed run fails the test with the end of its stderr."""
    done = subprocess.run([*prefix, sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()
