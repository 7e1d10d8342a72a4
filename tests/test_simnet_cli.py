"""`neuroshard-simnet` without its optional extra (numpy, matplotlib) says how to install it and
exits 2 instead of ending in a traceback. Each case runs the CLI in its own interpreter where the
missing modules really fail to import: a `None` entry in `sys.modules` makes `import numpy` raise
ImportError, as on an install without the extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from simnet.scenario import shipped_scenarios

ROOT = Path(__file__).resolve().parent.parent
MISSING_EXTRA = ("neuroshard-simnet needs the simnet extra (numpy is not installed): "
                 "pip install 'neuroshard-p2p[simnet]'\n")


def simnet(argv: list[str], *, uninstalled: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Run `neuroshard-simnet ARGV` with the modules `uninstalled` unimportable."""
    code = ("import sys\n"
            f"for name in {uninstalled!r}:\n"
            "    sys.modules[name] = None\n"
            "from simnet.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def run_args(out: Path) -> list[str]:
    return ["run", "--transport", "sim", "--peers", "4", "--scenario", "shock", "--duration", "5",
            "--out", str(out), "--no-plots", "--quiet"]


def test_run_without_numpy_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    done = simnet(run_args(tmp_path / "out"), uninstalled=("numpy", "matplotlib"))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", MISSING_EXTRA)
    assert not (tmp_path / "out").exists()


def test_scaling_without_numpy_names_the_extra_and_exits_2() -> None:
    done = simnet(["scaling", "--peers", "10", "--quiet"], uninstalled=("numpy",))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", MISSING_EXTRA)


def test_with_numpy_the_same_run_works_even_without_matplotlib(tmp_path: Path) -> None:
    done = simnet(run_args(tmp_path / "out"), uninstalled=("matplotlib",))
    assert done.returncode == 0, done.stderr
    assert "simnet extra" not in done.stderr
    assert (tmp_path / "out" / "report.json").is_file()


def test_commands_that_need_no_numpy_run_without_it() -> None:
    done = simnet(["scenarios"], uninstalled=("numpy", "matplotlib"))
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(shipped_scenarios())
