"""HTTP gateway: a FastAPI app on Ray Serve serving the policy that training is producing.

Ingress deployment (routes, limits, errors, async jobs) -> DeploymentHandle -> generator deployment
(newest verified weights, batched, one pipeline call at a time). See :mod:`services.gateway.api`
for the routes and :func:`services.gateway.deployments.start_gateway` to run it.
"""
__all__ = ["start_gateway", "gateway_app", "build_api"]


def __getattr__(name):  # lazy: importing the package must not import Ray
    if name in ("start_gateway", "gateway_app"):
        from services.gateway import deployments
        return getattr(deployments, name)
    if name == "build_api":
        from services.gateway.api import build_api
        return build_api
    raise AttributeError(name)
