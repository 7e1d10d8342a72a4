"""The node layer: the sans-IO peer engine and its trio + py-libp2p driver (host, peering, jobs,
backends, data dir, settings). It imports the ledger, view, wire and core layers; nothing above
it (the API, the daemon, the CLI) is imported here."""
