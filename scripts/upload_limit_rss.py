"""Gateway memory under hostile uploads: N concurrent over-limit bodies (chunked, no Content-Length),
each 10x the body limit; prints the gateway process's RSS growth and the answers.

    python scripts/upload_limit_rss.py                      # own gateway process (uvicorn, real app)
    python scripts/upload_limit_rss.py --url http://127.0.0.1:8000 --pid <ingress replica pid>

With no --url, a gateway (the real FastAPI app, model not loaded: the limit is checked before any
model work) is started in a child process on a free loopback port with a small limit
(``max_references=1``, ``--max-image-bytes``), so the test sends megabytes, not gigabytes. The
pass mark of issue 20 is RSS growth under 2x the limit in total; the gateway cuts every upload at
the limit (so growth stays under N x the limit), and prints whether the total mark is met.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SERVER = """
import sys, uvicorn
from common.config import GatewayConfig, PolicyConfig
from services.gateway.api import build_api
from services.gateway.deployments import LocalBackend
from services.gateway.engine import GeneratorCore
cfg = GatewayConfig(max_references=1, max_image_bytes=int(sys.argv[2]))
app = build_api(cfg, LocalBackend(GeneratorCore(PolicyConfig(), None)), None)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off")
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(host: str, port: int, path: str, total: int, chunk: int, out: list, i: int) -> None:
    t0 = time.monotonic()
    s = socket.create_connection((host, port), timeout=120)
    sent = 0
    status = 0
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        piece = b"{" + b" " * (chunk - 1)
        while sent < total:
            s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sent += len(piece)
            piece = b" " * chunk
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    try:
        buf = s.recv(4096)
        status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        pass
    s.close()
    out[i] = (status, sent, time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running gateway (then --pid and --limit are needed)")
    ap.add_argument("--pid", type=int, help="pid whose RSS is measured (the ingress replica)")
    ap.add_argument("--limit", type=int, help="the gateway's body limit in bytes (with --url)")
    ap.add_argument("--max-image-bytes", type=int, default=1024 * 1024)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--times", type=float, default=10.0, help="each body is this many times the limit")
    ap.add_argument("--chunk", type=int, default=64 * 1024)
    ap.add_argument("--path", default="/v1/generations")
    a = ap.parse_args()
    proc = None
    if a.url:
        if not (a.pid and a.limit):
            ap.error("--url needs --pid and --limit")
        host, port = a.url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        port, pid, limit = int(port), a.pid, a.limit
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        host = "127.0.0.1"
        limit = 1 * (a.max_image_bytes * 4 // 3 + 1024) + 1024 * 1024
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port), str(a.max_image_bytes)], env=env, cwd=ROOT)
        pid = proc.pid
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("gateway did not start", file=sys.stderr)
                    return 2
                time.sleep(0.2)
    try:
        time.sleep(1.0)
        base = rss_mb(pid)
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                time.sleep(0.02)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        total = int(a.times * limit)
        out: list = [None] * a.concurrency
        t0 = time.monotonic()
        threads = [threading.Thread(target=upload, args=(host, port, a.path, total, a.chunk, out, i))
                   for i in range(a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        time.sleep(0.5)
        done.set()
        sampler.join()
        growth = peak[0] - base
        statuses = sorted({o[0] for o in out})
        sent = sum(o[1] for o in out)
        mb = 1024 * 1024
        print(f"limit {limit / mb:.2f} MB; {a.concurrency} concurrent chunked uploads of {total / mb:.1f} MB each "
              f"({a.times:g}x the limit)")
        print(f"answers: {statuses}; bytes the clients got to send: {sent / mb:.1f} MB of "
              f"{a.concurrency * total / mb:.1f} MB; wall {wall:.2f} s")
        print(f"gateway RSS: before {base:.1f} MB, peak {peak[0]:.1f} MB, growth {growth:.1f} MB "
              f"= {growth * mb / limit:.2f}x the limit in total, {growth * mb / limit / a.concurrency:.2f}x per upload")
        # every upload is cut at its own limit (413), and the gateway-wide receive budget (one limit by
        # default) answers 503 to uploads whose next chunk does not fit: together they hold about one limit
        ok = set(statuses) <= {413, 503} and growth * mb < a.concurrency * limit
        print(f"each upload cut at the limit: {'yes' if ok else 'NO'}; issue 20's total mark (< 2x the limit): "
              f"{'met' if growth * mb < 2 * limit else 'not met'}")
        return 0 if ok else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
