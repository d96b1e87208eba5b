"""The SFT recipe (stage 1): flow matching on (target, ordered references, prompt) training records.

Written top to bottom like a torchtune recipe: :meth:`SFTRecipe.setup` (policy, optimizer, lr
schedule, resume), :meth:`SFTRecipe.train` (micro-batches -> accumulate -> clip -> AdamW), and
:meth:`SFTRecipe.save_checkpoint`. The loss is the paper's ``FlowMatchSFTLoss`` (docs/algorithm.md §10):

    x0 = VAE(target) in the policy's packed layout [1, S, C]; ε ~ N(0, I); σ ~ p(σ)
    x_σ = (1 − σ)·x0 + σ·ε          v* = ε − x0          L = E[w(σ) · ‖v_θ(x_σ, σ | prompt, refs) − v*‖²]

with the same convention as the sampler (x ← x + (σ' − σ)·v walks from ε at σ=1 to x0 at σ=0).

Output, in ``sft.output_dir``:
- ``adapter/`` (finetune=lora): a PEFT adapter directory (``MRIGPolicy.save_adapter``); the RL stage
  starts from it with ``policy.lora.init_adapter=<output_dir>/adapter`` — no conversion step.
- ``trainable.safetensors`` (always): ``MRIGPolicy.trainable_state()`` bytes. For finetune=full this
  is the hand-over: ``policy.load_trainable_state(Path(p).read_bytes())`` on a policy built with the
  same PolicyConfig (note: the full-FT KL reference "sft" is the copy taken at construction, so
  load before building the reference, or use kl.reference=base).
- ``checkpoints/step-N`` (services.learner.checkpoint): weights + optimizer + step, for resume.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from common.policy import MRIGPolicy, build_policy, mix_seed
from common.policy.families import Cond
from services.learner.rl_recipe import HISTORY_KEEP
from services.learner.checkpoint import LearnerState, load_latest, save_checkpoint
from services.learner.tasks import TrainingCase

__all__ = ["SFTRecipe", "Sample", "sample_sigmas", "scheduler_weight", "ref_cap", "lr_factor", "stack_conds"]

log = logging.getLogger("dyref.sft")
_SIGMA, _NOISE, _PICK = 11, 12, 13


@dataclass
class Sample:
    """One training example of a micro-batch: case index, noise level σ and the noise ε [1,S,C]."""
    case: int
    sigma: float
    noise: torch.Tensor


def sample_sigmas(n: int, kind: str, shift: float, gen: torch.Generator) -> torch.Tensor:
    """σ [n] in (0, 1]: u ~ U(0,1) ("uniform") or sigmoid(N(0,1)) ("logit-normal"), then the
    time shift σ = s·u / (1 + (s − 1)·u) (s > 1 moves mass toward high noise; s = 1: none)."""
    if kind == "uniform":
        u = torch.rand(n, generator=gen)
    elif kind == "logit-normal":
        u = torch.sigmoid(torch.randn(n, generator=gen))
    else:
        raise ValueError(f"timestep_sampling must be 'uniform' or 'logit-normal', got {kind!r}")
    u = u.clamp(1e-4, 1.0)
    return shift * u / (1 + (shift - 1) * u)


def scheduler_weight(sigma: torch.Tensor) -> torch.Tensor:
    """DiffSynth ``FlowMatchScheduler`` training weight as a function of σ (t = 1000σ):
    y = exp(−2(σ − ½)²), w = (y − min y) / mean(y − min y) over the 1000-step grid (mean 1)."""
    grid = torch.linspace(1.0, 0.0, 1000)
    y = lambda s: torch.exp(-2 * (s - 0.5) ** 2)  # noqa: E731
    y_min = y(grid).min()
    return (y(sigma) - y_min) / (y(grid) - y_min).mean()


def ref_cap(step: int, total: int, counts: Sequence[int], curriculum: tuple[float, float] | None) -> int:
    """Largest reference count allowed at ``step`` (of ``total``): the smallest count until
    ``hold·total``, then rising linearly to the largest by ``end·total`` (docs/measurements.md §8)."""
    lo, hi = min(counts), max(counts)
    if curriculum is None:
        return hi
    hold, end = curriculum
    f = step / max(1, total)
    if f < hold:
        return lo
    if f >= end or end <= hold:
        return hi
    return lo + int(math.floor((hi - lo) * (f - hold) / (end - hold) + 1e-9))


def lr_factor(step: int, total: int, warmup: int, decay: str, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup, then decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    f = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * f))
    return 1.0 - (1 - min_ratio) * f


def stack_conds(conds: Sequence[Cond]) -> Cond | None:
    """Concatenate batch-1 conds to one batch-B cond, or None when they cannot share a forward
    (different tensor shapes or meta, e.g. another reference count: position ids differ)."""
    first = conds[0]
    for c in conds[1:]:
        if c.meta != first.meta or c.tensors.keys() != first.tensors.keys() or any(
                c.tensors[k].shape != t.shape for k, t in first.tensors.items()):
            return None
    return Cond({k: torch.cat([c.tensors[k] for c in conds], 0) for k in first.tensors}, dict(first.meta))


class SFTRecipe:
    """Stage-1 SFT of an :class:`MRIGPolicy` (``policy_cfg``) with the ``sft`` config section."""

    def __init__(self, policy_cfg, sft, cases: list[TrainingCase], policy: MRIGPolicy | None = None):
        if not cases:
            raise ValueError("SFT needs at least one training case")
        missing = [c.index for c in cases if c.target is None]
        if missing:
            raise ValueError(f"SFT needs a target image for every case; none for record index {missing[:5]}")
        self.policy_cfg, self.sft, self.cases, self.policy = policy_cfg, sft, cases, policy
        self.out = Path(sft.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self._cache: dict[int, tuple[Cond, torch.Tensor]] = {}
        by_count: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(cases):
            by_count[len(c.references)].append(i)
        self.by_count = dict(sorted(by_count.items()))

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self, resume: bool = True, total_steps: int | None = None) -> "SFTRecipe":
        torch.manual_seed(self.sft.seed)
        if self.policy is None:
            self.policy = build_policy(self.policy_cfg)
        self.policy.train()
        self.total = int(total_steps or self.sft.steps)
        self.optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=self.sft.lr,
                                           weight_decay=self.sft.weight_decay)
        self.state = LearnerState(run_id="sft")
        ckpt = load_latest(self.ckpt_dir) if resume else None
        if ckpt is not None:
            self.policy.load_trainable_state(ckpt.trainable)
            if ckpt.optimizer:
                self.optimizer.load_state_dict(ckpt.optimizer)
            self.state = ckpt.state
            log.info("SFT resumed from %s at step %d", ckpt.path, self.state.step)
        self._set_lr(self.state.step)
        return self

    def _set_lr(self, step: int) -> float:
        lr = self.sft.lr * lr_factor(step, self.total, self.sft.warmup_steps, self.sft.lr_decay, self.sft.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    # ---- data ----------------------------------------------------------------------------------
    def encoded(self, i: int) -> tuple[Cond, torch.Tensor]:
        """(cond batch 1, x0 [1,S,C]) of case i at the policy's training size (cached: encoders are frozen)."""
        if i in self._cache:
            return self._cache[i]
        c = self.cases[i]
        pol = self.policy
        h, w = self.policy_cfg.height, self.policy_cfg.width
        cond, _, _ = pol.encode(c.prompt, [(role, img) for role, img, _ in c.references], h, w)
        x0 = pol.family.encode_target(c.target, h, w, pol.device)
        if self.sft.cache_conditioning:
            self._cache[i] = (cond, x0)
        return cond, x0

    def draw(self, step: int, micro: int) -> list[Sample]:
        """Micro-batch ``micro`` of optimizer step ``step``: ``batch_size`` cases of ONE reference
        count (position ids are shared across a batch), σ and ε, all from (seed, step, micro) alone,
        so a resumed run draws exactly what an uninterrupted one would."""
        cap = ref_cap(step, self.total, list(self.by_count), self.sft.ref_curriculum)
        counts = [n for n in self.by_count if n <= cap] or [min(self.by_count)]
        g = torch.Generator().manual_seed(mix_seed(self.sft.seed, _PICK, step, micro))
        sizes = torch.tensor([len(self.by_count[n]) for n in counts], dtype=torch.float)
        pool = self.by_count[counts[int(torch.multinomial(sizes, 1, generator=g))]]
        b = self.sft.batch_size
        idx = torch.randperm(len(pool), generator=g)[:b] if len(pool) >= b else torch.randint(len(pool), (b,), generator=g)
        gs = torch.Generator().manual_seed(mix_seed(self.sft.seed, _SIGMA, step, micro))
        sig = sample_sigmas(b, self.sft.timestep_sampling, self.sft.timestep_shift, gs)
        gn = torch.Generator().manual_seed(mix_seed(self.sft.seed, _NOISE, step, micro))
        out = []
        for j, k in enumerate(idx.tolist()):
            cond, _ = self.encoded(pool[k])
            noise = self.policy.family.noise(gn, cond)
            out.append(Sample(pool[k], float(sig[j]), noise))
        return out

    # ---- loss ----------------------------------------------------------------------------------
    def loss(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Flow-matching loss of a micro-batch (module docstring): mean over samples of w(σ)·MSE."""
        enc = [self.encoded(s.case) for s in samples]
        dev = self.policy.device
        x0 = torch.cat([x for _, x in enc]).to(dev)
        eps = torch.cat([s.noise for s in samples]).to(dev)
        sig = torch.tensor([s.sigma for s in samples], dtype=torch.float32, device=dev)
        s3 = sig.view(-1, 1, 1)
        x_t = (1 - s3) * x0 + s3 * eps
        target = eps - x0
        cond = stack_conds([c for c, _ in enc])
        if cond is not None:
            v = self.policy.velocity(cond, x_t, sig)
        else:  # mixed shapes: one forward per sample (same gradient, slower)
            v = torch.cat([self.policy.velocity(c, x_t[j:j + 1], sig[j:j + 1]) for j, (c, _) in enumerate(enc)])
        per = ((v - target) ** 2).mean(dim=(1, 2))
        if self.sft.loss_weighting == "scheduler":
            per = per * scheduler_weight(sig)
        return per.mean()

    # ---- train ---------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step: ``grad_accum`` micro-batches, clip to ``max_grad_norm``, AdamW."""
        step = self.state.step
        lr = self._set_lr(step)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        counts = []
        for m in range(self.sft.grad_accum):
            samples = self.draw(step, m)
            loss = self.loss(samples) / self.sft.grad_accum
            loss.backward()
            total += float(loss.detach())
            counts.append(len(self.cases[samples[0].case].references))
        norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.sft.max_grad_norm)
        self.optimizer.step()
        self.state.step += 1
        # names: common/rl/history.py
        rec = {"step": self.state.step, "losses/loss": total, "losses/grad_norm": float(norm), "losses/lr": lr,
               "data/n_refs": counts}
        self.state.history.append(rec)
        del self.state.history[:-HISTORY_KEEP]  # bounded: it is written into every checkpoint
        return rec

    def evaluate(self, evaluate: Callable[[MRIGPolicy], dict]) -> dict:
        """Held-out scores of the current weights ({"eval/<metric>/<n_refs>": value}); the policy is
        back in train mode after. Sampling uses its own seeded generators: training RNG is untouched."""
        self.policy.eval()
        try:
            return evaluate(self.policy)
        finally:
            self.policy.train()

    def train(self, steps: int | None = None, on_step: Callable[[dict], None] | None = None,
              evaluate: Callable[[MRIGPolicy], dict] | None = None) -> LearnerState:
        """Run until ``steps`` (default: the setup total) optimizer steps are done; checkpoint every
        ``checkpoint_every`` steps and at the end. With ``evaluate`` (policy -> scores) and
        ``sft.eval_every`` > 0, held-out scores join the step's history record every N steps and
        at the end, before ``on_step`` sees it."""
        end = int(steps or self.total)
        every = self.sft.eval_every
        while self.state.step < end:
            rec = self.train_step()
            if evaluate is not None and every and (self.state.step % every == 0 or self.state.step == end):
                rec.update(self.evaluate(evaluate))
            if on_step is not None:
                on_step(rec)
            if self.state.step % self.sft.checkpoint_every == 0 or self.state.step == end:
                self.save_checkpoint()
        self.policy.eval()
        return self.state

    # ---- save ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Resumable checkpoint + the RL stage's starting point (adapter dir / trainable state), each
        replaced atomically (written beside, then renamed)."""
        trainable = self.policy.trainable_state()
        path = save_checkpoint(self.ckpt_dir, self.state, trainable, self.optimizer.state_dict(),
                               keep=self.sft.keep_checkpoints)
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_bytes(self.out / "trainable.safetensors", trainable)
        if self.policy.finetune == "lora":
            tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=self.out))
            self.policy.save_adapter(tmp)
            final = self.out / "adapter"
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        meta = {"step": self.state.step, "finetune": self.policy.finetune, "family": self.policy.family.name,
                "adapter": str(self.out / "adapter") if self.policy.finetune == "lora" else None,
                "trainable": str(self.out / "trainable.safetensors"), "checkpoint": str(path)}
        _atomic_bytes(self.out / "sft.json", json.dumps(meta, indent=1).encode())
        return path

    @property
    def adapter_dir(self) -> Path:
        return self.out / "adapter"


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
