"""`bench stream_cost`, with real hosts in two processes: announcements in frames on one yamux
stream reach the receiver's engine whole, each frame's announcements all new (the signers' next
announcements) or all held (duplicates), and the fit splits CPU per announcement exactly into a
frame's share and an announcement's."""

from __future__ import annotations

import argparse

import pytest

from neuroshard_p2p.bench import stream_cost


def test_the_fit_splits_per_frame_and_per_announcement_cost() -> None:
    # 0.5 ms per frame + 0.1 ms per announcement: 0.6 ms each at 1 per frame, 0.1078125 at 64.
    frame, item = stream_cost.fit(0.6e-3, 0.5e-3 / 64 + 0.1e-3, 64)
    assert frame == pytest.approx(0.5e-3) and item == pytest.approx(0.1e-3)


def test_frames_of_new_and_of_held_announcements_reach_the_engine_whole() -> None:
    # 100 announcements/s in frames of 10 for the receiver's 2 s window: ~20 frames, every
    # announcement of every frame taken (a frame is merged whole), none refused (_side raises).
    options = argparse.Namespace(rate=100.0, seconds=2.0)
    for held in (False, True):
        cpu, frames, taken, sender_cpu, sent = stream_cost._side(10, options, held)
        assert 15 <= frames <= 22, (held, frames)
        assert taken == 10 * frames, (held, taken, frames)
        assert sent >= frames and cpu > 0 and sender_cpu > 0
