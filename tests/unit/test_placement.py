"""common/placement.py against a real local Ray: a node that declares a role's custom resource gets
that role's actors; a cluster without it asks for nothing (so local runs still schedule)."""
from __future__ import annotations

import pytest


def test_role_resources_follow_what_the_cluster_declares():
    import ray

    from common.placement import role_resources
    assert role_resources("gateway") == {}  # no Ray connected: nothing to ask for
    ray.init(num_cpus=1, resources={"gateway": 1}, include_dashboard=False, logging_level="ERROR")
    try:
        assert role_resources("gateway") == {"gateway": 0.001}
        assert role_resources("reward") == {}   # this node declares no reward resource

        @ray.remote(num_cpus=0)
        class Replica:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()
        # three live actors share the node's single unit (a whole unit each would leave two pending)
        actors = [Replica.options(resources=role_resources("gateway")).remote() for _ in range(3)]
        assert len(set(ray.get([a.node.remote() for a in actors], timeout=60))) == 1
    finally:
        ray.shutdown()
    with pytest.raises(ValueError, match="unknown role resource 'learner'"):
        role_resources("learner")
