"""Performance checks at real scale (issue 11): gpu_check (throughput, memory, weight sync, MFU)."""
__all__: list[str] = []
