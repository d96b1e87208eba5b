"""RL recipe: the KL std per dynamics in the learner's loss; an unscorable group is dead-lettered."""
from __future__ import annotations

import math
import uuid
from types import SimpleNamespace

import pytest
import torch

from common.rl.history import bad_keys
from common.config import RLConfig, load_config
from common.policy.sde import sde_step
from common.rl import ppo_loss
from common.schemas import GroupHeader, SamplingParams
from services.learner.rl_recipe import ConsumedGroup, RLRecipe
from services.learner.parallel import Parallel
from services.learner.trainer import Trainer
from services.learner.tasks import TaskSource, synthetic_cases

B, SHAPE = 2, (3, 4)


class FakePolicy:
    """The two policy calls Trainer.step_loss makes; velocities fixed so the KL is known by hand."""

    def __init__(self, v_theta, v_ref, dyn, eta):
        self.v_theta, self.v_ref, self.dyn, self.eta = v_theta, v_ref, dyn, eta

    def step_log_prob(self, cond, x_t, x_next, idx, sigmas, params):
        self.params = params
        out = sde_step(self.dyn, x_t, self.v_theta, sigmas[idx], sigmas[idx + 1], self.eta,
                       sigma_max=sigmas[1], prev_sample=x_next)
        return SimpleNamespace(velocity=self.v_theta, mean=out.mean, log_prob=out.log_prob)

    def reference_velocity(self, cond, x, sigma, mode="sft"):
        return self.v_ref


def kl_of_step(dyn, kind, sigmas, idx, eta):
    x = torch.zeros(B, *SHAPE)
    v_theta, v_ref = torch.zeros(B, *SHAPE), torch.full((B, *SHAPE), 0.1)
    trainer = object.__new__(Trainer)
    trainer.rl = RLConfig(kl={"beta": 0.04, "kind": kind})
    trainer.policy = FakePolicy(v_theta, v_ref, dyn, eta)
    trainer.parallel = Parallel({})  # one worker: calls go straight through
    sig = torch.tensor(sigmas)
    ro = SimpleNamespace(cond=None, sigmas=sig, params=SamplingParams(dynamics=dyn, noise_level=eta),
                         log_probs=torch.zeros(B, 1), transition=lambda j: (x, x, idx))
    _, stats = trainer.step_loss(ro, 0, torch.zeros(B), torch.ones(1))
    # the policy's recompute and the learner's KL reference read one object: the rollout's params
    assert trainer.policy.params is ro.params
    return stats.kl


def test_v_kl_divides_by_the_dynamics_own_std_dev_t():
    # Δv = .1 everywhere -> mean((v_θ − v_ref)²) = .01; KL_v = .01 / (2 std_dev_t² + 1e-7)
    # dance-sde, sigma .7 -> .45 (dt = −.25), eta .5: std_dev_t = .5·sqrt(.25) = .25 -> .01 / .125 = .08
    # (re-deriving it as step_std / sqrt|dt| gave eta = .5 and .01 / .5 = .02: |dt| = 4x too small)
    assert kl_of_step("dance-sde", "v", [1.0, 0.7, 0.45, 0.0], 1, 0.5) == pytest.approx(0.01 / (0.125 + 1e-7), rel=1e-5)
    # flow-sde, sigma .8 -> .6, eta 1: std_dev_t = sqrt(.8 / .2) = 2 -> .01 / 8 (unchanged)
    assert kl_of_step("flow-sde", "v", [1.0, 0.8, 0.6, 0.0], 1, 1.0) == pytest.approx(0.01 / (8 + 1e-7), rel=1e-5)
    # cps, sigma .7 -> .6, eta 1/3: std_dev_t = .6 sin(pi/6) = .3 -> .01 / .18
    assert kl_of_step("cps", "v", [1.0, 0.7, 0.6, 0.0], 1, 1 / 3) == pytest.approx(0.01 / (0.18 + 1e-7), rel=1e-5)


def test_gaussian_kl_divides_by_the_step_std_for_every_dynamics():
    # dance-sde: Δμ = Δv·dt·(1 + .5 eta² (1 − sigma)/sigma) (the mean is linear in v), step std .25
    dt, s, eta = -0.25, 0.7, 0.5
    dmu = 0.1 * dt * (1 + 0.5 * eta ** 2 * (1 - s) / s)
    want = dmu ** 2 / (2 * 0.25 ** 2)
    assert kl_of_step("dance-sde", "gaussian", [1.0, 0.7, 0.45, 0.0], 1, eta) == pytest.approx(want, rel=1e-4)
    # flow-sde: step std 2·sqrt(.2); Δμ = Δv·(1 + std_dev_t²(1 − sigma)/(2 sigma))·dt = .1·(1 + 4·.2/1.6)·(−.2)
    dmu = 0.1 * (1 + 4 * 0.2 / 1.6) * -0.2
    want = dmu ** 2 / (2 * (2 * math.sqrt(0.2)) ** 2)
    assert kl_of_step("flow-sde", "gaussian", [1.0, 0.8, 0.6, 0.0], 1, 1.0) == pytest.approx(want, rel=1e-4)


# ---- a group whose signals cannot be computed is dead-lettered, never the learner's end ---------

G = 2


@pytest.fixture
def recipe(redis_server, tmp_path):
    # decrease mode k(n) = 22 + 3 (6 - n): positive for every n in 1..10 (the load check passes),
    # -2 at n = 14, a reference count no valid task has (a malformed or foreign header)
    cfg = load_config("cpu-tiny", {
        "redis": {"url": redis_server.url, "namespace": f"dl{uuid.uuid4().hex[:8]}", "embedded": False},
        "rl": {"group_size": G, "groups_per_step": 3, "checkpoint_dir": str(tmp_path / "ckpt"),
               "drs": {"k_mode": "decrease", "k0": 22.0}, "kl": {"beta": 0.0}, "ema": {"enabled": False}}})
    source = TaskSource(synthetic_cases(2, seed=0, size=64, ref_size=64, max_refs=2), seed=0)
    rec = RLRecipe(cfg, cfg.redis.url, source).setup()
    yield rec
    rec.r.close()


def _publish(rec, n_refs, sims, group_id=None):
    """A group entry on the stream as a generator would leave it (the payload is not read here)."""
    gid = group_id or uuid.uuid4().hex[:24]
    hdr = GroupHeader(group_id=gid, task_id=f"{rec.state.run_id}-{gid[:6]}", policy_version=rec.state.version,
                      generator_id="g-test", blob_key=rec.keys.blob("group", gid), blob_bytes=1,
                      blob_sha256="0" * 64, group_size=len(sims), n_refs=n_refs)
    rec.groups.add({"header": hdr.model_dump_json()}, blob=b"-", blob_key=hdr.blob_key)
    return hdr, {"image_similarity": [[x] for x in sims]}


def _consumed(rec, published):
    entries = rec.groups.read(rec.learner_id, count=len(published), block_ms=100)
    assert len(entries) == len(published)
    ro = SimpleNamespace(step_indices=torch.zeros(1, dtype=torch.int64))
    return [ConsumedGroup(e, hdr, ro, rewards, 0) for e, (hdr, rewards) in zip(entries, published)]


def _zero_step_loss(rec):
    def step_loss(ro, j, adv, w):  # no rollout to recompute: a zero loss that still reaches the weights
        p = rec.policy.trainable_parameters()[0]
        return ppo_loss(p.sum() * 0 + torch.zeros(G), torch.zeros(G), adv, w.expand_as(adv))
    return step_loss


def test_train_dead_letters_an_unscorable_group_and_trains_on_the_rest(recipe, monkeypatch):
    published = [_publish(recipe, 2, [0.3, 0.7]), _publish(recipe, 14, [0.5, 0.6]), _publish(recipe, 3, [0.6, 0.4])]
    batches = [_consumed(recipe, published)]
    monkeypatch.setattr(recipe, "consume", lambda n, should_stop=None, timeout_s=0: batches.pop() if batches else [])
    monkeypatch.setattr(recipe.trainer, "step_loss", _zero_step_loss(recipe))
    state = recipe.train(steps=2)  # the second step finds no groups and stops
    assert state.step == 1 and state.history[-1]["data/groups_unscorable"] == 1
    assert bad_keys(state.history[-1]) == [] and "losses/loss" in state.history[-1]  # common/rl/history.py
    audit = recipe.audit()
    assert (audit["consumed"], audit["dead_lettered"], audit["duplicate"]) == (2, 1, 0)
    dead = recipe.r.xrange(recipe.keys.dead_letter("groups"))
    assert len(dead) == 1
    reason = dead[0][1][b"reason"].decode()
    assert reason.startswith("unscorable group:") and "drs slope" in reason and "[14.0]" in reason
    assert recipe.groups.pending() == 0
    # a redone copy of the dead-lettered group is a duplicate, not a second dead letter for one task
    bad = published[1][0]
    _publish(recipe, 14, [0.5, 0.6], group_id=bad.group_id)
    again = recipe.groups.read(recipe.learner_id, count=1, block_ms=100)
    assert recipe._accept(again[0], set()) is None
    audit = recipe.audit()
    assert (audit["dead_lettered"], audit["duplicate"]) == (1, 1)


def test_a_batch_no_single_group_is_to_blame_for_is_dead_lettered_whole(recipe):
    # each group alone is fine; together the second has 3 scores for the first's group size 2
    batch = _consumed(recipe, [_publish(recipe, 2, [0.3, 0.7]), _publish(recipe, 2, [0.5, 0.6, 0.4])])
    kept, sig = recipe.signals(batch)
    assert kept == [] and sig is None
    assert recipe.audit()["dead_lettered"] == 2 and recipe.groups.pending() == 0
    # and a clean batch passes through untouched
    batch = _consumed(recipe, [_publish(recipe, 2, [0.3, 0.7]), _publish(recipe, 4, [0.5, 0.6])])
    kept, sig = recipe.signals(batch)
    assert kept == batch and sig.advantages.shape == (2, G)
