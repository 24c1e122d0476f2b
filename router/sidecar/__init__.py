"""The sidecar: the hot path and its server."""
