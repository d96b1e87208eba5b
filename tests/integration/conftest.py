"""Integration fixtures: one loopback Ray per test module (Serve apps and actors are torn down with it)."""
import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    from ray import serve

    from common.config import RayConfig
    from dyref.local import init_ray
    init_ray(RayConfig(num_cpus=3, object_store_memory_mb=128))
    yield
    serve.shutdown()
    ray.shutdown()
