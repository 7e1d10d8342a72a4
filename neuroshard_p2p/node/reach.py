"""How a node is reached: LAN discovery, reachability, circuit relay, port mapping.

`Reach` belongs to one `Node` (`node.reach`), like `Peering`. It uses what py-libp2p 0.8.1 ships,
through `node/libp2p_compat.py` where py-libp2p needs working around:

- **mDNS** (`settings.mdns`, on by default): the node announces its TCP addresses on the LAN
  under its network's service type and dials the nodes of the same network it hears of, so
  nodes on one LAN find each other with no `--bootstrap`.
- **AutoNAT v1** (`/libp2p/autonat/1.0.0`): every node answers dial-back requests (a fresh TCP
  connection to the IP it sees the request from, on the ports the asker advertises); a node asks
  up to `AUTONAT_SERVERS` directly connected peers and reads the verdict (`reachability_verdict`):
  "public" (someone dialled us back), "private" (every answer was a failed dial-back) or
  "unknown" (nobody asked, or nobody judged).
- **Circuit relay v2**: a node serves relay reservations and circuits (the hop role) when
  `relay_service` says so ("auto": once it is public), within `relay_max_reservations` and
  `relay_max_circuits`. A private node reserves a slot on up to `RELAYS_WANTED` relay-capable
  peers and adds `/p2p/<relay>/p2p-circuit` addresses to what it advertises. `open_stream`
  reaches a peer directly, or, when that fails, through a relay both can reach: jobs reach a
  node behind NAT either way.
- **UPnP** (`settings.upnp`): a node whose router answers UPnP maps its TCP port; the mapping
  is reported and removed when the node stops.

- **DCUtR** (`settings.hole_punching`): py-libp2p's DCUtR service tries, every 2 s, to turn each
  relayed connection into a direct one by a simultaneous TCP open from the listen port. Through
  port-preserving NATs it succeeds; through a symmetric NAT the connection stays relayed
  (`connection_kind` reports which, `/api/node` per peer).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import multiaddr
import trio

from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from neuroshard_p2p.node.errors import NodeError
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.node.streams import failure_reason

log = logging.getLogger("neuroshard.node")

#: How many peers a node asks to dial it back per check, and how many relays a private node keeps.
AUTONAT_SERVERS = 4
RELAYS_WANTED = 2
#: First reachability check this long after the node has a peer; re-checks while the verdict is
#: unknown every UNKNOWN_RECHECK_S, afterwards every settings.reachability_interval_s.
UNKNOWN_RECHECK_S = 3.0
#: How long an AutoNAT server tries to dial a client back (all of its ports together); the
#: client waits that much longer than for any other answer.
DIAL_BACK_S = 5.0
#: How long a direct dial may take before a relayed one is tried, for a peer not connected yet.
DIRECT_FIRST_S = 1.5

PUBLIC, PRIVATE, UNKNOWN = "public", "private", "unknown"

#: What `run` prints for each verdict (with the port filled in).
ADVICE = {
    PUBLIC: "other nodes can dial this node directly",
    PRIVATE: ("other nodes cannot dial this node (behind NAT or a firewall); it is reached "
              "through relays{relays}. To be dialled directly, forward TCP port {port} on your "
              "router to this machine (or enable UPnP there)"),
    UNKNOWN: "not known yet: no peer has dialled this node back yet",
}


def reachability_verdict(results: dict[str, bool | None], previous: str) -> str:
    """The verdict from the latest answer of each peer asked: True (dialled us back), False (could
    not), None (refused to judge). One dial-back is proof enough of "public" (a failed one can be
    a firewall on the asker's side); "private" needs every judging peer to have failed. With no
    judging answer the previous verdict stands."""
    judged = [ok for ok in results.values() if ok is not None]
    if not judged:
        return previous
    return PUBLIC if any(judged) else PRIVATE


@dataclass
class ReachState:
    """What `/api/node`, `/metrics` and the dashboard show."""

    reachability: str = UNKNOWN
    checked_at: float | None = None
    answers: dict[str, bool | None] = field(default_factory=dict)
    relay_service: bool = False
    relays: dict[str, str] = field(default_factory=dict)  # relay peer id -> circuit address
    mdns: bool = False
    mdns_found: int = 0
    upnp: str = "off"
    relayed_dials: int = 0
    hop_refused: int = 0
    direct_dials: int = 0


class Reach:
    """mDNS, AutoNAT, relay and UPnP for one node (see the module docstring)."""

    def __init__(self, settings: NodeSettings, *, now: Any) -> None:
        self.settings = settings
        self.now = now
        self.state = ReachState()
        self.host: Any = None
        self.relay: Any = None  # CircuitV2Protocol
        self.transport: Any = None  # CircuitV2Transport
        self.autonat: Any = None
        self.dcutr: Any = None
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    # -- lifetime -------------------------------------------------------------------------------

    async def attach(self, host: Any, stack: Any) -> None:
        """Serve AutoNAT and the relay protocols on `host`; the relay service lives in `stack`."""
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID, STOP_PROTOCOL_ID, CircuitV2Protocol
        from libp2p.relay.circuit_v2.resources import RelayLimits
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport
        from libp2p.tools.anyio_service import background_trio_service

        from neuroshard_p2p.node.libp2p_compat import autonat_service
        from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID

        s = self.settings
        self.host = host
        self.autonat = autonat_service(host, min(s.dial_timeout_s, DIAL_BACK_S))
        host.set_stream_handler(AUTONAT_PROTOCOL_ID, self.autonat.handle_stream)
        limits = RelayLimits(duration=3600, data=s.relay_max_bytes,
                             max_circuit_conns=s.relay_max_circuits,
                             max_reservations=s.relay_max_reservations)
        self.relay = CircuitV2Protocol(host, limits=limits, allow_hop=s.relay_service == "on")
        self.state.relay_service = self.relay.allow_hop
        await stack.enter_async_context(background_trio_service(self.relay))
        # py-libp2p reads allow_hop once, when the service starts, to register the hop handler
        # or not, and the handler itself never checks it (libp2p_compat 11h): the node's gate
        # follows the verdict ("auto"), so a private node never takes a reservation.
        host.set_stream_handler(PROTOCOL_ID, self._serve_hop)
        host.set_stream_handler(STOP_PROTOCOL_ID, self.relay._handle_stop_stream)
        if s.hole_punching:
            from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
            # Drives itself: every 2 s it tries to upgrade each relayed connection to a direct
            # one (simultaneous TCP open from the listen port, both sides' observed addresses).
            self.dcutr = DCUtRProtocol(host, dial_timeout=int(s.dial_timeout_s))
            await stack.enter_async_context(background_trio_service(self.dcutr))
        self.transport = CircuitV2Transport(
            host, self.relay, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT, limits=limits))

    async def _serve_hop(self, stream: Any) -> None:
        if not self.relay.allow_hop:
            self.state.hop_refused += 1
            from neuroshard_p2p.node.streams import reset_quietly
            await reset_quietly(stream)
            return
        await self.relay._handle_hop_stream(stream)

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        if self.settings.autonat:
            nursery.start_soon(self._reachability_loop)
        nursery.start_soon(self._relay_loop)
        # A node that listens on loopback only cannot be dialled from the LAN: announcing it by
        # mDNS or mapping its port by UPnP would only send multicast onto a network it is not
        # on (and tests and simulators that run many nodes on 127.0.0.1 would flood the host's
        # real LAN with it).
        lan = beyond_loopback(self.settings.listen)
        if self.settings.mdns and lan:
            nursery.start_soon(self._mdns)
        if self.settings.upnp:
            if lan:
                nursery.start_soon(self._upnp)
            else:
                self.state.upnp = "off (listening on loopback only)"

    def relayed_addrs(self) -> list[multiaddr.Multiaddr]:
        """The circuit addresses of the relays we hold a reservation on:
        `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<us>`."""
        if self.host is None:
            return []
        me = self.host.get_id()
        return [multiaddr.Multiaddr(f"{addr}/p2p-circuit/p2p/{me}")
                for addr in self.state.relays.values()]

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- AutoNAT --------------------------------------------------------------------------------

    async def _reachability_loop(self) -> None:
        while True:
            await self.check_reachability()
            known = self.state.reachability != UNKNOWN
            await trio.sleep(self.settings.reachability_interval_s if known else UNKNOWN_RECHECK_S)

    async def check_reachability(self) -> str:
        """Ask up to AUTONAT_SERVERS directly connected peers to dial us back; update the verdict."""
        from libp2p.host.autonat.pb.autonat_pb2 import Message

        from neuroshard_p2p.node.libp2p_compat import connection_kind
        peers = [p for p in self.host.get_connected_peers()
                 if connection_kind(self.host, p) == "direct"][:AUTONAT_SERVERS]
        addrs = [a.to_bytes() for a in self.host.get_addrs() if "p2p-circuit" not in str(a)]
        for peer in peers:
            try:
                status, _ = await self.autonat.query_server(
                    peer, addrs, timeout=self.settings.stream_timeout_s + DIAL_BACK_S)
            except Exception as exc:  # noqa: BLE001 - a peer without AutoNAT, or gone
                log.debug("AutoNAT query to %s: %s", peer, failure_reason(exc))
                continue
            self.state.answers[str(peer)] = (True if status == Message.OK else
                                             False if status == Message.E_DIAL_ERROR else None)
        previous = self.state.reachability
        verdict = reachability_verdict(self.state.answers, previous)
        if peers:
            self.state.checked_at = self.now()
        if verdict != previous:
            self.state.reachability = verdict
            log.info("reachability: %s (%s)", verdict, self.advice())
            self._set_relay_service()
            self._note_change()
        return verdict

    def advice(self) -> str:
        v = self.state.reachability
        relays = f" ({len(self.state.relays)} reserved)" if self.state.relays else ""
        return ADVICE[v].format(port=self.listen_port() or "?", relays=relays)

    def listen_port(self) -> int | None:
        for a in self.host.get_addrs() if self.host is not None else []:
            if "p2p-circuit" not in str(a):
                try:
                    return int(a.value_for_protocol("tcp"))
                except Exception:  # noqa: BLE001
                    continue
        return None

    def _set_relay_service(self) -> None:
        mode = self.settings.relay_service
        on = mode == "on" or (mode == "auto" and self.state.reachability == PUBLIC)
        if on != self.relay.allow_hop:
            self.relay.allow_hop = on
            self.state.relay_service = on
            log.info("relay service %s (relay_service=%s, reachability %s)",
                     "on" if on else "off", mode, self.state.reachability)

    # -- relay client ---------------------------------------------------------------------------

    async def _relay_loop(self) -> None:
        """While private: hold reservations on up to RELAYS_WANTED relay-capable peers."""
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
        while True:
            if self.state.reachability == PRIVATE and self.settings.relay_client:
                for relay in list(self.state.relays):
                    if ID.from_base58(relay) not in self.host.get_connected_peers():
                        del self.state.relays[relay]
                        self._note_change()
                for peer in self.host.get_connected_peers():
                    if len(self.state.relays) >= RELAYS_WANTED:
                        break
                    if str(peer) in self.state.relays:
                        continue
                    await self._reserve(peer, PROTOCOL_ID)
            await trio.sleep(UNKNOWN_RECHECK_S)

    async def _reserve(self, peer: ID, protocol: Any) -> None:
        from neuroshard_p2p.node.libp2p_compat import connection_kind
        if connection_kind(self.host, peer) != "direct":
            return
        addr = self._direct_addr(peer)
        if addr is None:
            return
        assert self._nursery is not None
        try:
            with trio.fail_after(self.settings.stream_timeout_s):
                stream = await self.host.new_stream(peer, [protocol])
                ok = await self.transport.reserve(stream, peer, self._nursery)
        except Exception as exc:  # noqa: BLE001 - the peer serves no relay
            log.debug("relay reservation on %s: %s", peer, failure_reason(exc))
            return
        if ok:
            self.state.relays[str(peer)] = f"{addr}/p2p/{peer}"
            log.info("relay reservation on %s: reachable at %s/p2p-circuit", peer,
                     self.state.relays[str(peer)])
            self._note_change()

    def _direct_addr(self, peer: ID) -> str | None:
        try:
            addrs = self.host.get_peerstore().addrs(peer)
        except Exception:  # noqa: BLE001
            return None
        for a in addrs:
            text = str(a)
            if "p2p-circuit" not in text and "/tcp/" in text and not text.startswith("/ip4/127."):
                return text.split("/p2p/")[0]
        for a in addrs:
            if "p2p-circuit" not in str(a):
                return str(a).split("/p2p/")[0]
        return None

    # -- reaching a peer ------------------------------------------------------------------------

    async def open_stream(self, peer: ID, protocols: list[Any]) -> Any:
        """A stream to `peer`: over an existing connection, a direct dial, or a circuit through a
        relay both of us are connected to. Raises NodeError with each way's failure."""
        from neuroshard_p2p.node.libp2p_compat import allow_redial
        failures: list[str] = []
        circuits = self._circuits_to(peer)
        connected = peer in self.host.get_network().connections
        # A peer we are not connected to and could reach by relay gets a short direct try: its
        # advertised addresses are often private ones nobody outside its LAN can reach, and
        # py-libp2p retries each of them (the job's accept deadline would pass meanwhile).
        direct_s = self.settings.dial_timeout_s if connected or not circuits else DIRECT_FIRST_S
        with trio.move_on_after(direct_s):
            try:
                stream = await self.host.new_stream(peer, protocols)
                if not connected:
                    self.state.direct_dials += 1
                return stream
            except Exception as exc:  # noqa: BLE001 - whatever dialing does
                failures.append(f"direct: {failure_reason(exc)}")
        if not failures:
            failures.append(f"direct: no answer within {direct_s:g} s")
        for circuit in circuits:
            try:
                with trio.fail_after(self.settings.dial_timeout_s):
                    await self.transport.dial(multiaddr.Multiaddr(circuit))
                    stream = await self.host.new_stream(peer, protocols)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"via {circuit.split('/p2p-circuit')[0]}: {failure_reason(exc)}")
                continue
            self.state.relayed_dials += 1
            log.info("reached %s through relay %s", peer, circuit.split("/p2p-circuit")[0])
            return stream
        allow_redial(self.host, peer)
        log.info("could not reach %s: %s", peer, "; ".join(failures))
        raise NodeError("; ".join(failures) or "no way to reach the peer")

    def _circuits_to(self, peer: ID) -> list[str]:
        """Circuit addresses of `peer`: those it advertised, then one through every connected
        peer that speaks the relay protocol (a relay may hold its reservation)."""
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
        store = self.host.get_peerstore()
        result: list[str] = []
        try:
            result += [str(a) for a in store.addrs(peer) if "p2p-circuit" in str(a)]
        except Exception:  # noqa: BLE001
            pass
        for relay in self.host.get_connected_peers():
            if relay == peer:
                continue
            try:
                speaks = PROTOCOL_ID in store.get_protocols(relay)
            except Exception:  # noqa: BLE001
                speaks = False
            addr = self._direct_addr(relay)
            if speaks and addr is not None:
                result.append(f"{addr}/p2p/{relay}/p2p-circuit/p2p/{peer}")
        return list(dict.fromkeys(result))

    # -- mDNS -----------------------------------------------------------------------------------

    async def _mdns(self) -> None:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery

        from neuroshard_p2p.node.libp2p_compat import make_mdns, mdns_handler
        send, receive = trio.open_memory_channel[Any](64)
        handler = mdns_handler(send, trio.lowlevel.current_trio_token())
        try:
            discovery = await trio.to_thread.run_sync(make_mdns, self.host, self.settings.network)
        except Exception as exc:  # noqa: BLE001 - no multicast here: say so, carry on
            log.warning("mDNS LAN discovery unavailable: %s", failure_reason(exc))
            return
        peerDiscovery.register_peer_discovered_handler(handler)
        try:
            # Not discovery.start(): it registers the service on the calling thread, blocking
            # trio for zeroconf's announcement round (defect 11d); its stale-entry sweep is not
            # needed (addresses are hints with a TTL in the peerstore).
            await trio.to_thread.run_sync(discovery.broadcaster.register)
            self.state.mdns = True
            log.info("mDNS LAN discovery on (%s)", discovery.service_type)
            async for info in receive:
                await self._dial_found(info)
        finally:
            peerDiscovery.unregister_peer_discovered_handler(handler)
            self.state.mdns = False
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await trio.to_thread.run_sync(_stop_mdns, discovery, abandon_on_cancel=True)

    async def _dial_found(self, info: PeerInfo) -> None:
        if info.peer_id == self.host.get_id():
            return
        self.state.mdns_found += 1
        if info.peer_id in self.host.get_connected_peers():
            return
        from neuroshard_p2p.node.libp2p_compat import lan_addrs
        addrs = lan_addrs(self.host, info)
        if not addrs:
            return
        try:
            with trio.fail_after(self.settings.dial_timeout_s):
                await self.host.connect(PeerInfo(info.peer_id, addrs))
            log.info("mDNS: connected to %s on the LAN", info.peer_id)
        except Exception as exc:  # noqa: BLE001 - another network's node, or gone
            log.info("mDNS: %s found at %s but not dialled: %s", info.peer_id,
                     ", ".join(map(str, addrs)), failure_reason(exc))

    # -- UPnP -----------------------------------------------------------------------------------

    async def _upnp(self) -> None:
        port = self.listen_port()
        try:
            from libp2p.discovery.upnp.upnp import UpnpManager
            manager = UpnpManager()
            with trio.move_on_after(10):
                found = await manager.discover()
        except Exception as exc:  # noqa: BLE001 - miniupnpc missing or broken
            self.state.upnp = f"unavailable ({failure_reason(exc)})"
            return
        if not found or port is None:
            self.state.upnp = "no UPnP gateway"
            return
        if not await manager.add_port_mapping(port, "TCP"):
            self.state.upnp = f"gateway refused to map TCP {port}"
            return
        self.state.upnp = f"mapped TCP {port} on {manager.get_external_ip()}"
        log.info("UPnP: %s", self.state.upnp)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await manager.remove_port_mapping(port, "TCP")

    def connections_by_kind(self) -> dict[str, int]:
        """Connected peers by "direct" / "relayed"."""
        from neuroshard_p2p.node.libp2p_compat import connection_kind
        counts = {"direct": 0, "relayed": 0}
        if self.host is None:
            return counts
        for peer in self.host.get_connected_peers():
            kind = connection_kind(self.host, peer)
            if kind is not None:
                counts[kind] += 1
        return counts

    def peer_connection(self, peer_id: str) -> str | None:
        """How we are connected to `peer_id` now: "direct", "relayed" or None."""
        from neuroshard_p2p.node.libp2p_compat import connection_kind
        try:
            return connection_kind(self.host, ID.from_base58(peer_id))
        except Exception:  # noqa: BLE001 - not a peer id
            return None

    def snapshot(self) -> dict[str, Any]:
        st = self.state
        return {
            "reachability": st.reachability,
            "advice": self.advice() if self.host is not None else "",
            "checked_at": st.checked_at,
            "autonat_answers": dict(st.answers),
            "relay_service": st.relay_service,
            "relays": dict(st.relays),
            "relayed_addrs": [str(a) for a in self.relayed_addrs()],
            "mdns": st.mdns,
            "mdns_found": st.mdns_found,
            "upnp": st.upnp,
            "direct_dials": st.direct_dials,
            "relayed_dials": st.relayed_dials,
            "relay_requests_refused": st.hop_refused,
            "connections": self.connections_by_kind(),
            "peer_connections": {str(p): self.peer_connection(str(p))
                                 for p in (self.host.get_connected_peers() if self.host else [])},
        }


def beyond_loopback(listen: Sequence[str]) -> bool:
    """Whether any of these listen multiaddrs can be reached from off this host: a wildcard or
    a non-loopback IP (a name, e.g. /dns4/…, counts as reachable)."""
    for addr in listen:
        parts = str(addr).split("/")
        if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
            return True
        try:
            if not ipaddress.ip_address(parts[2]).is_loopback:
                return True
        except ValueError:
            return True
    return False


def _stop_mdns(discovery: Any) -> None:
    """Unregister (a goodbye packet, so peers drop us now) and close zeroconf (blocking)."""
    try:
        discovery.broadcaster.unregister()
    finally:
        discovery.listener.stop()
        discovery.zeroconf.close()


__all__ = ["Reach", "reachability_verdict", "PUBLIC", "PRIVATE", "UNKNOWN"]
