import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_no_section_declares_a_field_twice():
    # a second declaration silently replaces the first (its description and bounds too): read the source
    import ast
    import inspect

    import common.config as config
    tree = ast.parse(inspect.getsource(config))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        names = [s.target.id for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        dups = sorted({n for n in names if names.count(n) > 1})
        assert not dups, f"{cls.name} declares {dups} more than once"


# ---- impossible RL combinations are refused at load, naming the field ---------------------------

def _refused(over, path, *words):
    with pytest.raises(ConfigError) as e:
        load_config("cpu-tiny", over)
    msg = str(e.value)
    assert f"  {path}: " in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_drs_decrease_slope_must_stay_positive_up_to_max_references():
    # defaults k0 10, k1 3, n_max 6: k(n) = 10 + 3 (6 - n) is -2 at n = 10 = policy.max_references
    _refused({"rl": {"drs": {"k_mode": "decrease"}}}, "rl.drs.k1", "= -2", "n = 10", "policy.max_references")
    # the same slope is fine when tasks carry at most 6 references (k(6) = 10), or n_max is 10
    assert load_config("cpu-tiny", {"rl": {"drs": {"k_mode": "decrease"}}, "policy": {"max_references": 6}})
    assert load_config("cpu-tiny", {"rl": {"drs": {"k_mode": "decrease", "n_max": 10}}})
    # k(n) = 10 + 3 (6 - n) > 0 needs n < 9.33: max_references 9 passes, 10 does not
    assert load_config("cpu-tiny", {"rl": {"drs": {"k_mode": "decrease"}}, "policy": {"max_references": 9}})


def test_drs_increase_and_constant_slopes_checked_over_one_to_max_references():
    # increase: k(1) = k0 - k1 = 2 - 3 = -1 (a single reference)
    _refused({"rl": {"drs": {"k0": 2.0, "k1": 3.0}}}, "rl.drs.k1", "= -1", "n = 1")
    # increase with a negative k1: k(10) = 10 - 2 * 8 = -6
    _refused({"rl": {"drs": {"k1": -2.0}}}, "rl.drs.k1", "= -6", "n = 10")
    _refused({"rl": {"drs": {"k_mode": "constant", "k0": 0.0}}}, "rl.drs.k0")
    # not checked where no slope is ever computed: DRS off, or no component passes through DRS
    assert load_config("cpu-tiny", {"rl": {"drs": {"k_mode": "decrease", "enabled": False}}})
    plain = [{"name": "colour", "scorer": "colour", "against": "none"}]
    assert load_config("cpu-tiny", {"rl": {"drs": {"k_mode": "decrease"}}, "rewards": {"components": plain}})


def test_drs_check_applies_to_yaml_and_env(tmp_path, monkeypatch):
    p = tmp_path / "decrease.yaml"
    p.write_text("rl:\n  drs: {k_mode: decrease}\n")
    with pytest.raises(ConfigError, match=r"rl\.drs\.k1: "):
        load_config(p)
    monkeypatch.setenv("DYREF_RL__DRS__K_MODE", "decrease")
    with pytest.raises(ConfigError, match=r"rl\.drs\.k1: "):
        load_config("cpu-tiny")


def test_dar_bounds_must_allow_a_mean_one_weight():
    _refused({"rl": {"dar": {"w_min": 1.2}}}, "rl.dar.w_min")                     # w_min > 1
    _refused({"rl": {"dar": {"w_min": 0.5, "w_max": 0.4}}}, "rl.dar.w_max")       # w_max < w_min (and < 1)
    _refused({"rl": {"dar": {"w_min": 3.0, "w_max": 2.0}}}, "rl.dar.w_min")       # w_max < w_min, both > 1
    _refused({"rl": {"dar": {"w_min": 0.9, "w_max": 0.95}}}, "rl.dar.w_max")      # w_max < 1
    assert load_config("cpu-tiny", {"rl": {"dar": {"w_min": 1.0, "w_max": 1.0}}})  # all ones: allowed


def test_dar_reference_mode_refuses_fields_it_does_not_read():
    msg = _refused({"rl": {"dar": {"mode": "reference", "beta": 1.0, "n0": 2.0}}}, "rl.dar.beta", "not read")
    assert "  rl.dar.n0: " in msg
    _refused({"rl": {"dar": {"mode": "reference", "gamma": 1.5}}}, "rl.dar.gamma", "act as 1")
    # the same values are read (so allowed) in the normalized mode; integers are fine in reference
    assert load_config("cpu-tiny", {"rl": {"dar": {"beta": 1.0, "n0": 2.0, "gamma": 1.5}}})
    assert load_config("cpu-tiny", {"rl": {"dar": {"mode": "reference", "gamma": 3.0}}})


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["increase", "decrease", "constant"]), st.integers(-20, 20).map(float),
       st.integers(-6, 6).map(float), st.integers(2, 12), st.integers(1, 12))
def test_prop_drs_config_accepted_iff_every_allowed_count_has_a_positive_slope(k_mode, k0, k1, n_max, max_refs):
    slopes = {"increase": [k0 + k1 * (n - 2) for n in range(1, max_refs + 1)],
              "decrease": [k0 + k1 * (n_max - n) for n in range(1, max_refs + 1)],
              "constant": [k0] * max_refs}[k_mode]
    over = {"rl": {"drs": {"k_mode": k_mode, "k0": k0, "k1": k1, "n_max": n_max}},
            "policy": {"max_references": max_refs}}
    if all(k > 0 for k in slopes):
        load_config("cpu-tiny", over)
    else:
        with pytest.raises(ConfigError, match=r"rl\.drs\.k[01]: "):
            load_config("cpu-tiny", over)


@pytest.mark.parametrize("rl, policy, field", [
    # a GRPO group is trained whole on one worker: more workers than groups per step idle
    ({"groups_per_step": 2, "learner": {"workers": 3}}, {}, r"rl\.learner\.workers: 3 trainer workers but a step has only 2"),
    # FSDP2's own settings under DDP would be silently ignored
    ({"learner": {"strategy": "ddp", "param_dtype": "bf16"}}, {}, r"rl\.learner\.param_dtype: is an fsdp2 setting"),
    ({"learner": {"activation_checkpointing": True}}, {}, r"rl\.learner\.activation_checkpointing: is an fsdp2 setting"),
    # NCCL needs CUDA tensors, gloo CPU ones
    ({"learner": {"workers": 2, "gpus_per_worker": 1}}, {}, r"rl\.learner\.gpus_per_worker: the trainer workers reserve GPUs"),
    ({"learner": {"workers": 2}}, {"device": "cuda"}, r"rl\.learner\.gpus_per_worker: policy\.device is 'cuda'"),
    ({"learner": {"strategy": "fsdp2", "activation_checkpointing": True}}, {"gradient_checkpointing": True},
     r"rl\.learner\.activation_checkpointing: policy\.gradient_checkpointing already"),
])
def test_trainer_worker_settings_the_model_cannot_use_are_refused_naming_the_field(rl, policy, field):
    with pytest.raises(ConfigError, match=field):
        load_config("cpu-tiny", {"rl": rl, "policy": policy})
    load_config("cpu-tiny")  # the defaults are one worker, which always fits
