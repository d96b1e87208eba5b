import pytest

from common.config import ConfigError, PolicyConfig, load_config


def test_default_profile_is_cpu_tiny(monkeypatch):
    monkeypatch.delenv("DYREF_PROFILE", raising=False)
    cfg = load_config()
    assert cfg.profile == "cpu-tiny"
    assert cfg.policy.source == "tiny" and cfg.policy.device == "cpu"


def test_gpu_profile_loads():
    cfg = load_config("gpu")
    assert cfg.policy.family == "qwen-image-edit-plus" and cfg.rl.group_size == 24
    assert [c.name for c in cfg.rewards.components] == ["image_similarity", "csd_score"]


def test_env_override_nested(monkeypatch):
    monkeypatch.setenv("DYREF_RL__DAR__GAMMA", "1.5")
    monkeypatch.setenv("DYREF_REDIS__URL", "redis://127.0.0.1:1/0")
    cfg = load_config("cpu-tiny")
    assert cfg.rl.dar.gamma == 1.5 and cfg.redis.url.endswith(":1/0")


def test_explicit_override_beats_env(monkeypatch):
    monkeypatch.setenv("DYREF_RL__LR", "0.5")
    assert load_config("cpu-tiny", {"rl": {"lr": 0.25}}).rl.lr == 0.25


def test_bad_value_names_the_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("rl:\n  dar:\n    gamma: lots\n")
    with pytest.raises(ConfigError, match=r"rl\.dar\.gamma"):
        load_config(p)


def test_unknown_field_is_refused(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("policy:\n  hieght: 64\n")
    with pytest.raises(ConfigError, match=r"policy\.hieght"):
        load_config(p)


def test_size_must_be_multiple_of_16():
    with pytest.raises(ValueError, match="height must be a multiple of 16"):
        PolicyConfig(height=70)


def test_unknown_profile_lists_known():
    with pytest.raises(ConfigError, match="cpu-tiny"):
        load_config("nope")


def test_every_field_is_described():
    from pydantic import BaseModel

    from common.config import DyRefConfig

    def walk(model, prefix=""):
        for name, f in model.model_fields.items():
            assert f.description, f"{prefix}{name} has no description"
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
    walk(DyRefConfig)
