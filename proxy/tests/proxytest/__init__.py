"""Test support for fleetproxy: a recording test backend, the proxy process, raw clients."""
