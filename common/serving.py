"""How every service starts Ray Serve: once per cluster, without Serve's HTTP proxy.

Nothing reaches a deployment through that proxy: the gateway's replicas serve HTTP themselves
(services/gateway/deployments.py; the proxy's hop cost ~9 ms per request, docs/measurements.md §4)
and the reward app is called through handles. A proxy would also take the gateway's port on every
node it runs on. Whichever service starts Serve first fixes its options for the whole cluster, so
every service starts it through :func:`start_serve`.
"""
from __future__ import annotations

__all__ = ["start_serve"]


def start_serve() -> None:
    """Start Serve on the connected Ray cluster with no HTTP proxy (a no-op when it runs already)."""
    from ray import serve
    serve.start(proxy_location="Disabled")
