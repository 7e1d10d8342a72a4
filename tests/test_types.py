"""`mypy --strict` is clean on the sans-IO core (core/, wire/, view/, node/engine.py, node/guard.py,
node/clockwatch.py and the pure helpers they import), and it catches a planted type error: the check can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What `mypy --strict` checks (docs/architecture.md). Modules these import are checked too.
STRICT = ("neuroshard_p2p/core", "neuroshard_p2p/wire", "neuroshard_p2p/view",
          "neuroshard_p2p/node/engine.py", "neuroshard_p2p/node/guard.py",
          "neuroshard_p2p/node/clockwatch.py", "neuroshard_p2p/timeline.py")


def mypy_strict(tree: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "MYPY_FORCE_COLOR": "0"}
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache),
                           "--no-error-summary", *STRICT], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_core_is_clean_under_mypy_strict(tmp_path: Path) -> None:
    result = mypy_strict(ROOT, tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_mypy_strict_catches_a_planted_type_error(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "neuroshard_p2p", tree / "neuroshard_p2p",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pricing = tree / "neuroshard_p2p" / "core" / "pricing.py"
    pricing.write_text(pricing.read_text() + "\n\ndef planted(n: int) -> str:\n    return n\n")
    result = mypy_strict(tree, tmp_path / "cache")
    assert result.returncode == 1
    assert ('neuroshard_p2p/core/pricing.py:' in result.stdout
            and 'Incompatible return value type (got "int", expected "str")' in result.stdout)
