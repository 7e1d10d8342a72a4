"""Real Linux network namespaces for the reach tests (issue 17): LANs, NAT routers, the Internet.

    with Netns() as net:                   # every namespace it made is deleted on leaving
        wan = net.namespace("wan")         # the "Internet": a bridge others plug into
        a = net.namespace("a"); net.plug(a, wan, "203.0.113.10/24")
        ...
        net.popen(a, [python, "-m", "neuroshard_p2p.cli", "run", ...])   # one process per node

`why_not()` says why namespaces cannot be made here (not root, no `ip`, no nft), for a skip
with the reason. Nothing here fakes a network: packets cross veth pairs and a real nftables NAT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

#: Namespace names carry this and the test process's pid, so two runs never collide and a
#: leftover of a killed run can be recognised by name.
PREFIX = "ns17"


def run(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def why_not() -> str | None:
    """Why this machine cannot build the test's namespaces, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (the test runs as uid %d)" % os.geteuid()
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/test installs iproute2 and nftables as root)"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Netns:
    """Namespaces, links and NATs of one test; `close()` (or leaving `with`) deletes them all
    and kills every process started in them."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid() % 100000}"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self._links = 0

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def namespace(self, name: str) -> str:
        ns = f"{self.tag}{name}"
        run("ip", "netns", "add", ns)
        self.names.append(ns)
        run("ip", "link", "set", "lo", "up", ns=ns)
        return ns

    def link(self, left: str, right: str) -> tuple[str, str]:
        """A veth pair between two namespaces; returns the interface names (left, right)."""
        self._links += 1
        a, b = f"v{self._links}a", f"v{self._links}b"
        run("ip", "link", "add", a, "netns", left, "type", "veth", "peer", b, "netns", right)
        run("ip", "link", "set", a, "up", ns=left)
        run("ip", "link", "set", b, "up", ns=right)
        return a, b

    def address(self, ns: str, dev: str, cidr: str) -> None:
        run("ip", "addr", "add", cidr, "dev", dev, ns=ns)

    def bridge(self, ns: str) -> str:
        run("ip", "link", "add", "br0", "type", "bridge", ns=ns)
        run("ip", "link", "set", "br0", "up", ns=ns)
        return "br0"

    def plug(self, ns: str, switch: str, cidr: str) -> str:
        """Connect `ns` to the bridge in `switch` with address `cidr`; returns its interface."""
        dev, port = self.link(ns, switch)
        run("ip", "link", "set", port, "master", "br0", ns=switch)
        self.address(ns, dev, cidr)
        return dev

    def nat_router(self, ns: str, wan_dev: str, *, symmetric: bool = False) -> None:
        """Forward and masquerade everything leaving by `wan_dev`; nothing is forwarded in
        unasked, and what arrives unasked for the router itself is dropped silently. `symmetric`: a new random source port for every connection (fully-random),
        so the port a peer sees for one destination says nothing about the next: hole
        punching cannot work through it."""
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
        flavour = "masquerade fully-random" if symmetric else "masquerade"
        rules = (f"table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n"
                 f"  oifname \"{wan_dev}\" {flavour}\n }}\n}}\n"
                 f"table ip filter {{\n chain forward_in {{\n  type filter hook forward priority 0; "
                 f"policy drop;\n  ct state established,related accept\n"
                 f"  iifname != \"{wan_dev}\" accept\n }}\n"
                 # Like most home routers: what arrives unasked at the router itself is
                 # dropped, not answered with a reset (a reset would also kill a hole punch's
                 # first SYN before the other side's own SYN opened the mapping).
                 f" chain router_in {{\n  type filter hook input priority 0; policy accept;\n"
                 f"  ct state established,related accept\n"
                 f"  iifname \"{wan_dev}\" drop\n }}\n}}\n")
        done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules,
                              text=True, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {ns}: {done.stderr.strip()}\n{rules}")

    def route(self, ns: str, *args: str) -> None:
        run("ip", "route", "add", *args, ns=ns)

    def popen(self, ns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for ns in reversed(self.names):
            # Anything still running inside (a node's child) goes with the namespace.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.names.clear()


def namespaces_left(tag: str) -> list[str]:
    """Namespaces whose names start with `tag` (the cleanup check)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(tag)]
