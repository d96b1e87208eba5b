"""SFT recipe: the loss learns, checkpoints start the RL stage exactly, resume, accumulation, clipping."""
import json

import pytest
import torch

from common.rl.history import bad_keys
from common.config import LoraConfig, PolicyConfig, SFTConfig
from common.policy import build_policy
from services.learner.sft_recipe import (Sample, SFTRecipe, lr_factor, ref_cap, sample_sigmas, scheduler_weight,
                                         stack_conds)
from services.learner.tasks import TrainingCase, synthetic_cases


@pytest.fixture(scope="module")
def cases():
    return synthetic_cases(16, 0, size=64, ref_size=32, max_refs=3)


def pcfg(**kw) -> PolicyConfig:
    return PolicyConfig(**{"height": 64, "width": 64, "eval_inference_steps": 3, **kw})


def scfg(tmp_path, **kw) -> SFTConfig:
    base = dict(lr=3e-3, batch_size=4, steps=8, checkpoint_every=4, output_dir=str(tmp_path / "sft"), seed=0)
    base.update(kw)
    return SFTConfig(**base)


def fixed_samples(recipe, n=12, seed=5):
    """A fixed evaluation set (same σ and ε before and after training)."""
    g = torch.Generator().manual_seed(seed)
    sig = sample_sigmas(n, "uniform", 1.0, g)
    out = []
    for j in range(n):
        i = j % len(recipe.cases)
        cond, _ = recipe.encoded(i)
        out.append(Sample(i, float(sig[j]), recipe.policy.family.noise(g, cond)))
    return out


def eval_loss(recipe, samples):
    with torch.no_grad():
        return float(sum(recipe.loss([s]) for s in samples) / len(samples))


def velocity_probe(policy, case):
    cond, _, _ = policy.encode(case.prompt, [(r, im) for r, im, _ in case.references], 64, 64)
    x = policy.family.noise(torch.Generator().manual_seed(3), cond)
    with torch.no_grad():
        return policy.velocity(cond, x, 0.7)


def test_loss_decreases_and_adapter_starts_rl_exactly(tmp_path, cases):
    r = SFTRecipe(pcfg(), scfg(tmp_path, steps=40, checkpoint_every=40), cases).setup()
    probe = fixed_samples(r)
    before = eval_loss(r, probe)
    r.train()
    after = eval_loss(r, probe)
    assert after < 0.7 * before, (before, after)
    assert r.state.step == 40 and len(r.state.history) == 40
    # the RL stage's start: policy.lora.init_adapter = <output_dir>/adapter, no conversion step
    meta = json.loads((r.out / "sft.json").read_text())
    assert meta["adapter"] == str(r.adapter_dir) and meta["step"] == 40
    rl = build_policy(pcfg(lora=LoraConfig(init_adapter=meta["adapter"])))
    assert rl.trainable_state() == r.policy.trainable_state()
    for c in cases[:3]:
        assert torch.equal(velocity_probe(rl, c), velocity_probe(r.policy, c))
    # and its "sft" KL reference is the SFT policy too
    with rl.use_reference("sft"):
        assert torch.equal(velocity_probe(rl, cases[0]), velocity_probe(r.policy, cases[0]))


def test_resume_continues_from_saved_step(tmp_path, cases):
    straight = SFTRecipe(pcfg(), scfg(tmp_path / "a"), cases).setup()
    straight.train(8)
    first = SFTRecipe(pcfg(), scfg(tmp_path / "b"), cases).setup()
    first.train(4)  # checkpoint at step 4, then the process "dies"
    resumed = SFTRecipe(pcfg(), scfg(tmp_path / "b"), cases).setup()
    assert resumed.state.step == 4 and len(resumed.state.history) == 4
    resumed.train()
    assert resumed.state.step == 8
    assert resumed.policy.trainable_state() == straight.policy.trainable_state()
    assert [h["losses/loss"] for h in resumed.state.history] == [h["losses/loss"] for h in straight.state.history]
    fresh = SFTRecipe(pcfg(), scfg(tmp_path / "b"), cases).setup(resume=False)
    assert fresh.state.step == 0


def _grads(recipe):
    return [p.grad.detach().clone() for p in recipe.policy.trainable_parameters()]


def _perturb_b(policy, seed=0):
    # LoRA B starts at 0, where A gets no gradient: make both non-zero so every grad is tested
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.named_trainable_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def test_grad_accumulation_equals_big_batch(tmp_path, cases):
    r = SFTRecipe(pcfg(), scfg(tmp_path, batch_size=2, grad_accum=2, max_grad_norm=1e9), cases).setup()
    _perturb_b(r.policy)
    a, b = r.draw(0, 0), r.draw(0, 1)
    r.policy.transformer.zero_grad(set_to_none=True)
    r.loss(a + b).backward()  # mixed reference counts fall back to per-sample forwards: same loss
    big = _grads(r)
    r.policy.transformer.zero_grad(set_to_none=True)
    (r.loss(a) / 2).backward()
    (r.loss(b) / 2).backward()
    for x, y in zip(big, _grads(r)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    # train_step accumulates exactly these two micro-batches (grads stay until the next step)
    r.train_step()
    for x, y in zip(big, _grads(r)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_gradient_clipping_applied(tmp_path, cases):
    r = SFTRecipe(pcfg(), scfg(tmp_path, max_grad_norm=1e-3), cases).setup()
    _perturb_b(r.policy)
    rec = r.train_step()
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in _grads(r)]))
    assert rec["losses/grad_norm"] > 1e-2  # pre-clip norm is reported
    assert bad_keys(rec) == []  # common/rl/history.py
    assert float(after) == pytest.approx(1e-3, rel=1e-4)


def test_micro_batches_hold_one_reference_count_and_follow_curriculum(tmp_path, cases):
    r = SFTRecipe(pcfg(), scfg(tmp_path, steps=100, ref_curriculum=(0.3, 0.7)), cases).setup()
    assert set(r.by_count) == {1, 2, 3}
    for step in (0, 10, 29):
        assert {len(cases[s.case].references) for s in r.draw(step, 0)} == {1}
    seen = set()
    for step in range(70, 100):
        counts = {len(cases[s.case].references) for s in r.draw(step, 0)}
        assert len(counts) == 1
        seen |= counts
    assert seen == {1, 2, 3}
    # equal reference counts stack into one forward; different ones do not
    c1 = [r.encoded(i)[0] for i in r.by_count[1][:2]]
    assert stack_conds(c1).tensors["prompt_embeds"].shape[0] == 2
    assert stack_conds([r.encoded(r.by_count[1][0])[0], r.encoded(r.by_count[2][0])[0]]) is None


def test_full_finetune_state_loads_into_a_fresh_policy(tmp_path, cases):
    r = SFTRecipe(pcfg(finetune="full"), scfg(tmp_path, steps=3), cases).setup()
    r.train()
    assert not (r.out / "adapter").exists()
    fresh = build_policy(pcfg(finetune="full"))
    assert not torch.equal(velocity_probe(fresh, cases[0]), velocity_probe(r.policy, cases[0]))
    fresh.load_trainable_state((r.out / "trainable.safetensors").read_bytes())
    assert torch.equal(velocity_probe(fresh, cases[0]), velocity_probe(r.policy, cases[0]))


def test_qwen_family_trains(tmp_path, cases):
    r = SFTRecipe(pcfg(family="qwen-image-edit-plus"), scfg(tmp_path, steps=2, batch_size=2), cases[:4]).setup()
    r.train()
    assert all(torch.isfinite(torch.tensor(h["losses/loss"])) for h in r.state.history)
    assert (r.adapter_dir / "adapter_config.json").is_file()


def test_pure_schedules():
    g = torch.Generator().manual_seed(0)
    ln = sample_sigmas(4000, "logit-normal", 3.0, g)
    assert 0 < float(ln.min()) and float(ln.max()) <= 1
    assert float(ln.median()) == pytest.approx(0.75, abs=0.03)  # median u = 0.5 -> 3·0.5/(1+2·0.5)
    un = sample_sigmas(4000, "uniform", 1.0, g)
    assert float(un.mean()) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="timestep_sampling"):
        sample_sigmas(2, "cosine", 1.0, g)
    w = scheduler_weight(torch.linspace(1, 0, 1000))
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-5) and int(w.argmax()) in (499, 500)
    assert [ref_cap(s, 100, [1, 2, 4, 6], (0.3, 0.7)) for s in (0, 29, 30, 50, 69, 70, 99)] == [1, 1, 1, 3, 5, 6, 6]
    assert ref_cap(0, 100, [2, 3], None) == 3
    assert lr_factor(0, 100, 5, "constant", 0.1) == pytest.approx(0.2)
    assert lr_factor(100, 100, 0, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 100, 0, "linear", 0.0) == pytest.approx(0.5)


def test_rejects_cases_without_target(tmp_path, cases):
    bad = [TrainingCase("p", [], None, 7)]
    with pytest.raises(ValueError, match="record index \\[7\\]"):
        SFTRecipe(pcfg(), scfg(tmp_path), bad)
    with pytest.raises(ValueError, match="at least one"):
        SFTRecipe(pcfg(), scfg(tmp_path), [])


def test_held_out_evaluation_every_n_steps_joins_the_history(tmp_path, cases):
    seen = []

    def evaluate(policy):
        assert not policy.training  # scored in eval mode ...
        seen.append(policy.trainable_state())
        return {"eval/placement/all": float(len(seen))}
    r = SFTRecipe(pcfg(), scfg(tmp_path, steps=7, eval_every=3), cases).setup()
    r.train(evaluate=evaluate)
    evals = [h["step"] for h in r.state.history if "eval/placement/all" in h]
    assert evals == [3, 6, 7]  # every 3 steps and at the end
    assert [h["eval/placement/all"] for h in r.state.history if "eval/placement/all" in h] == [1.0, 2.0, 3.0]
    # evaluating does not change what training does: same weights as a run without it
    plain = SFTRecipe(pcfg(), scfg(tmp_path / "plain", steps=7), cases).setup()
    plain.train()
    assert plain.policy.trainable_state() == r.policy.trainable_state()
