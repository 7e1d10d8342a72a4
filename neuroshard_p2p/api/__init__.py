"""The node's HTTP side: the ASGI app (`app`), its input checks (`inputs`), the readout shared by
the JSON API and the Prometheus metrics (`readout`, `metrics`), the price history (`history`) and
the dashboard page (`static/`)."""
