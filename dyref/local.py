"""Bring up the local stack (Redis, Ray) the way every service expects it, and report its health."""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common.config import DyRefConfig, RayConfig
from common.transport import EmbeddedRedis, connect, ensure_redis

__all__ = ["init_ray", "LocalStack", "local_stack", "redis_health", "ray_health", "RunFile", "end_stale_runs", "run_dir"]

log = logging.getLogger("dyref.local")


def init_ray(cfg: RayConfig) -> None:
    """Start (or join) Ray; a local cluster binds loopback only (``ray.node_ip``, default 127.0.0.1),
    without dashboard or usage stats.

    Ray 2.x turns a loopback ``_node_ip_address`` into the machine's external address unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and reads that variable once, when ``ray`` is first
    imported: set only before ``import ray``, it was ignored whenever anything had imported Ray
    earlier (the CLI, Serve), and GCS, raylet, workers and agents listened on every interface.
    So for a loopback node the variable is forced (the processes Ray starts inherit it) and the
    already-imported constant is corrected too."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")
    local_only = not cfg.address and _is_loopback(cfg.node_ip)
    if local_only:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if local_only:
        from ray._private import ray_constants
        ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by services.get_node_ip_address
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, namespace=cfg.namespace, log_to_driver=False)
        return
    ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, namespace=cfg.namespace,
             object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
             include_dashboard=cfg.include_dashboard, _node_ip_address=cfg.node_ip,
             _temp_dir=cfg.temp_dir, log_to_driver=False, configure_logging=True, logging_level="WARNING")


def _is_loopback(host: str | None) -> bool:
    import ipaddress
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def redis_health(url: str) -> dict:
    r = connect(url)
    try:
        t0 = time.perf_counter()
        r.ping()
        info = r.info()
        return {"ok": True, "url": url.split("@")[-1], "version": info.get("redis_version"),
                "used_memory_mb": round(info.get("used_memory", 0) / 2**20, 1),
                "maxmemory_policy": info.get("maxmemory_policy"), "ping_ms": round((time.perf_counter() - t0) * 1e3, 2)}
    except Exception as e:  # health reports, it does not raise
        return {"ok": False, "url": url.split("@")[-1], "error": str(e)}
    finally:
        r.close()


def ray_health() -> dict:
    import ray
    if not ray.is_initialized():
        return {"ok": False, "error": "ray not initialised"}
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"ok": bool(nodes), "nodes": len(nodes), "node_ip": nodes[0]["NodeManagerAddress"] if nodes else None,
            "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0)}


@dataclass
class LocalStack:
    redis_url: str
    embedded: EmbeddedRedis | None
    ray_started: bool = False
    extra: dict = field(default_factory=dict)

    def health(self) -> dict:
        out = {"redis": redis_health(self.redis_url) | {"embedded": self.embedded is not None}}
        if self.ray_started:
            out["ray"] = ray_health()
        return out


def run_dir() -> Path:
    """Where each process that starts a local stack records what it started (one ``<pid>.json``):
    ``$DYREF_RUN_DIR``, else ``<tmp>/dyref-run-<uid>``. Machine-wide on purpose: a start finds the
    stale stacks of any earlier process of this user that was killed -9."""
    d = os.environ.get("DYREF_RUN_DIR")
    return Path(d) if d else Path(tempfile.gettempdir()) / f"dyref-run-{os.getuid()}"


def _proc_key(p) -> dict:
    return {"pid": p.pid, "create_time": p.create_time(), "name": p.name()}


def _same_proc(entry: dict):
    """The live psutil.Process for a recorded entry, or None if it ended (or its pid was reused)."""
    import psutil
    try:
        p = psutil.Process(entry["pid"])
        if abs(p.create_time() - entry["create_time"]) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None


def _session_procs(session_dir: str | None) -> list:
    """Processes of this Ray session: those whose command line names it (GCS, raylet, log monitor)
    and Ray's renamed processes (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, workers) that
    hold its log files open. They outlive a driver killed -9."""
    import psutil
    if not session_dir:
        return []
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            if p.pid == os.getpid():
                continue
            cmd = p.info["cmdline"] or []
            if any(session_dir in a for a in cmd):
                found.append(p)
            elif (p.info["name"] or "").startswith("ray::") or (cmd and cmd[0].startswith("ray::")):
                if any(f.path.startswith(session_dir) for f in p.open_files()):
                    found.append(p)
        except psutil.Error:
            pass
    return found


def _is_ray_process(p) -> bool:
    import psutil
    try:
        name = p.name()
        if name.startswith("ray::") or name in ("gcs_server", "raylet"):
            return True
        return any("/ray/" in a or a.startswith("ray::") for a in p.cmdline()[:3])
    except psutil.Error:
        return False


def _end(procs: list, grace_s: float = 5.0) -> list:
    """SIGTERM, then SIGKILL what is left after ``grace_s``; returns the pids ended."""
    import psutil
    procs = [p for p in {p.pid: p for p in procs}.values() if p.pid != os.getpid()]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in procs]


class RunFile:
    """What this process started (embedded Redis, the local Ray's processes), kept on disk while it
    runs so that a later start can end it if this process dies without cleaning up (kill -9).

    A background thread refreshes it every ``refresh_s``: Ray starts its agents and workers after
    ``ray.init`` returns. Only what the stack started is recorded (never other children of this
    process, such as a Redis a test started). Only processes whose pid *and* start time match the record are ever
    ended, so a reused pid is never touched; the owner is recorded the same way."""

    def __init__(self, refresh_s: float = 5.0):
        import psutil
        self.path = run_dir() / f"{os.getpid()}.json"
        me = psutil.Process()
        self.record: dict = {"owner": _proc_key(me), "argv": " ".join(me.cmdline())[:300],
                             "ray_session_dir": None, "procs": {}}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresh_s = refresh_s
        self._thread: threading.Thread | None = None
        try:
            self._baseline = {c.pid for c in me.children(recursive=True)}
        except psutil.Error:
            self._baseline = set()

    def start(self) -> "RunFile":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="dyref-runfile", daemon=True)
        self._thread.start()
        return self

    def set_session_dir(self, session_dir: str | None) -> None:
        self.record["ray_session_dir"] = session_dir
        self.refresh()

    def add(self, pid: int) -> None:
        """Record a process this stack started (with its descendants from then on)."""
        import psutil
        with self._lock:
            try:
                self.record["procs"].setdefault(str(pid), _proc_key(psutil.Process(pid)))
            except psutil.Error:
                pass
        self.refresh()

    def refresh(self) -> None:
        """Add the descendants of the recorded processes (raylet's agents and workers); write."""
        import psutil
        with self._lock:
            try:
                # Ray's processes appear while ray.init still waits for its node: a kill -9 then must
                # find them too. New children of this process that are Ray's (never other children)
                found = [c for c in psutil.Process().children(recursive=True)
                         if c.pid not in self._baseline and _is_ray_process(c)]
                for p in map(_same_proc, list(self.record["procs"].values())):
                    if p is None:
                        continue
                    try:
                        found.extend(p.children(recursive=True))
                    except psutil.Error:
                        pass
                for p in found:
                    try:
                        self.record["procs"].setdefault(str(p.pid), _proc_key(p))
                    except psutil.Error:
                        pass
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.record))
                os.replace(tmp, self.path)
            except (OSError, psutil.Error) as e:  # a record is best effort; the stack runs without it
                log.debug("run file %s not written: %s", self.path, e)

    def _loop(self) -> None:
        # Ray starts its agents and first workers within seconds of ray.init: look often at first
        t0 = time.monotonic()
        while not self._stop.wait(0.5 if time.monotonic() - t0 < 60 else self._refresh_s):
            self.refresh()

    def live(self) -> list:
        """The recorded processes still running, and this session's processes (even unrecorded)."""
        with self._lock:
            entries = list(self.record["procs"].values())
        procs = [p for p in map(_same_proc, entries) if p is not None]
        return procs + _session_procs(self.record["ray_session_dir"])

    def close(self, sweep: bool = True, grace_s: float = 5.0) -> list:
        """Stop refreshing; end whatever recorded process is still alive (after a normal shutdown
        nothing should be); remove the file. Returns the pids it had to end."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        ended = _end(self.live(), grace_s) if sweep else []
        try:
            self.path.unlink()
        except OSError:
            pass
        return ended


def end_stale_runs(grace_s: float = 5.0) -> dict[int, list[int]]:
    """End every stack recorded in :func:`run_dir` whose owner is no longer running (it was killed
    -9, or crashed before cleaning up), and remove its record. Stacks of live owners are left
    alone. Returns {dead owner pid: [pids ended]}."""
    out: dict[int, list[int]] = {}
    d = run_dir()
    if not d.is_dir():
        return out
    for f in sorted(d.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if _same_proc(rec["owner"]) is not None:
            continue  # a running stack, not ours to end
        procs = [p for p in map(_same_proc, rec.get("procs", {}).values()) if p is not None]
        procs += _session_procs(rec.get("ray_session_dir"))
        ended = _end(procs, grace_s)
        if ended:
            log.warning("ended %d process(es) of a stale local stack left by pid %s (%s)", len(ended),
                        rec["owner"]["pid"], rec.get("argv", ""))
        out[rec["owner"]["pid"]] = ended
        try:
            f.unlink()
        except OSError:
            pass
    return out


_EXIT_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGHUP")) if s)


def _raise_exit(signum, _frame):
    """SIGTERM/SIGHUP end the process as an exception in the main thread (SIGINT: KeyboardInterrupt,
    as Python does), so every ``finally`` runs: the stack is shut down as on a normal exit."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _install_exit_handlers() -> dict | None:
    """Install :func:`_raise_exit` for SIGTERM/SIGINT/SIGHUP; returns the old handlers (None off
    the main thread, where Python allows no handler)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    old = {s: signal.getsignal(s) for s in _EXIT_SIGNALS}
    for s in _EXIT_SIGNALS:
        signal.signal(s, _raise_exit)
    return old


def _shutting_down(run: RunFile) -> None:
    """While the stack shuts down, a second signal ends the recorded processes at once and exits."""
    if threading.current_thread() is not threading.main_thread():
        return

    def hard(signum, _frame):
        _end(run.live(), grace_s=0.5)
        run.close(sweep=False)
        os._exit(128 + signum)
    for s in _EXIT_SIGNALS:
        signal.signal(s, hard)


def _restore(old: dict | None) -> None:
    if old is not None and threading.current_thread() is threading.main_thread():
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def local_stack(cfg: DyRefConfig, with_ray: bool = True):
    """Redis (embedded if none answers) and a local Ray; torn down on exit.

    Torn down the same way when the process gets SIGTERM, SIGINT or SIGHUP (handlers raise in the
    main thread, so this ``finally`` runs; a second signal during the shutdown ends the recorded
    processes at once). What the stack starts is recorded in a :class:`RunFile`; a start first
    ends the stacks that earlier processes, killed -9, left behind (:func:`end_stale_runs`)."""
    stale = end_stale_runs()
    if any(stale.values()):
        log.warning("ended stale local stacks: %s", {k: len(v) for k, v in stale.items()})
    run = RunFile().start()
    old = _install_exit_handlers()
    server = None
    stack = None
    try:
        url, server = ensure_redis(cfg.redis)
        if server and server.proc:
            run.add(server.proc.pid)
        stack = LocalStack(url, server)
        if with_ray:
            init_ray(cfg.ray)
            _install_exit_handlers()  # ray.init installed its own SIGTERM handler
            stack.ray_started = True
            if not cfg.ray.address:
                for pid in _ray_node_pids():
                    run.add(pid)
                run.set_session_dir(_ray_session_dir())
        yield stack
    finally:
        _shutting_down(run)
        try:
            if stack is not None and stack.ray_started:
                import ray
                if not cfg.ray.address:  # our own cluster; on a shared one Serve belongs to everyone
                    try:
                        from ray import serve
                        serve.shutdown()
                    except Exception:
                        pass
                ray.shutdown()
            if server:
                server.stop()
        finally:
            left = run.close()
            if left:
                log.info("ended %d process(es) the shutdown had left: %s", len(left), left)
            _restore(old)


def _ray_node_pids() -> list[int]:
    """The processes ``ray.init`` started for a local node (GCS, raylet, log monitor, ...)."""
    try:
        import ray
        node = ray._private.worker._global_node
        return [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    except Exception:  # Ray changed its internals: the session scan still finds them
        return []


def _ray_session_dir() -> str | None:
    try:
        import ray
        return ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # connected to a remote cluster, or Ray changed its internals
        return None
