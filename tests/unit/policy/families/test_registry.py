"""The policy-family registry: a family is one module plus one register call; an unknown name is
refused naming policy.family, and never gets another family's LoRA targets."""
import pytest
from pydantic import ValidationError

from common.config import ConfigError, PolicyConfig, load_config
from common.policy import build_policy, default_lora_targets, families
from common.policy.arch import ARCHES
from common.policy.families import FluxFamily, UnknownFamilyError

from ..conftest import make_cfg

# docs/algorithm.md §9, the released adapters' defaults
FLUX_TARGETS = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                "ff_context.linear_out", "attn.to_qkv_mlp_proj"}
QWEN_TARGETS = {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "net.0.proj", "net.2"}
TINY_EXTRA = {"proj_out", "norm_out.linear"}
KNOWN = "known families: flux2-klein, qwen-image-edit-plus"


@pytest.fixture
def registry(monkeypatch):
    """What a test registers is forgotten after it."""
    monkeypatch.setattr(families, "_FAMILIES", dict(families._FAMILIES))


# ---- a new family: this module's class and one register call ----------------------------------

class ToyKlein(FluxFamily):
    """A second Klein-shaped family with its own, smaller LoRA targets and a frozen text encoder."""
    name = "toy-klein"
    default_targets = ("attn.to_q", "attn.to_v")
    trains_text_encoder = False


def test_a_new_family_is_its_class_and_one_register_call(registry):
    with pytest.raises(ValidationError, match="unknown policy family 'toy-klein'"):
        PolicyConfig(family="toy-klein")
    families.register(ToyKlein)
    assert families.names() == ("flux2-klein", "qwen-image-edit-plus", "toy-klein")
    assert load_config("cpu-tiny", {"policy": {"family": "toy-klein"}}).policy.family == "toy-klein"
    pol = build_policy(make_cfg("toy-klein"))
    assert type(pol.family) is ToyKlein
    # its own targets (plus the tiny profile's two), not Klein's: no to_k, no feed-forward
    assert set(pol.lora_config.target_modules) == {"attn.to_q", "attn.to_v"} | TINY_EXTRA
    modules = {n.split(".lora_")[0] for n, _ in pol.named_trainable_parameters()}
    assert modules and all(m.endswith((".attn.to_q", ".attn.to_v")) or m in TINY_EXTRA for m in modules), modules
    assert pol.generate("a cat", n=1, seed=0, output_type="np").shape == (1, 64, 64, 3)
    # what the family declares is what the config checks
    with pytest.raises(ConfigError) as e:
        load_config("cpu-tiny", {"policy": {"family": "toy-klein", "train_text_encoder": True}})
    assert "  policy.train_text_encoder: family toy-klein cannot train its text encoder; families that can: flux2-klein" \
        in str(e.value)


def test_register_refuses_a_family_that_would_fail_later(registry):
    class NoTargets(FluxFamily):
        name = "no-targets"
        default_targets = ()

    class Impostor(FluxFamily):
        name = "qwen-image-edit-plus"

    with pytest.raises(ValueError, match="no default_targets"):
        families.register(NoTargets)
    with pytest.raises(ValueError, match="already registered"):
        families.register(Impostor)
    with pytest.raises(TypeError, match="Family subclass"):
        families.register(object)
    assert families.register(FluxFamily) is FluxFamily  # the same class again: no change
    assert families.names() == ("flux2-klein", "qwen-image-edit-plus")


# ---- unknown names -----------------------------------------------------------------------------

def test_an_unknown_family_names_policy_family_and_lists_the_known_ones(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        load_config("cpu-tiny", {"policy": {"family": "qwen-image-edit"}})
    assert f"  policy.family: Value error, unknown policy family 'qwen-image-edit'; {KNOWN}" in str(e.value)
    p = tmp_path / "typo.yaml"
    p.write_text("policy:\n  family: flux2\n")
    with pytest.raises(ConfigError, match=rf"policy\.family: .*'flux2'; {KNOWN}"):
        load_config(p)
    monkeypatch.setenv("DYREF_POLICY__FAMILY", "flux")
    with pytest.raises(ConfigError, match=r"policy\.family: .*'flux'"):
        load_config("cpu-tiny")


def test_an_unknown_family_never_gets_another_familys_targets():
    # before the registry, any unknown name got Qwen's list here
    with pytest.raises(UnknownFamilyError, match=KNOWN):
        default_lora_targets("flux2", "pretrained")
    unchecked = make_cfg().model_copy(update={"family": "flux2"})  # model_copy skips validation
    with pytest.raises(UnknownFamilyError, match="'flux2'"):
        build_policy(unchecked)


# ---- the two families ------------------------------------------------------------------------

@pytest.mark.parametrize("name, targets", [("flux2-klein", FLUX_TARGETS), ("qwen-image-edit-plus", QWEN_TARGETS)])
def test_each_family_defaults_to_its_own_lora_targets(name, targets):
    assert set(default_lora_targets(name, "pretrained")) == targets
    assert set(default_lora_targets(name, "tiny")) == targets | TINY_EXTRA
    pol = build_policy(make_cfg(name))
    assert set(pol.lora_config.target_modules) == targets | TINY_EXTRA
    modules = {n.split(".lora_")[0] for n, _ in pol.named_trainable_parameters()}
    assert modules and all(any(m == t or m.endswith("." + t) for t in targets | TINY_EXTRA) for m in modules)


def test_every_architecture_and_the_default_name_a_registered_family():
    assert {fam for _, fam in ARCHES.values()} == set(families.names())
    assert PolicyConfig().family in families.names()


def test_families_differ_where_the_config_reads_them():
    flux, qwen = families.get("flux2-klein"), families.get("qwen-image-edit-plus")
    assert (flux.trains_text_encoder, qwen.trains_text_encoder) == (True, False)
    assert (flux.pipeline_class, qwen.pipeline_class) == ("Flux2KleinPipeline", "QwenImageEditPlusPipeline")
