"""Real architectures (public configs) with random weights: see build.py and README.md."""
from common.policy.arch.build import (ARCHES, ArchError, build_random_pipeline, build_random_policy, init_random_,
                                      load_arch, param_counts)

__all__ = ["ARCHES", "ArchError", "load_arch", "build_random_pipeline", "build_random_policy", "init_random_",
           "param_counts"]
