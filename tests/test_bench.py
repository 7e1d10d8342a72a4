"""`python -m neuroshard_p2p.bench` holds every benchmark: `--list` names each section with its
module in the bench package, and each section answers `--help` under its dispatcher command.
(The sections' figures are tested where they measure: test_market, test_wire, test_jobs.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from neuroshard_p2p.bench import SECTIONS, main

NAMES = ["core", "wire", "view", "ledger", "jobs", "node", "api", "gossip_cost", "stream_cost",
         "openai", "sync_abuse", "members", "members_engine", "grind", "soak", "clock"]


def test_list_names_every_section_with_its_module() -> None:
    listing = subprocess.run([sys.executable, "-m", "neuroshard_p2p.bench", "--list"],
                             capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert [row[0] for row in rows] == NAMES
    assert [row[-1] for row in rows] == [f"(neuroshard_p2p.bench.{name})" for name in NAMES]
    assert list(SECTIONS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_section_runs_under_the_dispatcher(name: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m neuroshard_p2p.bench {name} ")
