"""SamplingParams: the sampling defaults have one source (the config's declarations), and a run's
parameters are built from its config in one place."""
from common.config import PolicyConfig, SDEConfig, load_config
from common.schemas import SamplingParams

# common/config.py: PolicyConfig num_inference_steps 6, height/width 64; SDEConfig flow-sde, eta 1,
# train steps drawn from (1, 2, 3), one per rollout
KNOWN_DEFAULTS = {"num_inference_steps": 6, "height": 64, "width": 64, "noise_level": 1.0, "dynamics": "flow-sde",
                  "train_steps": (1, 2, 3), "num_train_steps": 1, "guidance_scale": 1.0}


def test_the_defaults_are_the_configs_declarations():
    assert SamplingParams().model_dump() == KNOWN_DEFAULTS
    assert SamplingParams() == SamplingParams.from_config(PolicyConfig())
    # not a copy that could drift: the wire type's defaults are the config's own objects
    for name in ("dynamics", "noise_level", "num_train_steps"):
        assert SamplingParams.model_fields[name].default is SDEConfig.model_fields[name].default
    for name in ("num_inference_steps", "height", "width"):
        assert SamplingParams.model_fields[name].default is PolicyConfig.model_fields[name].default


def test_a_run_samples_with_its_profile():
    # configs/cpu-tiny.yaml: 6 steps at 64 px, train steps drawn from [0, 1]
    cpu = SamplingParams.from_config(load_config("cpu-tiny").policy)
    assert cpu.model_dump() == {**KNOWN_DEFAULTS, "train_steps": (0, 1)}
    # configs/gpu.yaml: 10 steps at 512 px; its guidance_scale 4 is for serving, rollouts run without CFG
    gpu = SamplingParams.from_config(load_config("gpu").policy)
    assert gpu.model_dump() == {**KNOWN_DEFAULTS, "num_inference_steps": 10, "height": 512, "width": 512}


def test_from_config_reads_every_sde_field_and_takes_overrides():
    pcfg = PolicyConfig(num_inference_steps=5, height=32, width=48,
                        sde={"dynamics": "cps", "noise_level": 0.3, "train_steps": [0, 2], "num_train_steps": 2})
    got = SamplingParams.from_config(pcfg, width=96)
    assert got.model_dump() == {"num_inference_steps": 5, "height": 32, "width": 96, "noise_level": 0.3,
                                "dynamics": "cps", "train_steps": (0, 2), "num_train_steps": 2, "guidance_scale": 1.0}
