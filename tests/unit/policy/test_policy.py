"""MRIGPolicy on the tiny offline pipelines of both families (64 px, 3-4 steps)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common import codec
from common.images import encode_image
from common.policy import (GroupRollout, PolicyLoadError, SamplingError, TooManyReferencesError, TrainableStateError,
                           UnknownRoleError, build_policy, mix_seed)
from common.schemas import Reference

from .conftest import FAMILIES, make_cfg, make_params, rand_image

CASES = Path(__file__).resolve().parents[3] / "data" / "omniref" / "examples"  # shipped in the repo


def _bump_lora(pol, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pol.named_trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module", params=FAMILIES)
def pol(request):
    return build_policy(make_cfg(request.param))


@pytest.mark.parametrize("dynamics", ["flow-sde", "dance-sde"])
def test_recomputed_log_prob_equals_rollout_then_differs_after_update(dynamics, refs2, request):
    for fam in FAMILIES:
        p = build_policy(make_cfg(fam))
        _bump_lora(p, 1)  # non-zero LoRA B so the adapter is really in the forward
        params = make_params(dynamics=dynamics, train_steps=(0, 1, 2), num_train_steps=2)
        r = p.sample_group("a cat on a mat", refs2, 3, params, seed=11)
        assert r.x_t.shape[:2] == (3, 2) and r.log_probs.shape == (3, 2) and len(r.step_indices) == 2
        assert torch.isfinite(r.log_probs).all()
        p.train()
        for j in range(2):
            xt, xn, k = r.transition(j)
            out = p.step_log_prob(r.cond, xt, xn, k, r.sigmas, params)
            assert (out.log_prob - r.log_probs[:, j]).abs().max() <= 1e-5, (fam, dynamics, j)
            sub = p.step_log_prob(r.cond, xt[1:], xn[1:], k, r.sigmas, params)  # a different batch
            assert (sub.log_prob - r.log_probs[1:, j]).abs().max() <= 1e-5
        # one optimizer step on the log-prob changes it
        opt = torch.optim.SGD(p.trainable_parameters(), lr=1.0)
        xt, xn, k = r.transition(0)
        out = p.step_log_prob(r.cond, xt, xn, k, r.sigmas, params)
        (-out.log_prob.mean()).backward()
        # (Qwen's last block text-stream outputs feed nothing, so not every LoRA weight gets a grad)
        got = [q.grad is not None and q.grad.abs().sum() > 0 for q in p.trainable_parameters()]
        assert sum(got) > len(got) // 2
        opt.step()
        after = p.step_log_prob(r.cond, xt, xn, k, r.sigmas, params).log_prob.detach()
        assert (after - r.log_probs[:, 0]).abs().max() > 1e-4, fam
        assert after.mean() > r.log_probs[:, 0].mean()  # ascent raised it


def test_seeded_determinism_and_distinct_members(pol, refs2):
    params = make_params()
    a = pol.sample_group("a cat", refs2, 3, params, seed=5)
    b = pol.sample_group("a cat", refs2, 3, params, seed=5)
    c = pol.sample_group("a cat", refs2, 3, params, seed=6)
    assert np.array_equal(a.images, b.images) and torch.equal(a.log_probs, b.log_probs)
    assert a.images.shape == (3, 64, 64, 3) and a.images.dtype == np.uint8
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(a.x_next[i], a.x_next[j])
            assert not np.array_equal(a.images[i], a.images[j])
    assert not np.array_equal(a.images, c.images)
    assert a.n_refs == 2 and a.roles == ["subject", "style"] and a.sigmas.shape == (5,)
    assert float(a.sigmas[0]) == 1.0 and float(a.sigmas[-1]) == 0.0
    # only the drawn train step is stored, and it is one of the candidates
    assert a.step_indices.tolist()[0] in (0, 1, 2) and a.x_t.shape[1] == 1


def test_train_step_choice_is_seeded_and_validated(pol):
    p = make_params(train_steps=(0, 1, 2, 3), num_train_steps=2)
    picks = {tuple(pol.choose_train_steps(p, s)) for s in range(30)}
    assert len(picks) > 1 and all(len(t) == 2 and t[0] < t[1] for t in picks)
    assert pol.choose_train_steps(p, 7) == pol.choose_train_steps(p, 7)
    with pytest.raises(SamplingError, match="must lie in"):
        pol.choose_train_steps(make_params(train_steps=(1, 9)), 0)
    with pytest.raises(SamplingError, match="exceeds"):
        pol.choose_train_steps(make_params(train_steps=(1,), num_train_steps=2), 0)
    with pytest.raises(SamplingError, match="noise_level > 0"):
        pol.sample_group("x", [], 2, make_params(noise_level=0.0), 0)
    with pytest.raises(SamplingError, match="multiples of"):
        pol.sample_group("x", [], 2, make_params(height=70), 0)


def test_member_noise_depends_only_on_seed_and_index(pol, refs2):
    big = pol.generate("a cat", refs2, n=3, seed=4, num_inference_steps=3, output_type="np")
    one = pol.generate("a cat", refs2, n=1, seed=4, num_inference_steps=3, output_type="np")
    assert np.abs(big[0].astype(int) - one[0].astype(int)).max() <= 1


def test_lora_state_round_trips_and_loads_into_second_policy(refs2):
    for fam in FAMILIES:
        a = build_policy(make_cfg(fam))
        _bump_lora(a, 3)
        data = a.trainable_state()
        sd = codec.state_from_bytes(data)
        for n, p in a.named_trainable_parameters():
            assert torch.equal(sd[n], p.detach())
        b = build_policy(make_cfg(fam))
        before = b.generate("a cat", refs2, n=2, seed=2, output_type="np")
        b.load_trainable_state(data)
        assert b.trainable_state() == data
        ia = a.generate("a cat", refs2, n=2, seed=2, output_type="np")
        ib = b.generate("a cat", refs2, n=2, seed=2, output_type="np")
        assert np.array_equal(ia, ib) and not np.array_equal(before, ib)
        params = make_params()
        ra, rb = a.sample_group("a cat", refs2, 2, params, 9), b.sample_group("a cat", refs2, 2, params, 9)
        assert torch.equal(ra.log_probs, rb.log_probs)


def test_mismatched_state_is_an_error_not_a_no_op():
    a = build_policy(make_cfg("flux2-klein"))
    sd = {n: p.detach().clone() for n, p in a.named_trainable_parameters()}
    name = next(iter(sd))
    before = a.trainable_state()
    bad_shape = dict(sd)
    bad_shape[name] = torch.zeros(3, 3)
    with pytest.raises(TrainableStateError, match="shape mismatch"):
        a.load_trainable_state(codec.state_to_bytes(bad_shape))
    missing = dict(sd)
    missing.pop(name)
    with pytest.raises(TrainableStateError, match="1 missing"):
        a.load_trainable_state(codec.state_to_bytes(missing))
    with pytest.raises(TrainableStateError, match="unexpected"):
        a.load_trainable_state(codec.state_to_bytes({**sd, "foo.weight": torch.zeros(1)}))
    q = build_policy(make_cfg("qwen-image-edit-plus"))
    with pytest.raises(TrainableStateError):
        a.load_trainable_state(q.trainable_state())
    with pytest.raises(codec.CodecError):
        a.load_trainable_state(b"garbage")
    assert a.trainable_state() == before


def test_adapter_directory_round_trip_as_init_adapter(tmp_path, refs2):
    a = build_policy(make_cfg("flux2-klein", lora={"rank": 4, "alpha": 8.0}))
    _bump_lora(a, 4)
    d = a.save_adapter(tmp_path / "adapter")
    assert (d / "adapter_config.json").is_file() and (d / "adapter_model.safetensors").is_file()
    assert json.loads((d / "adapter_config.json").read_text())["r"] == 4
    # the directory's config (rank 4) overrides cfg.lora (rank 8), as the paper's resume_path does
    b = build_policy(make_cfg("flux2-klein", lora={"rank": 8, "init_adapter": str(d)}))
    assert b.lora_config.r == 4
    assert np.array_equal(a.generate("x", refs2, seed=1, output_type="np"), b.generate("x", refs2, seed=1, output_type="np"))
    assert b.trainable_state() == a.trainable_state()
    with pytest.raises(ValueError, match="missing adapter_config.json"):
        build_policy(make_cfg("flux2-klein", lora={"init_adapter": str(tmp_path)}))


@pytest.mark.parametrize("fam", FAMILIES)
def test_kl_reference_modes(fam, refs2):
    p = build_policy(make_cfg(fam))
    r = p.sample_group("a cat", refs2, 2, make_params(), 1)
    xt, _, k = r.transition(0)
    s = r.sigmas[k]
    sft0 = p.reference_velocity(r.cond, xt, s, "sft")
    torch.testing.assert_close(sft0, p.reference_velocity(r.cond, xt, s, "base"))  # fresh LoRA (B = 0) == base
    torch.testing.assert_close(sft0, p.velocity(r.cond, xt, s))
    # the "sft" snapshot is taken at build time: it stays put when the trained adapter moves
    _bump_lora(p, 6)
    moved = p.velocity(r.cond, xt, s)
    assert not torch.allclose(moved, sft0)
    torch.testing.assert_close(p.reference_velocity(r.cond, xt, s, "sft"), sft0)
    torch.testing.assert_close(p.reference_velocity(r.cond, xt, s, "base"), sft0)
    flags = [q.requires_grad for q in p.transformer.parameters()]
    with p.use_reference("sft"):
        pass
    assert flags == [q.requires_grad for q in p.transformer.parameters()]  # peft's toggles undone
    torch.testing.assert_close(p.velocity(r.cond, xt, s), moved)  # trained adapter active again
    with pytest.raises(ValueError, match="'sft' or 'base'"):
        p.reference_velocity(r.cond, xt, s, "ema")


@pytest.mark.parametrize("fam", FAMILIES)
def test_sft_reference_is_the_init_adapter_and_base_drops_it(fam, tmp_path, refs2):
    a = build_policy(make_cfg(fam))
    _bump_lora(a, 7)
    d = a.save_adapter(tmp_path / "sft")
    b = build_policy(make_cfg(fam, lora={"init_adapter": str(d)}))
    base = build_policy(make_cfg(fam))  # fresh LoRA == base model
    r = b.sample_group("a cat", refs2, 2, make_params(), 1)
    xt, _, k = r.transition(0)
    s = r.sigmas[k]
    torch.testing.assert_close(b.reference_velocity(r.cond, xt, s, "sft"), a.velocity(r.cond, xt, s))
    torch.testing.assert_close(b.reference_velocity(r.cond, xt, s, "base"), base.velocity(r.cond, xt, s))
    assert not torch.allclose(a.velocity(r.cond, xt, s), base.velocity(r.cond, xt, s))


def test_full_finetune_and_reference(refs2):
    p = build_policy(make_cfg("flux2-klein", finetune="full"))
    n_all = sum(q.numel() for q in p.transformer.parameters())
    assert sum(q.numel() for q in p.trainable_parameters()) == n_all
    params = make_params()
    r = p.sample_group("a cat", refs2, 2, params, 3)
    xt, xn, k = r.transition(0)
    out = p.step_log_prob(r.cond, xt, xn, k, r.sigmas, params)
    assert (out.log_prob - r.log_probs[:, 0]).abs().max() <= 1e-5
    ref = p.reference_velocity(r.cond, xt, r.sigmas[k])
    opt = torch.optim.SGD(p.trainable_parameters(), lr=0.5)
    (-out.log_prob.mean()).backward()
    opt.step()
    assert not torch.allclose(p.velocity(r.cond, xt, r.sigmas[k]), ref)
    torch.testing.assert_close(p.reference_velocity(r.cond, xt, r.sigmas[k]), ref)
    q = build_policy(make_cfg("flux2-klein", finetune="full"))
    q.load_trainable_state(p.trainable_state())
    torch.testing.assert_close(q.velocity(r.cond, xt, r.sigmas[k]), p.velocity(r.cond, xt, r.sigmas[k]))
    with pytest.raises(ValueError, match="no adapter"):
        p.save_adapter("/tmp/never")


def test_wire_round_trip_through_codec(pol, refs2):
    params = make_params(num_train_steps=2)
    r = pol.sample_group("a cat", refs2, 2, params, 8)
    back = GroupRollout.from_wire(codec.decode(codec.encode(r.to_wire())))
    assert np.array_equal(back.images, r.images) and torch.equal(back.x_t, r.x_t)
    assert back.step_indices.tolist() == r.step_indices.tolist() and back.params == r.params
    xt, xn, k = back.transition(1)
    out = pol.step_log_prob(back.cond, xt, xn, k, back.sigmas, back.params)
    assert (out.log_prob - r.log_probs[:, 1]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="lacks"):
        GroupRollout.from_wire({"images": r.images})


def test_sampling_takes_typed_params_and_the_rollout_keeps_them(pol, refs2):
    params = make_params()
    r = pol.sample_group("a cat", refs2, 2, params, 1)
    assert r.params is params  # the learner recomputes with the very parameters the group was drawn with
    # a dict without noise_level used to run at a fallback of 1.0 written in the policy; now refused
    partial = {k: v for k, v in params.model_dump().items() if k != "noise_level"}
    with pytest.raises(TypeError, match="SamplingParams"):
        pol.sample_group("a cat", refs2, 2, partial, 1)
    xt, xn, k = r.transition(0)
    with pytest.raises(TypeError, match="SamplingParams"):
        pol.step_log_prob(r.cond, xt, xn, k, r.sigmas, {"dynamics": "flow-sde"})
    with pytest.raises(TypeError, match="SamplingParams"):
        pol.choose_train_steps({"num_inference_steps": 4}, 0)


@pytest.mark.parametrize("n", [0, 1, 4, 10])
def test_one_to_ten_mixed_references(pol, n):
    roles = ["subject", "style", "background", "lighting", "pose"]
    refs = []
    for i in range(n):
        img = rand_image(24 + 13 * i, 72 - 5 * i, i)
        refs.append(Reference(role=roles[i % 5], image=encode_image(img)) if i % 2 else (roles[i % 5], img))
    r = pol.sample_group("compose them", refs, 2, make_params(num_inference_steps=2, train_steps=(0, 1)), 1)
    assert r.images.shape == (2, 64, 64, 3) and r.n_refs == n and torch.isfinite(r.log_probs).all()
    if n:
        assert r.cond.tensors["image_latents"].shape[1] > 0
    if pol.family.name == "qwen-image-edit-plus":
        assert len(r.cond.meta["img_shapes"]) == n + 1


def test_reference_errors_surface_from_the_policy(pol):
    img = rand_image(32, 32)
    with pytest.raises(TooManyReferencesError):
        pol.sample_group("x", [("subject", img)] * 11, 2, make_params(), 0)
    with pytest.raises(UnknownRoleError):
        pol.generate("x", [("colour", img)])
    with pytest.raises(ValueError, match="not a readable image"):
        pol.generate("x", [("subject", b"\x89PNG but not really")])


def test_generate_matches_the_diffusers_pipeline_call(pol, monkeypatch):
    """Our ODE loop feeds the transformer what pipeline.__call__ does: same images."""
    refs = [rand_image(64, 64, 1), rand_image(64, 64, 2)]  # Flux's pipeline wants >= 64 px; <= reference_size^2
    seed, steps = 3, 3
    cond, _, _ = pol.encode("a cat", [("subject", refs[0]), ("style", refs[1])])
    g = torch.Generator().manual_seed(mix_seed(seed, 1, 0))
    ours = pol.generate("a cat", [("subject", refs[0]), ("style", refs[1])], n=1, seed=seed,
                        num_inference_steps=steps, output_type="np")
    pipe, cfg = pol.pipe, pol.cfg
    if pol.family.name == "flux2-klein":
        h, w = pol.family._latent_hw(64, 64)
        lat = torch.randn((1, cond.meta["channels"], h, w), generator=g)
        out = pipe(prompt="a cat", image=refs, height=64, width=64, num_inference_steps=steps, guidance_scale=1.0,
                   max_sequence_length=cfg.max_sequence_length, text_encoder_out_layers=(1,), latents=lat,
                   output_type="np").images
    else:
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as m
        monkeypatch.setattr(m, "VAE_IMAGE_SIZE", cfg.reference_size ** 2)
        monkeypatch.setattr(m, "CONDITION_IMAGE_SIZE", cfg.encoder_reference_size ** 2)
        lat = pol.family.noise(g, cond)
        out = pipe(prompt="a cat", image=refs, height=64, width=64, num_inference_steps=steps, true_cfg_scale=1.0,
                   latents=lat, output_type="np").images
    theirs = (out * 255).round().astype(np.uint8)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_true_cfg_changes_the_image(pol, refs2):
    plain = pol.generate("a cat", refs2, seed=1, output_type="np")
    neg_ignored = pol.generate("a cat", refs2, seed=1, negative_prompt="blurry", guidance_scale=1.0, output_type="np")
    guided = pol.generate("a cat", refs2, seed=1, negative_prompt="blurry", guidance_scale=4.0, output_type="np")
    assert np.array_equal(plain, neg_ignored)
    assert not np.array_equal(plain, guided)
    imgs = pol.generate("a cat", refs2, n=2, height=32, width=48, seed=1)
    assert [im.size for im in imgs] == [(48, 32), (48, 32)]


def test_omniref_example_cases_end_to_end(pol):
    cases = json.loads((CASES / "cases.json").read_text())
    assert len(cases) == 4
    params = make_params(num_inference_steps=2, train_steps=(0, 1))
    for case in cases:
        refs = [Reference(role=r["role"], image=(CASES / r["path"]).read_bytes()) for r in case["references"]]
        r = pol.sample_group(case["prompt"], refs, 2, params, seed=1)
        assert r.images.shape == (2, 64, 64, 3) and r.n_refs == len(refs)
        assert r.roles == [x["role"] for x in case["references"]]
        xt, xn, k = r.transition(0)
        out = pol.step_log_prob(r.cond, xt, xn, k, r.sigmas, params)
        assert (out.log_prob - r.log_probs[:, 0]).abs().max() <= 1e-5


def test_pretrained_source_needs_a_local_pipeline(tmp_path):
    with pytest.raises(PolicyLoadError, match="not found"):
        build_policy(make_cfg("flux2-klein", source="pretrained", path=str(tmp_path / "nope")))
    with pytest.raises(PolicyLoadError, match="model_index.json"):
        build_policy(make_cfg("qwen-image-edit-plus", source="pretrained", path=str(tmp_path)))


def test_tiny_builds_are_seeded():
    a, b = build_policy(make_cfg("flux2-klein", seed=1)), build_policy(make_cfg("flux2-klein", seed=1))
    c = build_policy(make_cfg("flux2-klein", seed=2))
    sa, sb, sc = (dict(p.transformer.named_parameters()) for p in (a, b, c))
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert any(not torch.equal(sa[n], sc[n]) for n in sa if "lora" not in n)


def test_lora_targets_per_profile():
    f = build_policy(make_cfg("flux2-klein"))
    names = {n for n, _ in f.named_trainable_parameters()}
    assert any(n.startswith("proj_out.") for n in names) and any(n.startswith("norm_out.linear.") for n in names)
    assert any(".attn.to_qkv_mlp_proj." in n for n in names)
    q = build_policy(make_cfg("qwen-image-edit-plus", lora={"targets": ["to_q", "to_v"], "rank": 2}))
    qn = {n for n, _ in q.named_trainable_parameters()}
    assert qn and all(".to_q." in n or ".to_v." in n for n in qn)
    with pytest.raises(ValueError, match="no_such_module"):
        build_policy(make_cfg("flux2-klein", lora={"targets": ["no_such_module"]}))


def test_bfloat16_policy_keeps_fp32_adapter_and_exact_recompute(refs2):
    p = build_policy(make_cfg("flux2-klein", dtype="bfloat16", gradient_checkpointing=True))
    assert p.transformer.dtype == torch.bfloat16
    assert {q.dtype for q in p.trainable_parameters()} == {torch.float32}
    params = make_params()
    r = p.sample_group("a cat", refs2, 2, params, 1)
    assert r.x_t.dtype == torch.float32 and torch.isfinite(r.log_probs).all()
    p.train()
    xt, xn, k = r.transition(0)
    out = p.step_log_prob(r.cond, xt, xn, k, r.sigmas, params)
    assert (out.log_prob - r.log_probs[:, 0]).abs().max() <= 1e-5
    out.log_prob.mean().backward()
    assert any(q.grad is not None for q in p.trainable_parameters())
