"""DiffSynth LoRA files <-> PEFT adapter directories: bit-exact round trips and identical policies."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from common.config import LoraConfig
from common.policy import build_policy
from common.policy.cli import adapter_app
from common.policy.convert import d2p_state, diffsynth_to_peft, p2d_state, peft_to_diffsynth
from common.policy.lora import AdapterError, read_adapter_dir

from .conftest import make_cfg, rand_image


def diffsynth_sd(prefix="transformer", r=4, adapter="default", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    pre = f"{prefix}." if prefix else ""
    sd = {}
    for m, (o, i) in {"transformer_blocks.0.attn.to_q": (32, 32), "single_transformer_blocks.0.attn.to_out": (32, 96),
                      "proj_out": (4, 32)}.items():
        name = f".{adapter}" if adapter else ""
        sd[f"{pre}{m}.lora_A{name}.weight"] = torch.randn(r, i, generator=g).to(dtype)
        sd[f"{pre}{m}.lora_B{name}.weight"] = torch.randn(o, r, generator=g).to(dtype)
    return sd


@pytest.mark.parametrize("prefix,adapter,dtype", [("transformer", "default", torch.float32), ("", "default", torch.bfloat16),
                                                  ("diffusion_model", None, torch.float16)])
def test_state_round_trip_is_exact(prefix, adapter, dtype):
    sd = diffsynth_sd(prefix, adapter=adapter, dtype=dtype)
    peft, cfg = d2p_state(sd, prefix)
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in peft)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 4 and cfg["lora_dropout"] == 0.0 and cfg["inference_mode"] is True
    assert cfg["target_modules"] == sorted(["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_out",
                                            "proj_out"])
    back = p2d_state(peft, prefix, adapter)
    assert back.keys() == sd.keys()
    assert all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in sd)


def test_files_round_trip_and_config(tmp_path):
    sd = diffsynth_sd()
    save_file(sd, str(tmp_path / "paper.safetensors"))
    d = diffsynth_to_peft(tmp_path / "paper.safetensors", tmp_path / "peft", prefix="transformer")
    raw = json.loads((d / "adapter_config.json").read_text())
    assert raw["r"] == 4 and raw["lora_alpha"] == 4 and raw["inference_mode"] is True
    assert sorted(raw["target_modules"]) == sorted({k.split(".lora_")[0][len("transformer."):] for k in sd})
    cfg, peft = read_adapter_dir(d)
    assert cfg.r == 4 and len(peft) == 6
    out = peft_to_diffsynth(d, tmp_path / "back.safetensors", prefix="transformer")
    back = load_file(str(out))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_export_then_import_gives_identical_policy(tmp_path):
    cfg = make_cfg()
    pol = build_policy(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B non-zero
        for n, p in pol.named_trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    pol.save_adapter(tmp_path / "ours")
    peft_to_diffsynth(tmp_path / "ours", tmp_path / "paper.safetensors", prefix="")
    paper = load_file(str(tmp_path / "paper.safetensors"))
    assert all(".lora_A.default.weight" in k or ".lora_B.default.weight" in k for k in paper)
    assert not any(k.startswith(("base_model", "transformer.")) for k in paper)
    diffsynth_to_peft(tmp_path / "paper.safetensors", tmp_path / "back", prefix="")
    again = build_policy(make_cfg(lora=LoraConfig(init_adapter=str(tmp_path / "back"))))
    assert again.trainable_state() == pol.trainable_state()
    refs = [("subject", rand_image(64, 64, 3))]
    a = pol.generate("a red cube", refs, seed=4, output_type="np")
    b = again.generate("a red cube", refs, seed=4, output_type="np")
    assert (a == b).all()
    cond, _, _ = pol.encode("a red cube", refs)
    x = pol.family.noise(torch.Generator().manual_seed(0), cond)
    with torch.no_grad():
        assert torch.equal(pol.velocity(cond, x, 0.5), again.velocity(cond, x, 0.5))


def test_export_folds_a_non_unit_scale_into_b(tmp_path):
    pol = build_policy(make_cfg(lora=LoraConfig(rank=4, alpha=12.0)))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in pol.named_trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    pol.save_adapter(tmp_path / "ours")
    peft_to_diffsynth(tmp_path / "ours", tmp_path / "paper.safetensors")
    diffsynth_to_peft(tmp_path / "paper.safetensors", tmp_path / "back", prefix="")
    again = build_policy(make_cfg(lora=LoraConfig(init_adapter=str(tmp_path / "back"))))
    assert again.lora_config.lora_alpha == again.lora_config.r == 4
    cond, _, _ = pol.encode("x", [])
    x = pol.family.noise(torch.Generator().manual_seed(0), cond)
    with torch.no_grad():
        torch.testing.assert_close(pol.velocity(cond, x, 0.5), again.velocity(cond, x, 0.5), rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_problem(tmp_path):
    sd = diffsynth_sd()
    with pytest.raises(AdapterError, match="lacks the prefix"):
        d2p_state(sd, "dit")
    with pytest.raises(AdapterError, match="needs both lora_A and lora_B"):
        d2p_state({k: v for k, v in sd.items() if "proj_out.lora_B" not in k}, "transformer")
    with pytest.raises(AdapterError, match="not a LoRA weight key"):
        d2p_state({**sd, "transformer.proj_out.weight": torch.zeros(1)}, "transformer")
    odd = dict(sd)
    odd["transformer.proj_out.lora_A.default.weight"] = torch.zeros(2, 32)
    odd["transformer.proj_out.lora_B.default.weight"] = torch.zeros(4, 2)
    with pytest.raises(AdapterError, match="different ranks"):
        d2p_state(odd, "transformer")
    with pytest.raises(AdapterError, match="not found"):
        diffsynth_to_peft(tmp_path / "nope.safetensors", tmp_path / "o")
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        peft_to_diffsynth(tmp_path, tmp_path / "o.safetensors")


def test_cli_import_export(tmp_path):
    save_file(diffsynth_sd(), str(tmp_path / "paper.safetensors"))
    run = CliRunner()
    res = run.invoke(adapter_app, ["import", str(tmp_path / "paper.safetensors"), str(tmp_path / "peft")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["r"] == 4
    res = run.invoke(adapter_app, ["export", str(tmp_path / "peft"), str(tmp_path / "b.safetensors"),
                                   "--prefix", "transformer"])
    assert res.exit_code == 0, res.output
    assert load_file(str(tmp_path / "b.safetensors")).keys() == diffsynth_sd().keys()
    res = run.invoke(adapter_app, ["import", str(tmp_path / "paper.safetensors"), str(tmp_path / "x"), "--prefix", "dit"])
    assert res.exit_code != 0 and "'dit.'" in res.output
