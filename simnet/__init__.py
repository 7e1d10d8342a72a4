"""simnet: many peers on one machine.

Scenarios (TOML timelines) run either on real libp2p nodes in one process or on a deterministic,
discrete-event simulated gossip network that drives the very same sans-IO node engine; results
come back as `report.json`, `report.md` and PNG plots. `simnet.economics` models the
serve-or-train choice of nodes under the price curve.
"""
