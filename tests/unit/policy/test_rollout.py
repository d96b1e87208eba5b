"""GroupRollout: params are typed SamplingParams; the wire keeps the keys older learners read, and a
payload whose params lack a field is refused rather than filled with a default."""
import numpy as np
import pytest
import torch

from common.codec import decode, encode
from common.policy import GroupRollout
from common.policy.families import Cond
from common.schemas import SamplingParams

# the params dict generators sent before issue 18 (common/policy/policy.py sample_group)
OLD_WIRE = {"dynamics": "dance-sde", "noise_level": 0.7, "num_inference_steps": 4, "height": 32, "width": 48,
            "train_steps": [0, 2], "num_train_steps": 1}


def rollout(params: SamplingParams) -> GroupRollout:
    g, t, s, c = 2, 1, 3, 4
    cond = Cond({"prompt_embeds": torch.zeros(1, 2, 8)}, {"family": "flux2-klein", "height": 32, "width": 48,
                                                           "seq_len": s, "channels": c})
    return GroupRollout(images=np.zeros((g, 32, 48, 3), np.uint8), x_t=torch.randn(g, t, s, c),
                        x_next=torch.randn(g, t, s, c), step_indices=torch.tensor([2]), log_probs=torch.randn(g, t),
                        sigmas=torch.linspace(1, 0, 5), cond=cond, seed=3, prompt="p", n_refs=0, params=params)


def test_params_survive_the_wire_typed():
    params = SamplingParams(**OLD_WIRE, guidance_scale=2.0)
    back = GroupRollout.from_wire(decode(encode(rollout(params).to_wire())))
    assert isinstance(back.params, SamplingParams) and back.params == params
    assert back.params.dynamics == "dance-sde" and back.params.noise_level == 0.7


def test_the_wire_keeps_what_older_learners_read():
    wire = decode(encode(rollout(SamplingParams(**OLD_WIRE)).to_wire()))["params"]
    assert {k: wire[k] for k in OLD_WIRE} == OLD_WIRE  # same keys and values (train_steps a list)
    assert set(wire) - set(OLD_WIRE) == {"guidance_scale"}


def test_an_older_generators_payload_is_read():
    d = rollout(SamplingParams(**OLD_WIRE)).to_wire()
    d["params"] = dict(OLD_WIRE)  # no guidance_scale: generators before issue 18 did not send it
    assert GroupRollout.from_wire(d).params == SamplingParams(**OLD_WIRE)


@pytest.mark.parametrize("field", ["dynamics", "noise_level", "train_steps"])
def test_params_lacking_a_field_are_refused_not_defaulted(field):
    d = rollout(SamplingParams(**OLD_WIRE)).to_wire()
    d["params"] = {k: v for k, v in OLD_WIRE.items() if k != field}
    with pytest.raises(ValueError, match=f"params lack {field}"):
        GroupRollout.from_wire(d)
    del d["params"]
    with pytest.raises(ValueError, match="lacks params"):
        GroupRollout.from_wire(d)


def test_a_scored_group_survives_the_wire_with_the_keys_older_learners_read():
    from common.policy import ScoredGroup
    rewards = {"subjects": [[0.5, None], [0.25, 1.0]], "background": None, "scene": [0.75, None]}
    g = ScoredGroup(task_id="run-00000007", rollout=rollout(SamplingParams(**OLD_WIRE)), rewards=rewards, record_index=4)
    wire = decode(encode(g.to_wire()))
    assert set(wire) == {"task_id", "record_index", "rollout", "rewards"}   # the dict generators wrote before
    back = ScoredGroup.from_wire(wire)
    assert (back.task_id, back.record_index, back.rewards) == ("run-00000007", 4, rewards)
    assert torch.equal(back.rollout.log_probs, g.rollout.log_probs)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("rewards"), "lacks rewards"),
    (lambda d: d.pop("task_id"), "lacks task_id"),
    (lambda d: d.update(rewards=[0.5, 0.5]), "must map component names"),
    (lambda d: d.update(rewards={"scene": 0.5}), "rewards scene: expected a list"),
    (lambda d: d["rollout"].pop("x_t"), "lacks x_t"),
])
def test_a_payload_that_is_not_a_scored_group_is_refused_naming_what(change, message):
    from common.policy import ScoredGroup
    d = ScoredGroup(task_id="t", rollout=rollout(SamplingParams(**OLD_WIRE)), rewards={"scene": [1.0, 0.0]}).to_wire()
    change(d)
    with pytest.raises(ValueError, match=message):
        ScoredGroup.from_wire(d)
    with pytest.raises(ValueError, match="must be a mapping"):
        ScoredGroup.from_wire([d])
