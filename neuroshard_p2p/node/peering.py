"""How a node finds and keeps peers: bootstrap dialing, peer exchange, address parsing.

`Peering` belongs to one `Node` (`node.peering`), which attaches it to its libp2p host and starts
its tasks in the node's nursery:

- **Bootstrap:** every configured bootstrap peer has a task that stays connected to it while the
  node has fewer than `target_peers` connections, dialing with exponential back-off and saying why
  each attempt failed; after reaching one it asks it for peers.
- **Peer exchange** (protocol §10): the dialer sends nothing; the listener answers one frame with
  up to 32 of its connected peers and their listen addresses, then closes. A node serves both
  `/neuroshard/<network id>/peers/1.1.0` (frame 21) and `/peers/1.0.0` (the version-1.0 list, for
  nodes that predate frame 21) and asks for 1.1.0 first. A node below `target_peers` asks a
  random peer every `peer_exchange_interval_s` and dials peers it does not know yet. Addresses
  are hints: dialing checks the peer id (noise handshake). The frames are the wire layer's
  (`wire.encode_peer_exchange` and friends); this module turns their texts into peer ids and
  multiaddrs and skips entries that do not parse or cannot be dialled.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable

import multiaddr
import trio

from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.node.counters import NodeCounters
from neuroshard_p2p.node.errors import NodeError
from neuroshard_p2p.node.libp2p_compat import allow_redial
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.node.streams import FrameStream, failure_reason, reset_quietly
from neuroshard_p2p.wire import (PEERS_MAX_FRAME, decode_peer_exchange, decode_peer_exchange_legacy,
                                 encode_peer_exchange, encode_peer_exchange_legacy,
                                 fit_peer_exchange)
from neuroshard_p2p.wire.framing import length_prefixed

log = logging.getLogger("neuroshard.node")


def peers_protocols(network: str) -> tuple[TProtocol, TProtocol]:
    """The peer-exchange protocols of a network id, preferred first: 1.1.0 (frame 21) and the
    version-1.0 list that older nodes speak."""
    return (TProtocol(f"/neuroshard/{network}/peers/1.1.0"),
            TProtocol(f"/neuroshard/{network}/peers/1.0.0"))


class Peering:
    """Bootstrap dialers and peer exchange for one node (see the module docstring)."""

    def __init__(self, settings: NodeSettings, counters: NodeCounters, *,
                 refuse: Callable[[ID], bool] | None = None) -> None:
        self.settings = settings
        self.counters = counters
        #: Whether a peer is banned (the node's guard): never dialled, its requests reset.
        self.refuse: Callable[[ID], bool] = refuse or (lambda peer: False)
        self.protocols = peers_protocols(settings.network)
        new, legacy = self.protocols
        #: How each protocol's answer is written and read.
        self.codecs = {new: (encode_peer_exchange, decode_peer_exchange),
                       legacy: (encode_peer_exchange_legacy, decode_peer_exchange_legacy)}
        #: Parsed when the node is built, so a bad address is a ConfigError before anything runs.
        self.bootstrap = [(parse_peer_addr(a, "bootstrap"), a) for a in settings.bootstrap_peers]
        self.host: Any = None

    def attach(self, host: Any) -> None:
        """Serve peer exchange on `host` (before the node's tasks start)."""
        self.host = host
        for protocol in self.protocols:
            host.set_stream_handler(protocol, self._serve_peers)

    def start(self, nursery: trio.Nursery) -> None:
        """Start the peer-exchange loop and one dialer per bootstrap peer in the node's nursery."""
        nursery.start_soon(self._peer_exchange_loop)
        for info, text in self.bootstrap:
            nursery.start_soon(self._bootstrap_loop, info, text)

    @property
    def peer_count(self) -> int:
        return len(self.host.get_connected_peers())

    async def connect(self, addr: str) -> str:
        """Dial a peer by full multiaddr; returns its peer id, raises NodeError with the reason."""
        info = parse_peer_addr(addr, "peer")
        await self.dial(info)
        return str(info.peer_id)

    async def dial(self, info: PeerInfo) -> None:
        if self.refuse(info.peer_id):
            raise NodeError("the peer is banned")
        self.counters.dials += 1
        try:
            with trio.fail_after(self.settings.dial_timeout_s):
                await self.host.connect(info)
        except trio.TooSlowError:
            self.counters.dial_failures += 1
            raise NodeError(f"no answer within {self.settings.dial_timeout_s:g} s") from None
        except Exception as exc:  # noqa: BLE001 - libp2p raises many types for one failure
            self.counters.dial_failures += 1
            reason = failure_reason(exc)
            if reason == "connection refused":
                reason += " (is a node listening there?)"
            raise NodeError(reason) from None

    async def _bootstrap_loop(self, info: PeerInfo, text: str) -> None:
        """Stay connected to a bootstrap peer while we have fewer than target_peers: dial with
        exponential back-off, saying why each attempt failed."""
        s = self.settings
        delay = s.bootstrap_retry_initial_s
        while True:
            connected = info.peer_id in self.host.get_network().connections
            if not connected and self.peer_count < s.target_peers:
                allow_redial(self.host, info.peer_id)  # our back-off decides when to retry
                try:
                    await self.dial(info)
                except NodeError as exc:
                    log.warning("bootstrap %s unreachable: %s; retrying in %g s", text, exc, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, s.bootstrap_retry_max_s)
                    continue
                log.info("connected to bootstrap peer %s", text)
                delay = s.bootstrap_retry_initial_s
                await self._exchange_peers_quietly(info.peer_id)
            await trio.sleep(s.peer_exchange_interval_s)

    async def _peer_exchange_loop(self) -> None:
        """Below target_peers, ask a random peer for more. In a network smaller than the target
        the answers bring nothing new, so the period doubles (up to 32×) until one does or a
        peer is lost."""
        base = self.settings.peer_exchange_interval_s
        interval = base
        while True:
            before = self.peer_count
            await trio.sleep(interval)
            peers = self.host.get_connected_peers()
            if len(peers) < before:
                interval = base
            if peers and len(peers) < self.settings.target_peers:
                dialed = await self._exchange_peers_quietly(random.choice(peers))
                interval = base if dialed else min(interval * 2, base * 32)

    async def _exchange_peers_quietly(self, peer: ID) -> int:
        try:
            return await self._exchange_peers(peer)
        except NodeError as exc:
            log.debug("%s", exc)
            return 0

    async def _exchange_peers(self, peer: ID) -> int:
        """Ask `peer` for peers and dial new ones until target_peers; returns how many we dialed
        successfully. Raises NodeError when the exchange itself fails."""
        stream: INetStream | None = None
        try:
            with trio.fail_after(self.settings.stream_timeout_s):
                stream = await self.host.new_stream(peer, list(self.protocols))
                frame = await FrameStream(stream, PEERS_MAX_FRAME).next()
                await stream.close()
            entries = self._decode(stream.get_protocol(), frame) if frame is not None else []
        except Exception as exc:  # noqa: BLE001
            if stream is not None:
                await reset_quietly(stream)
            raise NodeError(f"peer exchange with {short_id(peer)} failed: {failure_reason(exc)}") from None
        self.counters.peer_exchanges += 1
        me = self.host.get_id()
        random.shuffle(entries)
        dialed = 0
        for peer_id, addrs in entries:
            if self.peer_count >= self.settings.target_peers:
                break
            if peer_id == me or peer_id in self.host.get_network().connections:
                continue
            try:
                await self.dial(PeerInfo(peer_id, addrs))
                dialed += 1
            except NodeError as exc:
                log.debug("peer %s from exchange unreachable: %s", short_id(peer_id), exc)
        return dialed

    def _decode(self, protocol: Any, frame: bytes) -> list[tuple[ID, list[multiaddr.Multiaddr]]]:
        """Decode an answer in the layout of the protocol the stream agreed on."""
        return dialable_entries(self.codecs[protocol][1](frame))

    async def _serve_peers(self, stream: INetStream) -> None:
        asker = stream.muxed_conn.peer_id
        if self.refuse(asker):
            self.counters.streams_refused += 1
            await reset_quietly(stream)
            return
        try:
            store = self.host.get_peerstore()
            entries: list[tuple[str, list[str]]] = []
            for peer in self.host.get_connected_peers():
                if peer == asker:
                    continue
                try:
                    addrs = [str(a) for a in store.addrs(peer) if dialable(a)]
                except Exception:  # noqa: BLE001
                    continue
                entries.append((peer.to_base58(), addrs))
            random.shuffle(entries)
            fitted = fit_peer_exchange(entries)
            encode = self.codecs[stream.get_protocol()][0]
            with trio.fail_after(self.settings.stream_timeout_s):
                await stream.write(length_prefixed(encode(fitted)))
                await stream.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("peer exchange with %s failed: %s", short_id(asker), failure_reason(exc))
            await reset_quietly(stream)


class ConnectionWatcher(INotifee):
    """Tells the node about every new connection (inbound and outbound), without blocking.
    `refuse(peer)`, if given, is asked first: True means the node is closing that connection
    (its peer is banned), and nobody hears of it."""

    def __init__(self, channel: trio.MemorySendChannel[ID], *,
                 refuse: Callable[[ID], bool] | None = None) -> None:
        self._channel = channel
        self._refuse = refuse

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self._refuse is not None and self._refuse(peer):
            return
        try:
            self._channel.send_nowait(peer)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a burst of connections: the periodic sync catches up

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Peer exchange answers


def dialable_entries(entries: list[tuple[str, list[str]]]) -> list[tuple[ID, list[multiaddr.Multiaddr]]]:
    """The entries of a decoded peer-exchange frame that can be dialled: a peer id that parses,
    with at least one address that parses and is dialable; the rest are skipped (addresses are
    hints, §10)."""
    result = []
    for peer_text, addr_texts in entries:
        try:
            peer = ID.from_base58(peer_text)
            addrs = [a for a in map(multiaddr.Multiaddr, addr_texts) if dialable(a)]
        except Exception:  # noqa: BLE001 - skip what does not parse
            continue
        if addrs:
            result.append((peer, addrs))
    return result


# ---------------------------------------------------------------------------------------------
# addresses


def dialable(addr: multiaddr.Multiaddr) -> bool:
    """A TCP address with a concrete IP (a wildcard is nobody's address)."""
    text = str(addr)
    return (text.startswith(("/ip4/", "/ip6/")) and "/tcp/" in text
            and "/0.0.0.0/" not in text and "/ip6/::/" not in text)


def parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"listen address {text!r} is not a multiaddr: {exc}") from None
    if "/tcp/" not in str(addr):
        raise ConfigError(f"listen address {text!r} must be TCP, e.g. /ip4/0.0.0.0/tcp/4011")
    return addr


def parse_peer_addr(text: str, what: str) -> PeerInfo:
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{what} address {text!r} is not a multiaddr ending in /p2p/<peer id>: "
                          f"{exc}") from None
    return info


def short_id(peer: Any) -> str:
    """A peer id shortened for a log line (first 8 and last 6 characters)."""
    try:
        text = peer.to_base58() if isinstance(peer, ID) else (
            ID(peer).to_base58() if isinstance(peer, bytes) else str(peer))
    except Exception:  # noqa: BLE001
        text = repr(peer)
    return text[:8] + "…" + text[-6:] if len(text) > 16 else text


__all__ = ["Peering", "ConnectionWatcher", "peers_protocols", "dialable_entries",
           "dialable", "parse_listen_addr", "parse_peer_addr", "short_id"]
