"""shadow-router: a sidecar that makes ML model promotion safe."""

__version__ = "0.1.0"
