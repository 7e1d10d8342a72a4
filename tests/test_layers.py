"""The layer contracts of pyproject.toml ([tool.importlinter]) hold, and `lint-imports` catches an
upward import: a folder is a layer, and imports point down (docs/architecture.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = ("neuroshard_p2p layers: cli | bench > daemon > api > node > ledger | view > wire > charter "
          "> core > config | money | identity > timeline")
SIMNET = ("simnet drives the node and the core, never the API, the daemon, the CLI, the benches "
          "or a ledger")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run the venv's `lint-imports` on the packages (and pyproject.toml) under `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "1000"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def copy_of_the_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for package in ("neuroshard_p2p", "simnet"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_layer_contracts_hold_on_the_tree() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{LAYERS} KEPT" in result.stdout
    assert f"{SIMNET} KEPT" in result.stdout
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "planted", "contract", "named"), [
    # The core reaching up to the API: the layers contract breaks.
    ("neuroshard_p2p/core/pricing.py", "from neuroshard_p2p.api import app",
     LAYERS, "neuroshard_p2p.core.pricing -> neuroshard_p2p.api.app"),
    # The node reaching up to the daemon (the cycle this layout removed).
    ("neuroshard_p2p/node/host.py", "from neuroshard_p2p import daemon",
     LAYERS, "neuroshard_p2p.node.host -> neuroshard_p2p.daemon"),
    # The simulator reaching for the API: the simnet contract breaks.
    ("simnet/sim.py", "from neuroshard_p2p.api import readout",
     SIMNET, "simnet.sim -> neuroshard_p2p.api.readout"),
])
def test_a_planted_upward_import_breaks_its_contract(tmp_path: Path, module: str, planted: str,
                                                    contract: str, named: str) -> None:
    tree = copy_of_the_tree(tmp_path)
    assert lint_imports(tree).returncode == 0  # the copy itself is clean
    path = tree / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{planted}  # planted\n",
                    encoding="utf-8")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout
    assert "Contracts: 1 kept, 1 broken." in result.stdout
    assert named in result.stdout
