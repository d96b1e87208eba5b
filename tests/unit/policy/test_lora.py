import json

import pytest
import torch

from common.policy.lora import AdapterError, make_lora_config, read_adapter_dir, to_param_names, write_adapter_dir


def test_key_mapping_accepts_peft_diffusers_and_named_keys():
    t = torch.zeros(1)
    sd = {"base_model.model.blocks.0.to_q.lora_A.weight": t, "transformer.blocks.0.to_q.lora_B.weight": t,
          "blocks.1.to_k.lora_A.default.weight": t, "diffusion_model.blocks.1.to_k.lora_B.weight": t}
    assert sorted(to_param_names(sd)) == ["blocks.0.to_q.lora_A.default.weight", "blocks.0.to_q.lora_B.default.weight",
                                          "blocks.1.to_k.lora_A.default.weight", "blocks.1.to_k.lora_B.default.weight"]
    with pytest.raises(AdapterError, match="duplicate"):
        to_param_names({"a.lora_A.weight": t, "transformer.a.lora_A.weight": t})


def test_write_then_read_adapter_dir(tmp_path):
    cfg = make_lora_config(4, 8.0, ["to_q", "proj_out"])
    state = {"x.to_q.lora_A.default.weight": torch.randn(4, 8), "x.to_q.lora_B.default.weight": torch.randn(8, 4),
             "x.to_q.lora_A.reference.weight": torch.randn(4, 8)}  # other adapters are not written
    d = write_adapter_dir(tmp_path / "a", cfg, state)
    lcfg, sd = read_adapter_dir(d)
    assert lcfg.r == 4 and lcfg.lora_alpha == 8.0 and set(lcfg.target_modules) == {"to_q", "proj_out"}
    assert set(sd) == {"base_model.model.x.to_q.lora_A.weight", "base_model.model.x.to_q.lora_B.weight"}
    back = to_param_names(sd)
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_bad_adapter_dirs(tmp_path):
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        read_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(AdapterError, match="not valid JSON"):
        read_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["a"]}))
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        read_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "target_modules": ["a"]}))
    with pytest.raises(AdapterError, match="not LORA"):
        read_adapter_dir(tmp_path)
