"""MRIGPolicy: a multi-reference flow-matching image policy on a diffusers pipeline.

Rollouts (``sample_group``) run the paper's sampler: plain Euler ODE steps everywhere except the
train steps drawn (seeded) from ``train_steps``, where the configured SDE injects noise and the
Gaussian log-prob of the transition is recorded (docs/algorithm.md §7). The learner recomputes that
log-prob under the current weights with ``step_log_prob`` from the stored (x_t, x_{t+1}) and the
group's conditioning. Serving uses ``generate`` (ODE, optional true CFG). The transformer is
trained (LoRA through peft, or every weight); the VAE stays frozen, and so does the text encoder
unless ``policy.train_text_encoder`` trains it too (FLUX.2-klein; its parameters then appear in the
trainable state as ``text_encoder.<name>``). A tiny policy's text encoder is random: frozen, it
leaves the slot words of a prompt too alike for placement to be learnt (docs/learning.md).
"""
from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from common.codec import state_from_bytes, state_to_bytes
from common.policy.families import Cond, Family
from common.policy.lora import (ADAPTER, REFERENCE_ADAPTER, AdapterError,
                                write_adapter_dir)
from common.policy.references import CompiledReferences, compile_references
from common.policy.rollout import GroupRollout, StepOutput
from common.policy.sde import DYNAMICS, sde_step
from common.schemas import SamplingParams

__all__ = ["MRIGPolicy", "TrainableStateError", "SamplingError", "mix_seed"]

log = logging.getLogger(__name__)


class TrainableStateError(ValueError):
    """A weight payload whose keys or shapes do not match this policy's trainable parameters."""


class SamplingError(ValueError):
    """Sampling parameters that this policy cannot run (size, steps, train steps, noise level)."""


def mix_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from (seed, keys): independent streams for noise, SDE, step choice."""
    ss = np.random.SeedSequence([int(seed) & ((1 << 64) - 1), *[int(k) for k in keys]])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & np.uint64((1 << 63) - 1))


_INIT, _SDE, _STEPS, _LORA = 1, 2, 3, 4
TEXT_ENCODER_PREFIX = "text_encoder."
PROBE_PROMPT = "put the red circle at the top left"


def _sampling(params: SamplingParams) -> SamplingParams:
    # typed, never a dict: a dict lacking a field used to get a fallback written here, which need not
    # be the config's; SamplingParams' defaults are the config's, declared once
    if not isinstance(params, SamplingParams):
        raise TypeError(f"sampling params must be a common.schemas.SamplingParams, got {type(params).__name__} "
                        f"(SamplingParams.from_config(policy_config) builds a run's)")
    return params


class MRIGPolicy:
    """Wraps a diffusers pipeline (``pipe``) and a :class:`~common.policy.families.Family`."""

    def __init__(self, cfg, pipe, family: Family, lora_config=None, init_state: dict | None = None):
        self.cfg = cfg
        self.pipe = pipe
        self.family = family
        self.device = torch.device(cfg.device)
        self.transformer = pipe.transformer
        self.finetune = cfg.finetune
        self.lora_config = lora_config
        self.training = False
        self.train_text_encoder = bool(getattr(cfg, "train_text_encoder", False))
        if self.train_text_encoder and not family.trains_text_encoder:
            raise ValueError(f"policy.train_text_encoder: family {family.name} cannot train its text encoder")
        for m in (pipe.text_encoder, pipe.vae):
            m.requires_grad_(False)
            m.eval()
        self._te_model = pipe.text_encoder
        self._ref_te = None
        tr = self.transformer
        tr.requires_grad_(False)
        self._ref_model = None
        if self.finetune == "lora":
            # LoRA A is randomly initialised: seed it, so equal configs give equal policies everywhere
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mix_seed(cfg.seed, _LORA))
                tr.add_adapter(lora_config, adapter_name=ADAPTER)
            if init_state is not None:
                self._load_named(init_state, what="init adapter")
            # frozen copy of the starting adapter: the "sft" KL reference, switched in by name
            with warnings.catch_warnings():  # peft warns that a second adapter is added: intended
                warnings.simplefilter("ignore", UserWarning)
                tr.add_adapter(copy.deepcopy(lora_config), adapter_name=REFERENCE_ADAPTER)
            tr.set_adapter(ADAPTER)
            named = dict(tr.named_parameters())
            with torch.no_grad():
                for n in [n for n in named if f".{ADAPTER}." in n and "lora_" in n]:
                    named[n.replace(f".{ADAPTER}.", f".{REFERENCE_ADAPTER}.")].copy_(named[n])
            self._trainable_names = [n for n in named if "lora_" in n and f".{ADAPTER}." in n]
            if not self._trainable_names:
                raise AdapterError(f"LoRA targets {sorted(lora_config.target_modules)} matched no module")
            if tr.dtype != torch.float32:  # keep adapter weights (and their optimizer) in fp32
                for n, p in named.items():
                    if "lora_" in n:
                        p.data = p.data.float()
        else:
            self._trainable_names = [n for n, _ in tr.named_parameters()]
            self._ref_model = copy.deepcopy(tr).requires_grad_(False).eval()
        if self.train_text_encoder:
            self._trainable_names += [TEXT_ENCODER_PREFIX + n for n, _ in pipe.text_encoder.named_parameters()]
            self._ref_te = copy.deepcopy(pipe.text_encoder).requires_grad_(False).eval()
        self._set_trainable_flags()
        if cfg.gradient_checkpointing:
            tr.enable_gradient_checkpointing()
        self._model = tr
        tr.eval()

    def reset_reference(self) -> None:
        """Make the current trainable weights the KL "sft" reference (e.g. after loading SFT weights)."""
        tr = self.transformer
        if self.train_text_encoder:
            self._ref_te = copy.deepcopy(self.pipe.text_encoder).requires_grad_(False).eval()
        if self.finetune == "full":
            self._ref_model = copy.deepcopy(tr).requires_grad_(False).eval()
            return
        named = dict(tr.named_parameters())
        with torch.no_grad():
            for n in self._trainable_names:
                named[n.replace(f".{ADAPTER}.", f".{REFERENCE_ADAPTER}.")].copy_(named[n])

    # ---- parameters and weights ------------------------------------------------------------

    def _named(self) -> dict[str, torch.nn.Parameter]:
        """Every parameter that can be trained: the transformer's, then the text encoder's (prefixed)."""
        named = dict(self.transformer.named_parameters())
        named.update({TEXT_ENCODER_PREFIX + n: p for n, p in self.pipe.text_encoder.named_parameters()})
        return named

    def _set_trainable_flags(self):
        keep = set(self._trainable_names)
        for n, p in self._named().items():
            p.requires_grad_(n in keep)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        named = self._named()
        return [named[n] for n in self._trainable_names]

    def named_trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        named = self._named()
        return [(n, named[n]) for n in self._trainable_names]

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        """The modules holding the trainable parameters, by the prefix their names carry in
        :meth:`named_trainable_parameters` (a data-parallel wrapper takes these)."""
        out = {"transformer": self.transformer}
        if self.train_text_encoder:
            out[TEXT_ENCODER_PREFIX.rstrip(".")] = self.pipe.text_encoder
        return out

    def trainable_state(self, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
        """safetensors bytes of every trainable tensor (LoRA A/B of the trained adapter, or all weights).
        ``tensors``: the same names with other values (a sharded trainer passes the gathered ones)."""
        # one metadata key: safetensors orders several keys arbitrarily, and equal weights must give equal bytes
        meta = {"dyref_policy": f"{self.finetune}:{self.family.name}"}
        if tensors is None:
            tensors = {n: p.detach() for n, p in self.named_trainable_parameters()}
        return state_to_bytes(tensors, metadata=meta)

    def load_trainable_state(self, data: bytes) -> None:
        """Load bytes from :meth:`trainable_state`. Raises TrainableStateError on any key/shape mismatch
        (nothing is modified then): a weight update that does not fit is an error, never a no-op."""
        self._load_named(state_from_bytes(data), what="trainable state")

    def load_init_state(self, data: bytes) -> None:
        """Load a starting point (``policy.init_weights``): a trainable state, possibly of a run that
        also trained the text encoder. Text-encoder tensors load into the frozen encoder when this
        policy does not train it (all of them or none); when it does and the file has none, the
        encoder stays as built. Any other mismatch raises TrainableStateError."""
        sd = state_from_bytes(data)
        te = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_ENCODER_PREFIX)}
        rest = {k: v for k, v in sd.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
        if self.train_text_encoder and te:
            self._load_named(sd, what="init weights")
            return
        if te:
            named = dict(self.pipe.text_encoder.named_parameters())
            bad = sorted(set(named) ^ set(te)) + sorted(n for n in set(named) & set(te)
                                                       if tuple(te[n].shape) != tuple(named[n].shape))
            if bad:
                raise TrainableStateError(f"init weights: text encoder tensors do not match the policy's (e.g. {bad[0]})")
        self._load_named(rest, what="init weights",
                         skip=[n for n in self._trainable_names if n.startswith(TEXT_ENCODER_PREFIX)])
        if te:
            with torch.no_grad():
                for n, p in self.pipe.text_encoder.named_parameters():
                    p.copy_(te[n].to(device=p.device, dtype=p.dtype))

    def _load_named(self, sd: dict[str, torch.Tensor], what: str, skip: Iterable[str] = ()) -> None:
        named = self._named()
        names = self._trainable_names if hasattr(self, "_trainable_names") else \
            [n for n in named if "lora_" in n and f".{ADAPTER}." in n]
        names = [n for n in names if n not in set(skip)]
        missing = sorted(set(names) - set(sd))
        unexpected = sorted(set(sd) - set(names))
        bad = sorted(n for n in set(names) & set(sd) if tuple(sd[n].shape) != tuple(named[n].shape))
        if missing or unexpected or bad:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            if bad:
                parts.append("shape mismatch: " + ", ".join(
                    f"{n} {tuple(sd[n].shape)} != {tuple(named[n].shape)}" for n in bad[:3]))
            raise TrainableStateError(f"{what} does not match the policy's {self.finetune} parameters: "
                                      + "; ".join(parts))
        with torch.no_grad():
            for n in names:
                named[n].copy_(sd[n].to(device=named[n].device, dtype=named[n].dtype))

    def save_adapter(self, path: str | Path) -> Path:
        """Write the trained adapter as a PEFT directory (adapter_config.json + adapter_model.safetensors)."""
        if self.finetune != "lora":
            raise ValueError("save_adapter: a full fine-tune has no adapter; use trainable_state()")
        return write_adapter_dir(path, self.lora_config, dict(self.named_trainable_parameters()), ADAPTER)

    def train(self, mode: bool = True) -> "MRIGPolicy":
        self.training = mode
        self.transformer.train(mode)
        if self.train_text_encoder:
            self.pipe.text_encoder.train(mode)
        return self

    def eval(self) -> "MRIGPolicy":
        return self.train(False)

    # ---- KL reference policy -----------------------------------------------------------------

    @contextmanager
    def use_reference(self, mode: str = "sft"):
        """Inside, the policy computes with the KL reference weights.

        "sft": the starting weights (the adapter as built or loaded from init_adapter, kept frozen as
        a second peft adapter; full fine-tune: a frozen copy). "base": adapters disabled, as the
        paper's code does (full fine-tune: the same frozen starting copy). Use it under no_grad;
        the trained weights are never modified, so graphs built outside stay valid.
        """
        if mode not in ("sft", "base"):
            raise ValueError(f"reference mode must be 'sft' or 'base', got {mode!r}")
        tr = self.transformer
        flags = {n: p.requires_grad for n, p in tr.named_parameters()}
        try:
            if self.train_text_encoder:
                self._te_model = self._ref_te
            if self.finetune == "full":
                self._model = self._ref_model
            elif mode == "base":
                tr.disable_adapters()
            else:
                tr.set_adapter(REFERENCE_ADAPTER)
            yield self
        finally:
            self._te_model = self.pipe.text_encoder
            if self.finetune == "full":
                self._model = tr
            elif mode == "base":
                tr.enable_adapters()
            else:
                tr.set_adapter(ADAPTER)
            for n, p in tr.named_parameters():  # peft toggles requires_grad when switching adapters
                p.requires_grad_(flags[n])

    @torch.no_grad()
    def reference_velocity(self, cond: Cond, x: torch.Tensor, sigma, mode: str = "sft") -> torch.Tensor:
        """Velocity [B,S,C] of the KL reference policy (see :meth:`use_reference`)."""
        with self.use_reference(mode):
            return self.velocity(cond, x, sigma)

    # ---- conditioning and the denoiser -------------------------------------------------------

    def compile_references(self, references: Iterable[Any] | None) -> CompiledReferences:
        return compile_references(references, self.cfg.max_references)

    def _check_size(self, height: int, width: int):
        m = self.family.multiple
        if height % m or width % m or height < m or width < m:
            raise SamplingError(f"height and width must be positive multiples of {m} for {self.family.name}, "
                                f"got {height}x{width}")

    @torch.no_grad()
    def encode(self, prompt: str, references=None, height: int | None = None, width: int | None = None,
               negative_prompt: str | None = None):
        """-> (cond, negative cond or None, compiled references)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        refs = references if isinstance(references, CompiledReferences) else self.compile_references(references)
        h, w = height or self.cfg.height, width or self.cfg.width
        self._check_size(h, w)
        cond, neg = self.family.encode(prompt, refs, h, w, self.cfg, self.device, negative_prompt=negative_prompt)
        return cond, neg, refs

    @torch.no_grad()
    def probe(self) -> list[float]:
        """The velocity on one fixed input (a fixed prompt, no references, seed-0 noise, sigma 0.5),
        averaged per latent channel: what a weight consumer recomputes after loading a version and
        compares with the publisher's, so a load that binds nothing fails loudly (docs/architecture.md,
        principle 4). Depends on every trained weight, the text encoder's included."""
        cond, _, _ = self.encode(PROBE_PROMPT, None)
        x = self.family.noise(torch.Generator().manual_seed(0), cond).to(self.device)
        v = self.velocity(cond, x, torch.tensor(0.5, device=self.device))
        return v.float().mean(dim=(0, 1)).cpu().tolist()

    def velocity(self, cond: Cond, x: torch.Tensor, sigma) -> torch.Tensor:
        """v(x, sigma | cond): x [B,S,C] float32, sigma float/0-d/[B] -> [B,S,C] float32."""
        if cond.tensors["prompt_embeds"].device != x.device:
            cond = cond.to(x.device)
        te = self._te_model if self.train_text_encoder else None
        return self.family.velocity(self._model, cond, x, sigma, text_encoder=te)

    def step_log_prob(self, cond: Cond, x_t: torch.Tensor, x_next: torch.Tensor, step_index, sigmas: torch.Tensor,
                      params: SamplingParams) -> StepOutput:
        """log p(x_next | x_t) at schedule index ``step_index`` (int or [B]) under the current weights.

        x_t, x_next: [B,S,C] (members of one group share ``cond``); sigmas [N+1] from the rollout;
        params: the rollout's SamplingParams (its ``dynamics`` and ``noise_level`` are read).
        Differentiable w.r.t. :meth:`trainable_parameters`; this is the PPO ratio's numerator.
        """
        params = _sampling(params)
        dyn, eta = params.dynamics, float(params.noise_level)
        x_t = x_t.to(self.device, torch.float32)
        x_next = x_next.to(self.device, torch.float32)
        sigmas = sigmas.to(self.device, torch.float32)
        idx = torch.as_tensor(step_index, device=self.device, dtype=torch.long)
        sigma, sigma_next = sigmas[idx], sigmas[idx + 1]
        v = self.velocity(cond, x_t, sigma)
        out = sde_step(dyn, x_t, v, sigma, sigma_next, eta, sigma_max=sigmas[1], prev_sample=x_next)
        return StepOutput(log_prob=out.log_prob, mean=out.mean, std=out.std, velocity=v)

    def _noise(self, cond: Cond, seed: int, n: int) -> torch.Tensor:
        # member g's noise depends only on (seed, g): a member can be regenerated alone
        xs = [self.family.noise(torch.Generator().manual_seed(mix_seed(seed, _INIT, g)), cond) for g in range(n)]
        return torch.cat(xs, 0).to(self.device)

    def choose_train_steps(self, params: SamplingParams, seed: int) -> list[int]:
        """The train steps of one rollout: ``num_train_steps`` of ``train_steps`` drawn with a seeded randperm."""
        params = _sampling(params)
        steps, k, n = list(params.train_steps), int(params.num_train_steps), int(params.num_inference_steps)
        if not steps:
            raise SamplingError("train_steps is empty")
        if k > len(steps):
            raise SamplingError(f"num_train_steps={k} exceeds the {len(steps)} candidate train_steps {steps}")
        if min(steps) < 0 or max(steps) >= n:
            raise SamplingError(f"train_steps {steps} must lie in [0, {n - 1}] for {n} inference steps")
        perm = torch.randperm(len(steps), generator=torch.Generator().manual_seed(mix_seed(seed, _STEPS)))
        return sorted(steps[int(i)] for i in perm[:k])

    # ---- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_group(self, prompt: str, references, group_size: int, params: SamplingParams, seed: int) -> GroupRollout:
        """G rollouts of one prompt: ODE except on the seeded train steps, where ``params.dynamics``
        adds noise and the transition and its log-prob are stored. Same seed -> identical output;
        members draw independent noise. The rollout carries ``params`` for the learner's recompute."""
        if group_size < 1:
            raise SamplingError(f"group_size must be >= 1, got {group_size}")
        params = _sampling(params)
        dyn = params.dynamics
        if dyn not in DYNAMICS:
            raise SamplingError(f"unknown dynamics {dyn!r}; expected one of {', '.join(DYNAMICS)}")
        eta = float(params.noise_level)
        if dyn in ("flow-sde", "dance-sde") and eta <= 0:
            raise SamplingError(f"{dyn} needs noise_level > 0 on train steps (no log-prob at 0)")
        n_steps, h, w = int(params.num_inference_steps), int(params.height), int(params.width)
        train = self.choose_train_steps(params, seed)
        cond, _, refs = self.encode(prompt, references, h, w)
        sigmas = self.family.schedule(n_steps, cond.meta["seq_len"]).to(self.device)
        x = self._noise(cond, seed, group_size)
        gens = [torch.Generator().manual_seed(mix_seed(seed, _SDE, g)) for g in range(group_size)]
        xt, xn, lps = [], [], []
        for i in range(n_steps):
            s, s1 = sigmas[i], sigmas[i + 1]
            v = self.velocity(cond, x, s)
            if i in train:
                eps = torch.cat([torch.randn((1, *x.shape[1:]), generator=g, dtype=torch.float32) for g in gens])
                out = sde_step(dyn, x, v, s, s1, eta, sigma_max=sigmas[1], noise=eps.to(self.device))
                xt.append(x)
                xn.append(out.prev_sample)
                lps.append(out.log_prob)
                x = out.prev_sample
            else:
                x = x + (s1 - s) * v  # Euler ODE step, as scheduler.step does in fp32
        images = self.family.decode(x, cond)
        return GroupRollout(images=images, x_t=torch.stack(xt, 1).cpu(), x_next=torch.stack(xn, 1).cpu(),
                            step_indices=torch.tensor(train, dtype=torch.int64), log_probs=torch.stack(lps, 1).cpu(),
                            sigmas=sigmas.cpu(), cond=cond.to("cpu"), seed=int(seed), prompt=prompt,
                            n_refs=len(refs), params=params, roles=list(refs.roles))

    @torch.no_grad()
    def generate(self, prompt: str, references=None, n: int = 1, height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 negative_prompt: str | None = None, seed: int = 0, output_type: str = "pil"):
        """Serving/eval path: deterministic Euler ODE; true CFG when ``negative_prompt`` is given and
        ``guidance_scale`` > 1 (Qwen: with the pipeline's norm rescale). -> list of PIL images
        (``output_type="np"``: uint8 [n,H,W,3])."""
        if n < 1:
            raise SamplingError(f"n must be >= 1, got {n}")
        steps = int(num_inference_steps or self.cfg.eval_inference_steps)
        g = self.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        use_cfg = negative_prompt is not None and g > 1
        cond, neg, _ = self.encode(prompt, references, height, width, negative_prompt if use_cfg else None)
        sigmas = self.family.schedule(steps, cond.meta["seq_len"]).to(self.device)
        x = self._noise(cond, seed, n)
        for i in range(steps):
            s, s1 = sigmas[i], sigmas[i + 1]
            v = self.velocity(cond, x, s)
            if use_cfg:
                v = self.family.guide(v, self.velocity(neg, x, s), g)
            x = x + (s1 - s) * v
        images = self.family.decode(x, cond)
        return images if output_type == "np" else [Image.fromarray(a) for a in images]
