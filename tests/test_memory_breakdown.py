"""`python -m simnet.memory_breakdown`: what a full-fidelity run still holds at its end, per
announcement held per view, by module and by source line (docs/scaling.md, "Size")."""

from __future__ import annotations

import pytest

from simnet.memory_breakdown import breakdown, main


def test_the_breakdown_adds_up_and_names_the_views_containers(
        capsys: pytest.CaptureFixture[str]) -> None:
    r = breakdown(20, 6.0, top=5)
    # 20 peers, 15 of them announcing (shock: half providers, a quarter with demand), each
    # held by every view: at least the first announcement of each.
    assert r["held"] >= 20 * 15
    assert r["bytes_per_held"] == round(r["total_bytes"] / r["held"], 1)
    # The modules add up to the total (each rounded to 0.1 byte).
    modules = dict(r["by_module"])
    assert abs(sum(modules.values()) - r["bytes_per_held"]) <= 0.05 * len(modules) + 0.1
    # The view and the validator hold per-view state; the lines are the largest first.
    assert modules["neuroshard_p2p/view/view.py"] > 0
    assert modules["neuroshard_p2p/wire/validate.py"] > 0
    sizes = [b for _, b, _ in r["top"]]
    assert len(sizes) == 5 and sizes == sorted(sizes, reverse=True)
    assert main(["--peers", "10", "--duration", "4", "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("shock, 10 peers at full fidelity, 4 s (")
    assert out[-4] == "top source lines (bytes per held announcement per view, blocks):"
