"""Which Ray node a service's actors and Serve replicas run on, when the cluster says.

On docker compose and the Helm chart every service's container joins Ray as a node that declares
a custom resource named after its role (`RAY_RESOURCES='{"gateway": 1}'`, docs/operations.md).
Actors and replicas ask for a sliver of it, so they run in their own container: the gateway's
replicas behind the HTTP port that container publishes (they serve HTTP themselves on the node
they run on), the reward models and the generators on the devices their containers were given,
the learner's trainer workers in the learner's own container (beside its checkpoint volume). A
local Ray declares no such resource, and then they ask for nothing.
"""
from __future__ import annotations

__all__ = ["ROLE_RESOURCES", "role_resources"]

# the custom resource each service's node declares (docker-compose.yml, deploy/helm)
ROLE_RESOURCES = ("reward", "generator", "gateway", "trainer")
_SHARE = 0.001  # any number of replicas or actors fit in one node's single unit


def role_resources(role: str) -> dict[str, float]:
    """``{role: share}`` when the connected cluster declares ``role``, else ``{}``."""
    if role not in ROLE_RESOURCES:
        raise ValueError(f"unknown role resource {role!r}; expected one of {', '.join(ROLE_RESOURCES)}")
    import ray
    if not ray.is_initialized():
        return {}
    return {role: _SHARE} if ray.cluster_resources().get(role, 0) > 0 else {}
