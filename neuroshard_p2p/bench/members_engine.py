"""Memory and price a members-network node's engine gives 2,000 non-member keys' announcements:
the path every gossip message takes (validator V6m `not_member`, then nothing is kept), measured
in this process. (`bench members` runs a real victim node, which bans the peer that carries 20
rejected messages: there the flood ends after 20 refusals.)

    python -m neuroshard_p2p.bench members_engine
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import Sequence

import coincurve

from neuroshard_p2p.charter import builtin
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.wire import Announcement, encode
from neuroshard_p2p.wire.membership import Admission, issue_credential


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m neuroshard_p2p.bench members_engine",
        description="2,000 non-member announcements through a members-network engine: the price "
                    "move (0 expected) and the memory they add.")
    parser.parse_args(argv)
    auth = coincurve.PrivateKey(hashlib.sha256(b"bench members authority").digest())
    charter = builtin("simnet").replace(name="m", policy="members",
                                        authorities=(auth.public_key.format(),))
    me = coincurve.PrivateKey(hashlib.sha256(b"bench members victim").digest())
    engine = PeerEngine(charter.market, me, tokens_per_second=1000,
                        admission=Admission.of(charter))
    now = time.time()
    engine.set_credential(issue_credential(
        auth, charter.hash, me.public_key.format(), roles=3, max_tokens_per_second=50_000,
        max_pending_tokens=10**6, max_pending_requests=1000, issued_at_ms=0,
        expires_at_ms=2**62))
    engine.poll_announcements(now)
    keys = [coincurve.PrivateKey(hashlib.sha256(b"non-member %d" % i).digest())
            for i in range(2000)]
    messages = [encode(Announcement(k.public_key.format(), int(now * 1000), 1, 50_000, 0,
                                    10**6, 1000), k) for k in keys]
    price, before = engine.price(now), rss_kb()
    for message in messages:
        engine.on_gossip(message, now)
    after = rss_kb()
    print(f"2,000 non-member announcements: {engine.gossip_counts[('rejected', 'not_member')]} "
          f"refused not_member, price moved by {engine.price(now) - price} nano, "
          f"RSS +{(after - before) / 1024:.2f} MB (process {after / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
