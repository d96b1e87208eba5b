"""RL on the real path learns from the per-reference reward, and only from it.

A barely trained policy (10 SFT steps: its images are still mostly noise), then two RL runs from
the same weights through generators, the Serve reward app, Redis and the learner: one with the
real advantages (GDPO + DRS + DAR), one with the advantages shuffled across the batch (the
negative control). Both are scored on the same held-out cases with the same noise: the paired
per-case difference against the start must rise for the real run, and beat the control case by
case (docs/learning.md §5; the full-size version of this is `dyref demo-ablation`).
"""
from __future__ import annotations

import pytest

from common.config import load_config
from common.synthetic.evaluation import paired_difference
from dyref.demo import DemoPlan, run_ablation

pytestmark = pytest.mark.integration

# Background cases (one subject on a background reference), from a barely trained policy (its
# images are still mostly noise), rewarded by the background reference's s_j and the scene outside
# the subject. Turning noise into the backdrop raises every s_j of the held-out cases (the
# background's, and the subject's, whose look no longer appears all over the noise); it is the
# per-reference analogue of docs/measurements.md §7's colour reward, which rises within ~60 steps.
PLAN = DemoPlan(n_train=128, n_test=48, size=32, max_refs=2, categories=("subject_bg",), sft_steps=10,
                sft_eval_every=0, rl_steps=80, eval_steps=4, eval_subset=8, rl_eval_every=0, rl_min_refs=1,
                rl_lr=1e-3, kl_beta=0.0,
                extra={"rewards.components": [
                    {"name": "background", "scorer": "references", "against": "none", "roles": ["background"]},
                    {"name": "scene", "scorer": "references", "against": "target"}]})


def test_rl_raises_the_held_out_per_reference_metric_beyond_the_shuffled_control(ray_cluster, redis_server,
                                                                                      tmp_path):
    results = run_ablation(load_config("cpu-tiny"), tmp_path, PLAN, redis_server.url, seeds=(0,),
                           variants=("gdpo+drs+dar", "shuffled"), say=lambda _: None)
    sft = results["sft"][0]
    real = paired_difference(sft, results["gdpo+drs+dar"][0], "reference_similarity")["all"]
    control = paired_difference(sft, results["shuffled"][0], "reference_similarity")["all"]
    gap = paired_difference(results["shuffled"][0], results["gdpo+drs+dar"][0], "reference_similarity")["all"]
    print(f"reference_similarity RL − SFT: real {real}, shuffled {control}; real − shuffled {gap}")
    assert real["n"] == PLAN.n_test and control["n"] == PLAN.n_test
    assert real["ci95"][0] > 0, f"RL did not raise the held-out per-reference similarity: {real}"
    # the control: advantages permuted across the batch carry no information about the samples, so
    # whatever it gains (a random walk smoothing the barely trained policy's noise) is not the reward's
    # doing; the real run must beat it case by case
    assert gap["ci95"][0] > 0, f"the real advantages did no better than shuffled ones: {gap} (real {real}, shuffled {control})"
    assert control["mean"] < real["mean"] / 2, f"the shuffled control gained too much: real {real}, shuffled {control}"
