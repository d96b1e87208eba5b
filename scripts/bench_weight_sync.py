"""Weight sync seconds vs bytes, for the Redis path and the direct path, side by side in one run
(what each path does and what is timed: common/perf/weight_sync.py).

For each size, a safetensors state of that many fp32 bytes (64 tensors, as a LoRA or a transformer
is many tensors) is published and followed on each path, on an embedded redis-server on a free port
and a local Ray.

    .venv/bin/python scripts/bench_weight_sync.py [--sizes-mb 1 16 64 256] [--repeats 3] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402
import torch  # noqa: E402

from common.codec import state_to_bytes  # noqa: E402
from common.perf.weight_sync import PATHS, init_local_ray, measure_path  # noqa: E402
from common.transport import EmbeddedRedis  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-mb", type=int, default=64, help="redis.weights_chunk_mb")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    biggest = max(args.sizes_mb)
    init_local_ray(object_store_mb=4 * biggest + 256)
    with tempfile.TemporaryDirectory() as tmp, \
            EmbeddedRedis(data_dir=tmp, maxmemory_mb=4 * biggest + 256, appendonly=False) as server:
        for mb in args.sizes_mb:
            n = mb * 2**20 // 4
            data = state_to_bytes({f"layer.{i}.weight": torch.randn(n // 64) for i in range(64)})
            for path in args.paths:
                rows.append(measure_path(path, server.url, data, args.repeats, args.chunk_mb, tag="bench"))
                print(rows[-1], flush=True)
    ray.shutdown()
    print("\nweight sync, one consumer, median of", args.repeats, "\n")
    print("| path | MB | publish s | fetch+verify+decode s | total s | MB/s |\n|---|---|---|---|---|---|")
    for w in rows:
        print(f"| {w['path']} | {w['mb']:.1f} | {w['publish_s']:.3f} | {w['follow_s']:.3f} | {w['total_s']:.3f} | {w['mb_per_s']:.0f} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
