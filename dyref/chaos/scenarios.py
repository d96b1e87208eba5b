"""The chaos scenarios: one fault each on the local stack, each bounded in time, each ending in the
ledger check of dyref.chaos.harness. ``SCENARIOS`` maps name -> (function, runs in CI, what).

Every function takes (workdir, redis_url) - the shared Redis for scenarios that leave Redis alone;
scenarios that restart, fill or break Redis start their own - and returns an Outcome.

What "lost" means for the learner kill: groups the learner consumed (settled in Redis) after its
last checkpoint had their gradient thrown away when it restarted from that checkpoint. They are
not lost tasks - each was counted exactly once, and the audit's `consumed` keeps them - so they
are reported as ``rolled_back`` = consumed - final steps x groups_per_step, not in ``lost``.
Checkpointing every step (rl.checkpoint_every=1) makes that zero.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import yaml

from common import metrics as M
from common.transport import Keys, connect, free_port
from dyref.chaos.faults import ScorerFault
from dyref.chaos.harness import (Loop, Outcome, actor_pid, chaos_cfg, counter_value, kill_pid, ledger, own_redis,
                                    replica_actors, small_source, wait_until)

__all__ = ["SCENARIOS", "run_scenario"]


def _finish(name: str, loop: Loop, cfg, t0: float, outcome: str, extra_ok: bool = True, rolled_back: int = 0,
            steps: int | None = None, **checks) -> Outcome:
    loop.stop()
    r = connect(loop.url, cfg.redis)
    try:
        steps = loop.recipe.state.step if steps is None else steps
        lost, dup, audit, chk = ledger(r, Keys(cfg.redis.namespace), cfg, steps, rolled_back)
    finally:
        r.close()
    chk.update(checks)
    return Outcome(name, extra_ok and lost == 0 and dup == 0, outcome, lost, dup, audit, chk, time.monotonic() - t0)


def _actor_metric(handle, metric_name: str, **labels) -> float:
    """A counter's value inside an actor's process (each actor has its own registry): the sum of
    the children whose labels match `labels` (all children when none are given)."""
    import ray

    def read(_self):
        from common import metrics
        total = 0.0
        for fam in getattr(metrics, metric_name).collect():
            for s in fam.samples:
                if s.name.endswith(("_created",)):
                    continue
                if all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total
    return float(ray.get(handle.__ray_call__.remote(read), timeout=30))


# ---- scenarios ---------------------------------------------------------------------------------
def generator_kill(workdir: Path, redis_url: str) -> Outcome:
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir)
    loop = Loop(cfg, redis_url, generators=2)
    loop.train(2)
    wait_until(lambda: loop.recipe.tasks.pending() > 0, 30)  # a generator holds a task mid-group
    victim, _ = loop.gens[0]
    pid = actor_pid(victim)
    kill_pid(pid)
    taken = loop.train(4)
    return _finish("generator-kill", loop, cfg, t0, f"kill -9 generator pid {pid} mid-group; survivor reclaimed its "
                   f"task; {2 + taken}/6 steps", extra_ok=taken == 4)


def reward_replica_kill(workdir: Path, redis_url: str) -> Outcome:
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir, rewards={"retries": 6, "timeout_s": 10})
    loop = Loop(cfg, redis_url, generators=1)
    loop.train(2)
    [replica] = replica_actors("rewards", "scorer-colour")
    pid = actor_pid(replica)
    kill_pid(pid)
    taken = loop.train(3)
    new = replica_actors("rewards", "scorer-colour")
    new_pid = actor_pid(new[0]) if new else None
    errors = _actor_metric(loop.gens[0][0], "REWARD_ERRORS", scorer="colour")
    return _finish("reward-replica-kill", loop, cfg, t0,
                   f"kill -9 replica pid {pid}; Serve restarted it (pid {new_pid}); {errors:.0f} failed calls retried; "
                   f"{2 + taken}/5 steps", extra_ok=taken == 3 and new_pid not in (None, pid), failed_calls=errors)


def _kill_twice(name: str, workdir: Path, redis_url: str, victim_pid: Callable[[Loop], int], what: str,
                **cfg_kw) -> Outcome:
    """Two start-up steps and three undisturbed ones, then per kill: kill -9 the victim and time the next three steps
    against three undisturbed ones (groups already published hide a kill from the very next step).
    The run must take all its steps with an exact ledger and nothing redone (the audit's
    redelivered count stays 0)."""
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir, **cfg_kw)
    loop = Loop(cfg, redis_url, generators=1)

    def timed_step() -> float:
        t = time.monotonic()
        taken = loop.train(1)
        return time.monotonic() - t if taken == 1 else float("inf")
    loop.train(2)  # start-up (actors loading, first weights) is not a normal step
    normal = [timed_step() for _ in range(3)]
    lost, pids = [], []
    for _ in range(2):
        pids.append(victim_pid(loop))
        kill_pid(pids[-1])
        lost.append(sum(timed_step() for _ in range(3)))
    base = statistics.median(normal)
    lost = [round(h - 3 * base, 1) for h in lost]
    steps = loop.recipe.state.step
    out = _finish(name, loop, cfg, t0, f"kill -9 {what} twice (pids {pids}): {steps}/11 steps, time lost per kill "
                  f"{lost} s (median step {base:.1f} s)", extra_ok=steps == 11, lost_s_per_kill=lost)
    redone = out.audit.get("duplicate", 0)
    if redone:
        out.ok, out.outcome = False, out.outcome + f"; {redone} group(s) redone"
    return out


def generator_kill_twice(workdir: Path, redis_url: str) -> Outcome:
    """Ray restarts the only generator (rl.generator_max_restarts); the new process finishes the task
    the dead one held."""
    return _kill_twice("generator-kill-twice", workdir, redis_url, lambda loop: actor_pid(loop.gens[0][0]),
                       "the only generator")


def reward_replica_kill_twice(workdir: Path, redis_url: str) -> Outcome:
    """Serve replaces the only scorer replica; the generator retries its calls and keeps its task."""
    def pid(_loop: Loop) -> int:
        wait_until(lambda: len(replica_actors("rewards", "scorer-colour")) == 1, 120)
        return actor_pid(replica_actors("rewards", "scorer-colour")[0])
    return _kill_twice("reward-replica-kill-twice", workdir, redis_url, pid, "the only reward replica",
                       rewards={"retries": 6, "timeout_s": 10})


def learner_kill(workdir: Path, redis_url: str) -> Outcome:
    """The learner as its own process (`dyref learner`), SIGKILLed after a checkpoint, then restarted."""
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir, rl={"checkpoint_every": 2})
    path = Path(workdir) / f"{cfg.redis.namespace}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    r = connect(redis_url, cfg.redis)
    keys, gps = Keys(cfg.redis.namespace), cfg.rl.groups_per_step
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "dyref.cli", "learner", "-c", str(path)]
    loop = Loop(cfg, redis_url, generators=2, learner=False)
    consumed = lambda: int(r.hget(keys.audit, "consumed") or 0)  # noqa: E731
    ckpt = Path(cfg.rl.checkpoint_dir) / "latest"
    first = subprocess.Popen(cmd + ["--steps", "50"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        # kill between checkpoints (an odd step with checkpoint_every=2): the steps since are rolled back
        wait_until(lambda: ckpt.exists() and consumed() >= 3 * gps and (consumed() // gps) % 2 == 1, 240, 0.02)
        pid = first.pid
        kill_pid(pid)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = consumed()
    ckpt_step = int(ckpt.read_text().strip().split("-")[1])
    done = subprocess.run(cmd + ["--steps", str(ckpt_step + 3)], env=env, capture_output=True, text=True, timeout=300)
    text = done.stdout
    final = json.loads(text[text.index("{"):]) if "{" in text else {}
    steps = int(final.get("step", -1))
    rolled = at_kill - ckpt_step * gps
    r.close()
    loop.recipe = None
    return _finish("learner-kill", loop, cfg, t0,
                   f"kill -9 learner pid {pid} at {at_kill} groups consumed; resumed from checkpoint step {ckpt_step} "
                   f"to step {steps}; {rolled} groups' gradient rolled back (counted once, not lost)",
                   extra_ok=done.returncode == 0 and steps == ckpt_step + 3, rolled_back=rolled, steps=steps,
                   rolled_back_groups=rolled)


def trainer_worker_kill(workdir: Path, redis_url: str) -> Outcome:
    """Two Ray Train trainer workers (DDP); one SIGKILLed between checkpoints. Ray Train restarts the
    group, the learner resumes it from the last checkpoint and rolls back the steps after it."""
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir, rl={"checkpoint_every": 2,
                                            "learner": {"workers": 2, "cpus_per_worker": 0.5, "start_timeout_s": 240}})
    restarts0 = counter_value(M.TRAINER_RESTARTS)
    loop = Loop(cfg, redis_url, generators=1)
    pids = loop.recipe.trainer.worker_pids()
    killed: dict[str, int] = {}

    def kill_after_step_3() -> None:  # checkpoint at step 2, step 3 after it: step 3 is rolled back
        if wait_until(lambda: loop.recipe.state.step >= 3, 240, 0.01):
            killed["step"] = loop.recipe.state.step
            kill_pid(pids[-1])

    killer = threading.Thread(target=kill_after_step_3, daemon=True)
    killer.start()
    loop.train(6, timeout_s=420)
    killer.join(5)
    restarts = counter_value(M.TRAINER_RESTARTS) - restarts0
    rolled = loop.recipe.rolled_back
    audit_rolled = int(loop.recipe.audit().get("rolled_back", 0))
    steps = loop.recipe.state.step
    return _finish("trainer-worker-kill", loop, cfg, t0,
                   f"kill -9 trainer worker pid {pids[-1]} (of {len(pids)}) at step {killed.get('step')}; "
                   f"{restarts:g} restart(s); {rolled} group(s) of the steps after the checkpoint rolled back; "
                   f"reached step {steps}",
                   extra_ok=len(pids) == 2 and "step" in killed and restarts >= 1 and rolled == audit_rolled
                   and rolled >= cfg.rl.groups_per_step and steps == 6,
                   steps=steps, trainer_restarts=restarts, rolled_back_groups=rolled)


def redis_restart_persistent(workdir: Path, _redis_url: str) -> Outcome:
    t0 = time.monotonic()
    with own_redis(workdir, appendonly=True, fsync_always=True) as server:
        cfg = chaos_cfg(server.url, workdir)
        loop = Loop(cfg, server.url, generators=1)
        loop.train(2)
        before = loop.recipe.audit()
        server.restart(kill=True)  # SIGKILL: only what the AOF fsynced survives
        after = loop.recipe.audit()
        taken = loop.train(3)
        return _finish("redis-restart-aof", loop, cfg, t0,
                       f"kill -9 Redis with appendfsync always, restarted: ledger {before['admitted']} admitted kept "
                       f"({after['admitted']}); {2 + taken}/5 steps", extra_ok=taken == 3 and after == before)


def redis_restart_volatile(workdir: Path, _redis_url: str) -> Outcome:
    """Without persistence Redis comes back empty. Expected: the learner fails loudly
    (RedisStateLost) instead of re-admitting over a lost ledger; restarted, it resumes from its
    checkpoint under a new ledger; generators recreate their consumer group and carry on. Work in
    flight at the restart is gone (counted in `discarded`, never consumed)."""
    from services.learner.audit import RedisStateLost
    from services.learner.rl_recipe import RLRecipe
    t0 = time.monotonic()
    with own_redis(workdir, appendonly=False) as server:
        cfg = chaos_cfg(server.url, workdir)
        loop = Loop(cfg, server.url, generators=1)
        loop.train(2)
        before = loop.recipe.audit()
        server.restart(kill=True)
        error = ""
        try:
            loop.train(2, timeout_s=60)
        except RedisStateLost as e:
            error = str(e)
        step = loop.recipe.state.step
        loop.recipe = RLRecipe(cfg, server.url, small_source()).setup()  # what a supervisor's restart does
        resumed = loop.recipe.state.step
        taken = loop.train(2)
        out = _finish("redis-restart-volatile", loop, cfg, t0,
                      f"Redis restarted empty: learner raised RedisStateLost ({'yes' if error else 'NO'}); resumed at "
                      f"step {resumed}/{step} on a new ledger, {taken}/2 steps; {before['in_flight']} tasks in flight "
                      f"were discarded with Redis", extra_ok=bool(error) and resumed == step and taken == 2,
                      discarded=before["in_flight"], error=error[:120])
        return out


def redis_maxmemory(workdir: Path, _redis_url: str, full_s: float = 8.0) -> Outcome:
    """maxmemory (noeviction) dropped below what Redis holds for `full_s`: every write is refused.
    Expected: producers back off and retry (dyref_redis_oom_rejections), nobody crashes, nothing is
    lost; once memory is available again the run carries on."""
    t0 = time.monotonic()
    with own_redis(workdir, maxmemory_mb=256) as server:
        cfg = chaos_cfg(server.url, workdir)
        loop = Loop(cfg, server.url, generators=1)
        loop.train(2)
        r = connect(server.url)
        used = int(r.info("memory")["used_memory"])
        oom0 = sum(counter_value(M.REDIS_OOM, op=op) for op in ("tasks.add", "groups.ack", "weights.publish"))
        r.config_set("maxmemory", str(max(1, used // 2)))
        result: dict = {}
        th = threading.Thread(target=lambda: result.update(steps=loop.train(3, timeout_s=240)), daemon=True)
        th.start()
        time.sleep(full_s)
        alive_full = not any(_done(ref) for _, ref in loop.gens)  # no generator crashed while full
        r.config_set("maxmemory", str(256 * 2**20))
        th.join(260)
        oom = sum(counter_value(M.REDIS_OOM, op=op) for op in ("tasks.add", "groups.ack", "weights.publish")) - oom0
        gen_oom = sum(_actor_metric(loop.gens[0][0], "REDIS_OOM", op=op) for op in ("groups.add", "tasks.ack"))
        r.close()
        taken = result.get("steps", 0)
        return _finish("redis-maxmemory", loop, cfg, t0,
                       f"maxmemory {used // 2 // 1024} KiB < used {used // 1024} KiB for {full_s:.0f}s: "
                       f"{oom:.0f} learner + {gen_oom:.0f} generator writes refused and retried, no crash; "
                       f"{2 + taken}/5 steps", extra_ok=taken == 3 and alive_full and oom + gen_oom > 0,
                       oom_learner=oom, oom_generator=gen_oom)


def _done(ref) -> bool:
    import ray
    done, _ = ray.wait([ref], timeout=0)
    return bool(done)


def reward_slow(workdir: Path, redis_url: str) -> Outcome:
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir, rewards={"timeout_s": 2.0, "retries": 4})
    loop = Loop(cfg, redis_url, generators=1, reward_fault=ScorerFault("slow", every=2, delay_s=3.0))
    taken = loop.train(3)
    g = loop.gens[0][0]
    timeouts = _actor_metric(g, "REWARD_ERRORS", scorer="colour")  # the timed-out calls (any error type)
    return _finish("reward-slow", loop, cfg, t0, f"every 2nd scorer batch sleeps 3 s > timeout 2 s: {timeouts:.0f} "
                   f"timed-out calls retried with backoff; {taken}/3 steps", extra_ok=taken == 3 and timeouts > 0,
                   timeouts=timeouts)


def reward_garbage(workdir: Path, redis_url: str) -> Outcome:
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir)
    loop = Loop(cfg, redis_url, generators=1, reward_fault=ScorerFault("garbage", every=2))
    taken = loop.train(3)
    g = loop.gens[0][0]
    garbage = _actor_metric(g, "REWARD_ERRORS", scorer="colour", reason="garbage")
    missing = _actor_metric(g, "REWARD_MISSING", scorer="colour")
    return _finish("reward-garbage", loop, cfg, t0, f"every 2nd batch answers NaN/inf/short/ragged/None tables: "
                   f"{garbage:.0f} bad answers, {missing:.0f} scores recorded missing; {taken}/3 steps",
                   extra_ok=taken == 3 and garbage > 0 and missing > 0, garbage_answers=garbage, missing=missing)


def weight_checksum(workdir: Path, redis_url: str) -> Outcome:
    """A published weight blob is corrupted: the generator refuses it, keeps serving the previous
    version, and raises dyref_weight_load_failures{reason="checksum"}; the next good version loads."""
    from services.generator.worker import GeneratorWorker
    from common.rewards.client import RewardClient
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir)
    loop = Loop(cfg, redis_url, generators=1)
    loop.train(2)
    wid = f"chaos-inproc-{cfg.redis.namespace}"
    worker = GeneratorWorker(wid, cfg, redis_url, RewardClient(cfg.rewards))  # in this process: metrics readable
    worker.sync_weights(0, timeout_s=30)
    before = counter_value(M.WEIGHT_LOAD_FAILURES, consumer=wid, reason="checksum")
    kept = worker.version
    bad = loop.recipe.publish()
    r = connect(redis_url, cfg.redis)
    r.set(Keys(cfg.redis.namespace).weights(bad), b"corrupted in transit")
    served = worker.sync_weights(0, timeout_s=0)
    alarms = counter_value(M.WEIGHT_LOAD_FAILURES, consumer=wid, reason="checksum") - before
    good = loop.recipe.publish()  # the learner's next publish
    wait_until(lambda: worker.sync_weights(0, timeout_s=0) == good, 10)
    r.close()
    taken = loop.train(2)
    return _finish("weight-checksum", loop, cfg, t0,
                   f"v{bad} blob corrupted: refused, kept v{served} (was v{kept}), alarm "
                   f"dyref_weight_load_failures={alarms:.0f}; v{good} loaded ({worker.version}); {2 + taken}/4 steps",
                   extra_ok=served == kept and alarms == 1 and worker.version == good and taken == 2,
                   weight_load_failures=alarms)


def gateway_kill(workdir: Path, redis_url: str, seconds: float = 20.0, clients: int = 4) -> Outcome:
    """/generate under load while the gateway's generator replica is kill -9'd: every request gets
    an answer (an image, or an error envelope while the replica is replaced: never a hang)."""
    import httpx

    from services.gateway.deployments import APP_NAME, DEPLOYMENT, start_gateway
    from ray import serve
    t0 = time.monotonic()
    cfg = chaos_cfg(redis_url, workdir)
    port = free_port()
    start_gateway(cfg.gateway, cfg.policy, cfg.redis, redis_url, port=port)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(url), 120, 0.5)
    codes: list = []
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=60) as h:
            while not stop.is_set():
                try:
                    resp = h.post(f"{url}/v1/generations", json={"prompt": "a red square", "num_inference_steps": 2,
                                                                  "width": 32, "height": 32})
                    codes.append(resp.status_code)
                except httpx.TimeoutException:
                    codes.append("timeout")
                except httpx.HTTPError as e:
                    codes.append(type(e).__name__)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    reps = replica_actors(APP_NAME, DEPLOYMENT)
    pid = actor_pid(reps[0]) if reps else None
    if pid:
        kill_pid(pid)
    time.sleep(seconds * 2 / 3)
    recovered = wait_until(lambda: _ready(url), 120, 0.5)
    n_before = len(codes)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(70)
    after = codes[n_before:]
    hung = sum(c == "timeout" for c in codes)
    serve.shutdown()  # the next scenario starts Serve (and its reward app) again
    ok_codes = sum(c == 200 for c in codes)
    errors = {str(c): sum(1 for x in codes if x == c) for c in set(codes) if c != 200}
    return Outcome("gateway-kill", bool(pid) and recovered and hung == 0 and after and all(c == 200 for c in after),
                   f"kill -9 gateway replica pid {pid} under {clients} clients: {ok_codes} images, "
                   f"errors {errors or 'none'}, {hung} hung; recovered={recovered}", hung, 0,
                   {}, {"requests": len(codes), "ok": ok_codes, "errors": errors}, time.monotonic() - t0)


def _ready(url: str) -> bool:
    import httpx
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


SCENARIOS: dict[str, tuple[Callable[[Path, str], Outcome], bool, str]] = {
    "generator-kill": (generator_kill, True, "kill -9 a generator actor mid-group"),
    "reward-replica-kill": (reward_replica_kill, False, "kill -9 the reward Serve replica"),
    "generator-kill-twice": (generator_kill_twice, False, "kill -9 the only generator, twice"),
    "reward-replica-kill-twice": (reward_replica_kill_twice, False, "kill -9 the only reward replica, twice"),
    "learner-kill": (learner_kill, True, "kill -9 the learner process; resume from checkpoint"),
    "trainer-worker-kill": (trainer_worker_kill, True, "kill -9 one of two Ray Train trainer workers; resume from checkpoint"),
    "redis-restart-aof": (redis_restart_persistent, True, "kill -9 Redis with AOF fsync always; restart"),
    "redis-restart-volatile": (redis_restart_volatile, True, "restart Redis without persistence"),
    "redis-maxmemory": (redis_maxmemory, True, "Redis at maxmemory (noeviction) for a while"),
    "reward-slow": (reward_slow, False, "a slow reward deployment (timeouts, retries with backoff)"),
    "reward-garbage": (reward_garbage, True, "a reward deployment answering garbage"),
    "weight-checksum": (weight_checksum, True, "a weight blob failing its checksum"),
    "gateway-kill": (gateway_kill, False, "kill -9 the gateway's generator replica under /generate load"),
}


def run_scenario(name: str, workdir: Path, redis_url: str) -> Outcome:
    """Run one scenario; an exception is a FAIL row (with the error), never a crash of the suite."""
    fn = SCENARIOS[name][0]
    t0 = time.monotonic()
    try:
        return fn(Path(workdir), redis_url)
    except Exception as e:  # noqa: BLE001 - the table reports it
        return Outcome(name, False, f"error: {type(e).__name__}: {str(e)[:200]}", seconds=time.monotonic() - t0)
