"""The distributed RL loop through the real path: Redis streams, Ray actors, Serve, weight broadcast.

Tiny Flux2Klein policy (full fine-tune, as docs/measurements.md §7 found learns fastest) and a learnable
reward (closeness of the mean colour to a fixed RGB). One module-scoped Ray; each test has its
own Redis namespace and checkpoint folder.
"""
from __future__ import annotations

import statistics
import uuid

import pytest

from common.config import load_config
from dyref.launch import run_rl, wait_for
from services.learner.rl_recipe import RLRecipe
from services.learner.tasks import TaskSource, synthetic_cases

pytestmark = pytest.mark.integration



def tiny_rl_cfg(redis_server, tmp_path, **rl):
    ns = f"rl{uuid.uuid4().hex[:8]}"
    over = {
        "redis": {"url": redis_server.url, "namespace": ns, "claim_idle_ms": 1500, "embedded": False},
        "policy": {"finetune": "full", "height": 64, "width": 64, "reference_size": 64, "num_inference_steps": 6,
                   "sde": {"dynamics": "flow-sde", "noise_level": 1.0, "train_steps": [0, 1], "num_train_steps": 1}},
        "rl": {"group_size": 8, "groups_per_step": 4, "lr": 2e-3, "clip_range": 1e-4, "max_staleness": 1,
               "publish_every": 1, "checkpoint_every": 5, "checkpoint_dir": str(tmp_path / "ckpt"),
               "kl": {"beta": 0.0}, "ema": {"enabled": False}, "advantage": "grpo",
               "dar": {"enabled": False}, "drs": {"enabled": False}, **rl},
        "rewards": {"components": [{"name": "colour", "scorer": "colour", "weight": 1.0, "against": "none"}],
                    "timeout_s": 30, "retries": 2},
    }
    return load_config("cpu-tiny", over)


def source(n=4):
    return TaskSource(synthetic_cases(n, seed=3, size=64, ref_size=64, max_refs=2), seed=0)


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _task_ids(queue) -> set[str]:
    """Task ids of the entries still in the task stream (acked entries are deleted)."""
    return {_text(f[b"task_id"] if b"task_id" in f else f["task_id"]) for _, f in queue.r.xrange(queue.stream)}


def _group_task_ids(queue) -> set[str]:
    """Task ids of the group headers still in the group stream."""
    from common.schemas import GroupHeader
    return {GroupHeader.model_validate_json(_text(f[b"header"] if b"header" in f else f["header"])).task_id
            for _, f in queue.r.xrange(queue.stream)}


@pytest.mark.parametrize("workers, transport", [(1, "redis"), (2, "redis"), (1, "direct")])
def test_reward_rises_versions_flow_and_groups_count_once(workers, transport, ray_cluster, redis_server, tmp_path):
    # workers=2: the trainer as two Ray Train DDP workers (gloo), each group trained whole on one;
    # direct: the weights go from the learner's weight source to the generator over gloo, not Redis
    cfg = tiny_rl_cfg(redis_server, tmp_path, total_steps=40,
                      learner={"workers": workers, "cpus_per_worker": 0.5, "weight_transport": transport})
    recipe, state, statuses = run_rl(cfg, cfg.redis.url, source(), generators=1)
    rewards = [h["reward/colour/mean"] for h in state.history]
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    spread = statistics.mean(h["reward/colour/std"] for h in state.history[:5])
    assert last - first > 2 * spread, f"reward did not rise: first {first:.4f} last {last:.4f} (within-step std {spread:.4f})"
    # weights flowed: the generator served recent versions, and no group was stale
    assert statuses[0]["version"] >= state.version - 1 > 30
    assert max(h["data/version_lag_mean"] for h in state.history) <= cfg.rl.max_staleness
    audit = recipe.audit()
    assert audit["consumed"] == 40 * cfg.rl.groups_per_step
    assert audit["duplicate"] == 0 and audit["dead_lettered"] == 0 and audit["dropped_stale"] == 0
    assert audit["admitted"] == audit["consumed"] + audit["in_flight"]
    latest = recipe.weights.latest()
    assert latest.transport == transport
    # on the direct path Redis holds the metadata only; the generator loaded every version it
    # served from the source (a failed or refused fetch would be counted)
    assert recipe.r.exists(recipe.keys.weights(latest.version, 0)) == (transport == "redis")
    assert statuses[0]["weight_failures"] == {}


def test_killed_generator_task_is_redone_once_and_learner_resumes(ray_cluster, redis_server, tmp_path):
    import ray
    from services.generator.actor import start_generators
    from dyref.launch import start_reward_app
    cfg = tiny_rl_cfg(redis_server, tmp_path, total_steps=1000)
    start_reward_app(cfg)
    recipe = RLRecipe(cfg, cfg.redis.url, source()).setup()
    gens = start_generators(cfg, cfg.redis.url, n=2)
    try:
        recipe.train(steps=2)
        victim, _ = gens[0]
        assert wait_for(lambda: recipe.tasks.pending() > 0, 30)
        ray.kill(victim, no_restart=True)  # mid-group: its task stays pending in the stream
        recipe.train(steps=4)  # the survivor reclaims the orphaned task after claim_idle_ms
        assert recipe.state.step == 6
        recipe.save_checkpoint()
        audit = recipe.audit()
        assert audit["consumed"] == 6 * cfg.rl.groups_per_step
        assert audit["dead_lettered"] == 0
        assert audit["admitted"] == audit["consumed"] + audit["dropped_stale"] + audit["in_flight"]
        # every admitted task not yet settled is still in a stream: as a task, or as the group of a
        # task (a task between its group's publish and its own ack is in both, and a redone group
        # can sit beside its first copy, so count distinct task ids). Tasks first: a task only ever
        # moves from the task stream to the group stream, so reading in that order misses none.
        in_streams = _task_ids(recipe.tasks) | _group_task_ids(recipe.groups)
        assert audit["in_flight"] == len(in_streams), (audit, sorted(in_streams))
        step, version = recipe.state.step, recipe.state.version
        # stop and restart the learner: same step and version, then it trains on
        again = RLRecipe(cfg, cfg.redis.url, source()).setup()
        assert (again.state.step, again.state.version) == (step, version)
        assert again.weights.latest().version == version
        again.train(steps=2)
        assert again.state.step == step + 2
        assert again.audit()["consumed"] == (step + 2) * cfg.rl.groups_per_step
    finally:
        for a, _ in gens:
            try:
                a.stop.remote()
                ray.kill(a)
            except Exception:
                pass


def test_weight_checksum_failure_keeps_previous_version(redis_server, tmp_path):
    from common.transport import Keys, connect
    from services.generator.worker import GeneratorWorker
    cfg = tiny_rl_cfg(redis_server, tmp_path)
    recipe = RLRecipe(cfg, cfg.redis.url, source()).setup()  # publishes version 0
    worker = GeneratorWorker("g-test", cfg, cfg.redis.url, score_group=lambda task, pngs: {})
    assert worker.sync_weights(0) == 0
    v1 = recipe.publish()
    r = connect(cfg.redis.url)
    r.set(Keys(cfg.redis.namespace).weights(v1), b"tampered weights")
    assert worker.sync_weights(0, timeout_s=0) == 0  # refused: keeps serving version 0
    assert v1 in worker.refused_versions
    v2 = recipe.publish()
    assert worker.sync_weights(v2, timeout_s=5) == v2  # the next good version loads
    r.close()


def test_a_fresh_run_refuses_a_namespace_holding_another_runs_ledger(redis_server, tmp_path):
    cfg = tiny_rl_cfg(redis_server, tmp_path / "a")
    first = RLRecipe(cfg, cfg.redis.url, source()).setup()
    other = cfg.model_copy(deep=True)
    other.rl.checkpoint_dir = str(tmp_path / "b" / "ckpt")
    with pytest.raises(RuntimeError, match=f"holds the ledger of run {first.state.run_id}"):
        RLRecipe(other, cfg.redis.url, source()).setup()
    again = RLRecipe(cfg, cfg.redis.url, source()).setup()  # its own folder: the same run continues
    assert again.state.run_id == first.state.run_id


def test_dead_consumers_task_is_reclaimed_while_new_tasks_keep_arriving(redis_server, tmp_path):
    """Issue 20 item 3: the janitor runs on a timer, not only when the stream is empty. A dead
    generator's pending task is taken over within about claim_idle_ms although `read` never comes
    back empty (a new task arrives before each read)."""
    import time

    from services.generator.worker import GeneratorWorker
    from common.transport import task_queue
    cfg = tiny_rl_cfg(redis_server, tmp_path)
    cfg.redis.claim_idle_ms = 300
    worker = GeneratorWorker("g-live", cfg, cfg.redis.url, score_group=lambda task, pngs: {})
    q = task_queue(worker.r, worker.keys, cfg.redis)
    orphan = q.add({"task_id": "orphan"})
    assert [e.id for e in q.read("g-dead", count=1, block_ms=None)] == [orphan]  # g-dead dies holding it
    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < 5.0:
        q.add({"task_id": f"new{len(seen)}"})  # steady load: the stream is never empty
        e = worker.next_entry(block_ms=None)
        assert e is not None
        seen.append(e.fields["task_id"])
        q.ack(e)
        if e.id == orphan:
            break
        time.sleep(0.02)
    assert "orphan" in seen, f"the dead consumer's task was not reclaimed under load ({len(seen)} tasks read)"
    took = time.monotonic() - t0
    assert took < 3 * cfg.redis.claim_idle_ms / 1000 + 1.0, took
    assert q.pending() == 0 and seen.count("orphan") == 1
    while left := q.read("drain", count=10, block_ms=None):
        for e in left:
            q.ack(e)
    # the janitor takes one at a time: nothing hoarded by the live consumer
    for i in range(3):
        q.add({"task_id": f"o{i}"})
    assert len(q.read("g-dead2", count=3, block_ms=None)) == 3
    time.sleep(0.35)
    worker._next_reclaim = 0.0
    assert worker.next_entry(block_ms=None).fields["task_id"].startswith("o")
    pending = {(c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): c["pending"]
               for c in worker.r.xinfo_consumers(q.stream, q.group)}
    assert pending["g-dead2"] == 2 and pending["g-live"] == 1


def test_a_generator_slower_than_claim_idle_never_redoes_its_own_task(redis_server, tmp_path):
    """Issue 20 (the reward-replica kill's duplicates): while a generator's group waits on its reward
    calls longer than claim_idle_ms (retries while a replica is replaced), the janitor must not hand
    the generator its own in-flight task back (it sampled and published that group twice), nor the
    learner the groups of a batch it holds while it waits for the rest (each was counted
    `duplicate`). One generator (a real worker on real Redis) scoring slower than claim_idle_ms,
    the real learner: every group is published and consumed exactly once."""
    import threading
    import time

    from services.generator.worker import GeneratorWorker

    def slow_score(task, pngs):
        time.sleep(0.6)  # 3x claim_idle_ms
        return {"colour": [[0.5 + 0.01 * i] for i in range(len(pngs))]}

    cfg = tiny_rl_cfg(redis_server, tmp_path, group_size=2, groups_per_step=2, total_steps=3, max_staleness=4)
    cfg.redis.claim_idle_ms = 200
    recipe = RLRecipe(cfg, cfg.redis.url, source()).setup()
    stop = threading.Event()
    worker = GeneratorWorker("g-0", cfg, cfg.redis.url, score_group=slow_score)
    gen = threading.Thread(target=worker.run, args=(stop.is_set,), daemon=True)
    gen.start()
    try:
        recipe.train(until=3)
    finally:
        stop.set()
        gen.join(timeout=60)
    audit = recipe.audit()
    assert recipe.state.step == 3 and audit["consumed"] == 6, audit
    assert audit["duplicate"] == 0, f"a group was taken back by its own holder and redone: {audit}"


def test_a_restarted_generator_takes_back_what_it_held_at_once(redis_server, tmp_path):
    """A generator process that died holding a task comes back under the same name (Ray restarts the
    actor with the same arguments): its first task is the one it held, without waiting
    claim_idle_ms for a janitor (30 s here), and a task it is working on is not handed out again."""
    from services.generator.worker import GeneratorWorker
    from common.transport import task_queue
    cfg = tiny_rl_cfg(redis_server, tmp_path)
    cfg.redis.claim_idle_ms = 30_000
    first = GeneratorWorker("g-0", cfg, cfg.redis.url, score_group=lambda task, pngs: {})
    q = task_queue(first.r, first.keys, cfg.redis)
    held = q.add({"task_id": "held"})
    assert first.next_entry(block_ms=None).id == held  # ... and the process dies here
    q.add({"task_id": "next"})
    again = GeneratorWorker("g-0", cfg, cfg.redis.url, score_group=lambda task, pngs: {})
    e = again.next_entry(block_ms=None)
    assert (e.id, e.fields["task_id"], e.deliveries) == (held, "held", 2)
    again._next_reclaim = 0.0  # the janitor is due again: the task in hand is not a leftover
    nxt = again.next_entry(block_ms=None)
    assert nxt.fields["task_id"] == "next" and again.held == {held, nxt.id}


def test_resume_three_times_target_total_steps_and_one_history_record_per_step(ray_cluster, redis_server, tmp_path):
    """Issue 20 item 5: `steps` of run_rl (the CLIs' --steps) is the target total step; a resumed
    run starts (bar included, via on_ready) at its checkpoint's step; and a learner killed right
    after a periodic checkpoint loses no history record: after three such kills and resumes the
    history has exactly one record per step. A kill -9 is emulated by restoring the checkpoint
    folder as it was on disk right after the periodic checkpoint (on_step runs after it)."""
    import shutil
    cfg = tiny_rl_cfg(redis_server, tmp_path, group_size=4, groups_per_step=2, checkpoint_every=2)
    ckpt = tmp_path / "ckpt"
    starts = []
    for target in (2, 4, 6, 8):
        snap = tmp_path / f"snap{target}"

        def on_step(s, snap=snap, target=target):
            if s["step"] == target:  # the periodic checkpoint of this step is on disk: "kill -9" now
                shutil.copytree(ckpt, snap)
        recipe, state, _ = run_rl(cfg, cfg.redis.url, source(), steps=target, generators=1, on_step=on_step,
                                  on_ready=lambda rec: starts.append(rec.state.step))
        assert state.step == target  # the target total, not `target` more steps
        shutil.rmtree(ckpt)
        shutil.copytree(snap, ckpt)  # what the killed learner left behind
    assert starts == [0, 2, 4, 6]
    final = RLRecipe(cfg, cfg.redis.url, source()).setup()
    assert final.state.step == 8
    assert [h["step"] for h in final.state.history] == list(range(1, 9))
    audit = final.audit()
    assert audit["consumed"] == 8 * cfg.rl.groups_per_step and audit["duplicate"] == 0


def _report_kills_and_check_ledger(what: str, stamps: dict[int, float], kills: list[tuple[int, int]], recipe,
                                   consumed: int) -> None:
    """Print the time each kill cost (the step after it against the median step of the run) and check
    the ledger is exact: every step's groups consumed, nothing redone or dead-lettered."""
    last = max(stamps)
    normal = statistics.median(stamps[k + 1] - stamps[k] for k in range(min(stamps), last))
    for step, _pid in kills:
        took = stamps[step + 1] - stamps[step]
        print(f"{what} after step {step}: step {step + 1} took {took:.1f} s (median step {normal:.1f} s): "
              f"{took - normal:.1f} s lost")
    audit = recipe.audit()
    print(f"ledger: {audit}")
    assert audit["consumed"] == consumed
    assert audit["duplicate"] == 0 and audit["dead_lettered"] == 0, audit
    assert audit["admitted"] == audit["consumed"] + audit["dropped_stale"] + audit["in_flight"]


@pytest.mark.parametrize("transport", ["redis", "direct"])
def test_kill_9_of_the_only_generator_twice_the_run_goes_on(transport, ray_cluster, redis_server, tmp_path):
    """Issue 20 item 2: a generator is disposable. SIGKILL of the only generator's process (twice,
    mid-run): Ray restarts the actor and retries its loop, the task it held is reclaimed, the run
    finishes its steps and the ledger is exact. Prints the time lost per kill. On the direct weight
    path the dead process's relay dies with it and the new process makes its own (its gloo group
    is new too: common/transport/direct.py)."""
    import os
    import signal
    import time

    import ray
    cfg = tiny_rl_cfg(redis_server, tmp_path, group_size=4, groups_per_step=2, total_steps=8,
                      learner={"weight_transport": transport})
    stamps, kills = {}, []

    def on_step(s):
        stamps[s["step"]] = time.monotonic()
        if s["step"] in (2, 5):
            actor = ray.get_actor("generator-0")
            pid = ray.get(actor.status.remote(), timeout=60)["pid"]
            os.kill(pid, signal.SIGKILL)
            kills.append((s["step"], pid))
    recipe, state, statuses = run_rl(cfg, cfg.redis.url, source(), generators=1, on_step=on_step)
    assert state.step == 8 and len(kills) == 2
    assert statuses[0].get("pid") not in {pid for _, pid in kills}, statuses  # a new process finished the run
    assert statuses[0]["version"] >= state.version - cfg.rl.max_staleness and statuses[0]["weight_failures"] == {}
    # the restarted generator finishes the task its dead process held (own leftovers first), once
    _report_kills_and_check_ledger("kill -9 of the generator", stamps, kills, recipe, 8 * cfg.rl.groups_per_step)


def test_groups_of_steps_lost_with_a_dead_learner_are_rolled_back_and_readmitted(redis_server, tmp_path):
    """Issue 20 item 5: a learner killed -9 after its last checkpoint loses the model of the steps it
    took since; the groups those steps consumed are lost with it. The resumed learner says so in
    the ledger (`rolled_back`), takes them off `consumed` and admits their tasks again, so after
    each death `consumed` equals the groups the model was trained on (the sum over its history).
    Real Redis, the real learner (`dyref learner`, a child process killed -9 once a step after a
    checkpoint is settled) and a real generator worker in a thread (scored by mean brightness)."""
    import io
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    import numpy as np
    import yaml
    from PIL import Image

    from common.transport import Keys
    from services.generator.worker import GeneratorWorker
    from services.learner.audit import read_audit
    from dyref.train_commands import task_source_for

    def score(task, pngs):
        time.sleep(0.5)  # a paced generator: the learner waits for groups, so the kill lands within a step
        return {"colour": [[float(np.asarray(Image.open(io.BytesIO(p))).mean() / 255)] for p in pngs]}

    cfg = tiny_rl_cfg(redis_server, tmp_path, group_size=2, groups_per_step=2, checkpoint_every=2, max_staleness=4)
    cfg.redis.claim_idle_ms = 30_000  # the one generator never takes back its own slow task: no duplicates
    conf = tmp_path / "cfg.yaml"
    conf.write_text(yaml.safe_dump({k: v for k, v in cfg.model_dump(mode="json").items() if k != "profile"}))
    gps = cfg.rl.groups_per_step
    stop = threading.Event()
    worker = GeneratorWorker("g-0", cfg, cfg.redis.url, score_group=score)
    gen = threading.Thread(target=worker.run, args=(stop.is_set,), daemon=True)
    gen.start()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    def new_source():
        return task_source_for(cfg, None, None, 4, cfg.rl.seed)  # what `dyref learner --cases 4` trains on

    def trained_on(recipe) -> int:
        return sum(h["data/images"] for h in recipe.state.history) // cfg.rl.group_size
    try:
        lost = 0
        for died_after in (3, 5):  # checkpoints at 2 and 4: the step after each dies with the learner
            before = RLRecipe(cfg, cfg.redis.url, new_source()).setup().audit()
            proc = subprocess.Popen([sys.executable, "-m", "dyref.cli", "learner", "-c", str(conf), "--steps", "100",
                                     "--cases", "4"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                    stderr=open(tmp_path / f"learner-{died_after}.log", "wb"))
            deadline = time.monotonic() + 300
            while True:
                counts = read_audit(worker.r, Keys(cfg.redis.namespace), cfg.redis)
                if counts["consumed"] >= died_after * gps:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                assert proc.poll() is None and time.monotonic() < deadline, "the learner did not get there"
                time.sleep(0.02)
            proc.wait(30)
            killed = read_audit(worker.r, Keys(cfg.redis.namespace), cfg.redis)
            assert killed["consumed"] == died_after * gps, killed  # killed within step died_after + 1
            lost += gps
            resumed = RLRecipe(cfg, cfg.redis.url, new_source()).setup()
            audit = resumed.audit()
            assert resumed.state.step == died_after - 1
            assert audit.get("rolled_back", 0) - before.get("rolled_back", 0) == gps, audit
            assert audit["consumed"] == trained_on(resumed) == (died_after - 1) * gps, audit
            assert audit["admitted"] == audit["consumed"] + audit["dropped_stale"] + audit["dead_lettered"] + \
                audit["in_flight"], audit
            if died_after == 5:
                resumed.train(until=7)
                audit = resumed.audit()
                assert [h["step"] for h in resumed.state.history] == list(range(1, 8))
                assert audit["consumed"] == trained_on(resumed) == 7 * gps, audit
                assert audit["rolled_back"] == lost == 2 * gps and audit["duplicate"] == 0, audit
                assert audit["admitted"] == audit["consumed"] + audit["dropped_stale"] + audit["dead_lettered"] + \
                    audit["in_flight"], audit
                print(f"ledger after two learner kills: {audit}; groups trained on: {trained_on(resumed)}")
    finally:
        stop.set()
        gen.join(timeout=60)


def test_kill_9_of_the_only_reward_replica_twice_the_run_goes_on(ray_cluster, redis_server, tmp_path):
    """Issue 20 item 2, the reward side: SIGKILL of the only reward (scorer) replica's process,
    twice, mid-run. Serve replaces the replica, the generator's reward client retries the calls
    that died with it, the run finishes its steps and the ledger is exact. Prints the time lost
    per kill."""
    import os
    import signal
    import time

    import psutil
    import ray
    cfg = tiny_rl_cfg(redis_server, tmp_path, group_size=4, groups_per_step=2, total_steps=8)
    cfg.rewards.retries = 6
    cfg.rewards.timeout_s = 60
    stamps, kills = {}, []
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid

    def scorer_pid() -> int:
        found = [p.pid for p in psutil.Process(raylet).children(recursive=True)
                 if "ServeReplica:rewards:scorer-colour" in " ".join(p.cmdline())]
        assert len(found) == 1, found
        return found[0]

    def on_step(s):
        stamps[s["step"]] = time.monotonic()
        if s["step"] in (2, 5):
            pid = scorer_pid()
            os.kill(pid, signal.SIGKILL)
            kills.append((s["step"], pid))
    recipe, state, statuses = run_rl(cfg, cfg.redis.url, source(), generators=1, on_step=on_step)
    assert state.step == 8 and len(kills) == 2
    assert scorer_pid() not in {pid for _, pid in kills}  # a new replica process scored the rest
    # the group that waited on the dead replica is retried, not redone: nothing published twice
    _report_kills_and_check_ledger("kill -9 of the reward replica", stamps, kills, recipe,
                                   8 * cfg.rl.groups_per_step)


def test_a_learner_whose_weight_versions_cannot_fit_redis_fails_at_start_up(redis_server, tmp_path):
    # the store keeps redis.weights_keep versions at once: 5000 x the tiny full state is more than
    # the test server's 512 MB maxmemory, and a publish would otherwise wait for memory forever
    cfg = tiny_rl_cfg(redis_server, tmp_path)
    cfg.redis.weights_keep = 5000
    with pytest.raises(RuntimeError, match=r"redis\.weights_keep=5000 versions x .* MB of weights, but Redis's "
                                           r"maxmemory is 512\.0 MB"):
        RLRecipe(cfg, cfg.redis.url, source()).setup()


def test_the_direct_weight_path_holds_no_weights_in_redis_so_needs_no_room_there(ray_cluster, redis_server, tmp_path):
    # the same 5000 versions on the direct path: Redis keeps only their metadata, the start-up
    # check does not apply, and the first publish put the bytes in the weight source actor
    cfg = tiny_rl_cfg(redis_server, tmp_path, learner={"weight_transport": "direct"})
    cfg.redis.weights_keep = 5000
    recipe = RLRecipe(cfg, cfg.redis.url, source()).setup()
    import ray
    latest = recipe.weights.latest()
    assert latest.transport == "direct" and ray.get(recipe.weight_source.held.remote()) == [latest.version]
    ray.kill(recipe.weight_source)
    recipe.close()

