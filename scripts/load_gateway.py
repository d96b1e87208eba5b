#!/usr/bin/env python
"""Load test of the gateway: overhead over a direct policy call, then clients at several times capacity.

Brings up its own stack (embedded Redis, local Ray, Serve on a free loopback port, the configured
policy — cpu-tiny by default), then:

1. overhead, side by side in one run: the same request (an OmniRef example case, fixed seed)
   alternately as a direct ``policy.generate`` call in this process and as ``POST /v1/generations``
   to the gateway replica (which serves HTTP itself, services/gateway/deployments.py), one at a time. Overhead = median HTTP
   round trip - median direct call; target: under max(5 % of the direct call, 10 ms).
2. load: ``--clients`` concurrent clients (default 4 x capacity, capacity = queue_limit x replicas)
   for ``--rounds`` rounds of ``--seconds`` each. Every answer must be 200 or 429 (with
   Retry-After); RSS of the Serve replica processes is printed before, after each round, and its
   growth between the last rounds (steady state) must stay under ``--max-growth-mb``.

Prints a table and one JSON line; exits 1 when a status, liveness or memory check fails (the overhead
target is reported, not enforced: on a shared 2-core box it measures the box as much as the code).

    .venv/bin/python scripts/load_gateway.py [--config cpu-tiny] [--clients 32] [--seconds 10]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

EXAMPLES = Path(os.environ.get("DYREF_OMNIREF_EXAMPLES", ROOT / "data" / "omniref" / "examples"))


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def replica_rss_mb() -> dict[str, float]:
    """RSS (MB) of every Serve replica process of the gateway, by process title."""
    try:
        import psutil
    except ImportError:
        return {}
    out = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            title = " ".join(p.info["cmdline"] or [])
            if "ServeReplica:gateway:" in title:
                # the title's method suffix changes while it serves ("Gateway.check_health..."): drop it
                name = title.split("ServeReplica:gateway:", 1)[1].split()[0].split(".")[0]
                out[f"{name}[{p.info['pid']}]"] = p.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def case_body(case_id: int, seed: int = 11):
    cases = json.loads((EXAMPLES / "cases.json").read_text())
    case = cases[case_id % len(cases)]
    refs = [(r["role"], (EXAMPLES / r["path"]).read_bytes()) for r in case["references"]]
    body = {"prompt": case["prompt"], "seed": seed,
            "references": [{"role": role, "image": base64.b64encode(b).decode()} for role, b in refs]}
    return body, case["prompt"], refs


def overhead(url: str, policy_cfg, rounds: int, case_id: int) -> dict:
    import httpx
    import torch

    from common.images import decode_image
    from common.policy import build_policy
    torch.set_num_threads(1)  # as the replica does
    policy = build_policy(policy_cfg)
    policy.eval()
    body, prompt, refs = case_body(case_id)
    pil = [(role, decode_image(b)) for role, b in refs]
    from common.images import encode_image
    direct, direct_full, http, server_gen = [], [], [], []
    with httpx.Client(base_url=url, timeout=120) as c:
        for i in range(rounds + 3):
            t0 = time.perf_counter()
            policy.generate(prompt, pil, n=1, seed=body["seed"], num_inference_steps=policy_cfg.eval_inference_steps)
            d = time.perf_counter() - t0
            # the same work a caller without the gateway still does: decode the files, encode the result
            t0 = time.perf_counter()
            imgs = policy.generate(prompt, [(role, decode_image(b)) for role, b in refs], n=1, seed=body["seed"],
                                   num_inference_steps=policy_cfg.eval_inference_steps)
            base64.b64encode(encode_image(imgs[0], "png"))
            df = time.perf_counter() - t0
            t0 = time.perf_counter()
            r = c.post("/v1/generations", json=body)
            h = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 3:  # warm-up rounds dropped
                direct.append(d)
                direct_full.append(df)
                http.append(h)
                server_gen.append(r.json()["timings"]["generate_s"])
    md, mh, mg = statistics.median(direct), statistics.median(http), statistics.median(server_gen)
    mf = statistics.median(direct_full)
    return {"direct_p50_ms": md * 1e3, "http_p50_ms": mh * 1e3, "replica_generate_p50_ms": mg * 1e3,
            "direct_full_p50_ms": mf * 1e3, "overhead_vs_full_ms": (mh - mf) * 1e3,
            "overhead_ms": (mh - md) * 1e3, "overhead_pct": 100 * (mh - md) / md,
            "overhead_vs_replica_ms": (mh - mg) * 1e3, "target_ms": max(0.05 * md, 0.010) * 1e3,
            "direct_p95_ms": pct(direct, 95) * 1e3, "http_p95_ms": pct(http, 95) * 1e3, "rounds": rounds}


async def load_round(url: str, clients: int, seconds: float, case_id: int, retry_scale: float) -> dict:
    import httpx
    body, _, _ = case_body(case_id)
    lat_ok, statuses, bad = [], {}, []
    deadline = time.monotonic() + seconds

    async def client(k: int):
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/generations", json=body | {"seed": k})
                except httpx.HTTPError as e:
                    bad.append(f"{type(e).__name__}")
                    continue
                dt = time.perf_counter() - t0
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    lat_ok.append(dt)
                elif r.status_code == 429:
                    if "retry-after" not in r.headers:
                        bad.append("429 without Retry-After")
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)) * retry_scale)  # < 1: impatient
                else:
                    bad.append(f"{r.status_code}: {r.text[:200]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    return {"statuses": statuses, "bad": bad[:5], "n_bad": len(bad), "ok_per_s": len(lat_ok) / wall,
            "p50_ms": pct(lat_ok, 50) * 1e3, "p95_ms": pct(lat_ok, 95) * 1e3, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", "-c", default=None, help="Profile (default cpu-tiny).")
    ap.add_argument("--clients", type=int, default=None, help="Concurrent clients (default 4 x capacity).")
    ap.add_argument("--queue-limit", type=int, default=4, help="gateway.queue_limit for this run.")
    ap.add_argument("--seconds", type=float, default=8.0, help="Seconds per load round.")
    ap.add_argument("--rounds", type=int, default=3, help="Load rounds (memory is compared between the last two).")
    ap.add_argument("--overhead-rounds", type=int, default=30, help="Alternating direct/HTTP pairs.")
    ap.add_argument("--retry-scale", type=float, default=0.1, help="Clients wait Retry-After x this after a 429.")
    ap.add_argument("--case", type=int, default=0, help="OmniRef example case index (0-3).")
    ap.add_argument("--max-growth-mb", type=float, default=50.0, help="Allowed replica RSS growth between the last two rounds.")
    args = ap.parse_args()

    from ray import serve

    from common.config import load_config
    from common.transport import free_port
    from services.gateway.deployments import start_gateway
    from dyref.local import local_stack

    cfg = load_config(args.config)
    cfg.gateway.queue_limit = args.queue_limit
    capacity = cfg.gateway.queue_limit * cfg.gateway.replicas
    clients = args.clients or 4 * capacity
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    checks: dict[str, bool] = {}
    with local_stack(cfg) as stack:
        start_gateway(cfg.gateway, cfg.policy, cfg.redis, stack.redis_url, port=port)
        import httpx
        deadline = time.monotonic() + 180
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                print("gateway never became ready", file=sys.stderr)
                return 1
            time.sleep(0.5)
        ov = overhead(url, cfg.policy, args.overhead_rounds, args.case)
        print(f"overhead ({ov['rounds']} alternating pairs, case {args.case}, profile {cfg.profile}):")
        print(f"  direct policy.generate  p50 {ov['direct_p50_ms']:8.1f} ms  p95 {ov['direct_p95_ms']:8.1f} ms")
        print(f"  direct incl. decode refs + encode PNG p50 {ov['direct_full_p50_ms']:.1f} ms")
        print(f"  HTTP /v1/generations    p50 {ov['http_p50_ms']:8.1f} ms  p95 {ov['http_p95_ms']:8.1f} ms"
              f"  (replica generate_s p50 {ov['replica_generate_p50_ms']:.1f} ms)")
        print(f"  gateway overhead        {ov['overhead_ms']:8.1f} ms = {ov['overhead_pct']:.1f} %"
              f"  (target < {ov['target_ms']:.1f} ms; HTTP - replica generate_s: {ov['overhead_vs_replica_ms']:.1f} ms;"
              f" vs direct incl. decode/encode: {ov['overhead_vs_full_ms']:.1f} ms)")
        checks["overhead_within_target"] = ov["overhead_ms"] <= ov["target_ms"]

        rss = [replica_rss_mb()]
        print(f"load: {clients} clients, capacity {capacity} (queue_limit {cfg.gateway.queue_limit} x "
              f"{cfg.gateway.replicas} replica(s)), {args.rounds} x {args.seconds:g} s")
        print("  replica RSS before: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss[0].items()))
        rounds = []
        for i in range(args.rounds):
            res = asyncio.run(load_round(url, clients, args.seconds, args.case, args.retry_scale))
            rss.append(replica_rss_mb())
            rounds.append(res)
            print(f"  round {i + 1}: statuses {res['statuses']}  ok/s {res['ok_per_s']:.1f}  p50 {res['p50_ms']:.0f} ms"
                  f"  p95 {res['p95_ms']:.0f} ms  unexpected {res['n_bad']} {res['bad'][:2]}")
            print("    replica RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss[-1].items()))
        alive = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        checks["only_200_or_429"] = all(r["n_bad"] == 0 and set(r["statuses"]) <= {200, 429} for r in rounds)
        checks["saw_429_over_capacity"] = any(429 in r["statuses"] for r in rounds)
        checks["alive_after"] = alive
        growth = {k: rss[-1].get(k, 0) - rss[-2].get(k, 0) for k in rss[-1]} if len(rss) >= 3 else {}
        checks["bounded_memory"] = all(g <= args.max_growth_mb for g in growth.values())
        total_growth = {k: rss[-1].get(k, 0) - rss[0].get(k, 0) for k in rss[-1]}
        print("  RSS growth, last round: " + ", ".join(f"{k} {v:+.1f} MB" for k, v in growth.items())
              + " | since start: " + ", ".join(f"{k} {v:+.1f} MB" for k, v in total_growth.items()))
        serve.shutdown()
    print("checks: " + ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in checks.items()))
    print(json.dumps({"overhead": ov, "load": rounds, "rss_mb": rss, "checks": checks, "clients": clients,
                      "capacity": capacity}, default=float))
    return 0 if all(v for k, v in checks.items() if k != "overhead_within_target") else 1


if __name__ == "__main__":
    sys.exit(main())
