"""In-process VLM judge: Qwen2.5-VL or Qwen3-VL through transformers.

Two modes:
- "generate": the model writes the JSON answer (rubric of judge.py), parsed strictly; an
  unparsable answer is recorded as missing.
- "expected": one teacher-forced forward per (request, dimension) reads the score distribution
  (docs/measurements.md §3) after the assistant prefix '{"score": ':
      p_d = softmax over the digit tokens "0".."9" at the first answer position
      q   = P("0" | '{"score": 1') renormalised over {"0"} and the number terminators "}", ",", " ", "\\n"
            (Qwen tokenizers split numbers into single digits, so "10" is "1" then "0")
      E[score] = sum_d d * p_d + 9 * p_1 * q                   in [0, 10]
  A random tiny model therefore still yields numbers, which is what CPU runs need.

Sources: "tiny" builds a seeded random model from a small config (docs/measurements.md §3, with
the byte-level tokenizer from common.policy.tiny); "pretrained" loads a local folder (model_type
qwen2_5_vl or qwen3_vl), never downloading. Processors are built by hand with
Qwen2VLImageProcessorPil because the stock ones need torchvision for their video half.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from PIL import Image

from common.rewards.judge import (DIMENSIONS, JudgeBase, JudgeRequest, Part, applicable_dimensions,
                                  build_judge_parts)

__all__ = ["LocalVLMJudge", "build_tiny_judge"]

Arch = Literal["qwen2_5_vl", "qwen3_vl"]
_VISION = "<|vision_start|><|image_pad|><|vision_end|>"
_SCORE_PREFIX = '{"score": '


def _processor_class(arch: str):
    from transformers import Qwen2VLProcessor, Qwen3VLProcessor
    base = Qwen3VLProcessor if arch == "qwen3_vl" else Qwen2VLProcessor

    class _NoVideoProcessor(base):         # recipe C: skip the class check of the absent video processor
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return _NoVideoProcessor


def build_tiny_judge(arch: Arch = "qwen3_vl", seed: int = 0):
    """(model, processor) of a seeded random tiny Qwen-VL (hidden 32, 2 layers, vision depth 2)."""
    import transformers as tf
    from common.policy.tiny import tiny_tokenizer
    tok = tiny_tokenizer()
    tid = {k: tok.convert_tokens_to_ids(v) for k, v in dict(
        image_token_id="<|image_pad|>", video_token_id="<|video_pad|>", vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>").items()}
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "qwen3_vl":
            model = tf.Qwen3VLForConditionalGeneration(tf.Qwen3VLConfig(
                text_config=dict(text, head_dim=8, rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                                 "mrope_interleaved": True}),
                vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                                   num_position_embeddings=16, deepstack_visual_indexes=[0, 1]), **tid))
            image_proc = tf.Qwen2VLImageProcessorPil(patch_size=16, merge_size=2)
        elif arch == "qwen2_5_vl":
            model = tf.Qwen2_5_VLForConditionalGeneration(tf.Qwen2_5_VLConfig(
                text_config=dict(text, rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                                 rope_theta=1e6),
                vision_config=dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32),
                hidden_size=32, vocab_size=len(tok), **tid))
            image_proc = tf.Qwen2VLImageProcessorPil()
        else:
            raise ValueError(f"unknown judge arch {arch!r}; expected qwen2_5_vl or qwen3_vl")
    return model, _processor_class(arch)(image_processor=image_proc, tokenizer=tok, video_processor=None)


class LocalVLMJudge(JudgeBase):
    """Qwen-VL judge in this process. `score(requests)` -> {dimension: score | -1.0 | None} per request."""

    def __init__(self, model, processor, *, dimensions: Sequence[str] = DIMENSIONS,
                 mode: Literal["generate", "expected"] = "expected", max_side: int = 512, batch_size: int = 8,
                 max_new_tokens: int = 512, temperature: float = 0.0, parse_retries: int = 0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(dimensions, parse_retries)
        if mode not in ("generate", "expected"):
            raise ValueError(f"judge mode must be 'generate' or 'expected', got {mode!r}")
        self.mode, self.max_side, self.batch_size = mode, max_side, batch_size
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.processor, self.tok = processor, processor.tokenizer
        self.digit_ids = [self._single_token(str(d)) for d in range(10)]
        self.stop_ids = [i for i in (self._single_token(s, strict=False) for s in ("}", ",", " ", "\n")) if i is not None]

    def _single_token(self, s: str, strict: bool = True) -> int | None:
        ids = self.tok.encode(s, add_special_tokens=False)
        if len(ids) != 1:
            if strict:
                raise ValueError(f"judge tokenizer encodes {s!r} as {len(ids)} tokens; expected-score mode needs single digits")
            return None
        return ids[0]

    @classmethod
    def tiny(cls, arch: Arch = "qwen3_vl", seed: int = 0, **kw) -> "LocalVLMJudge":
        kw.setdefault("max_side", 64)
        model, proc = build_tiny_judge(arch, seed)
        return cls(model, proc, **kw)

    @classmethod
    def pretrained(cls, path: str | Path, **kw) -> "LocalVLMJudge":
        import transformers as tf
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"judge model path {str(path)!r} has no config.json (a local folder is required; "
                                    f"nothing is downloaded)")
        arch = tf.AutoConfig.from_pretrained(path, local_files_only=True).model_type
        model_cls = {"qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
                     "qwen3_vl": tf.Qwen3VLForConditionalGeneration}.get(arch)
        if model_cls is None:
            raise ValueError(f"{path}: model_type {arch!r} is not a supported judge (qwen2_5_vl, qwen3_vl)")
        tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_proc = tf.Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
        model = model_cls.from_pretrained(path, local_files_only=True, dtype=kw.get("dtype", torch.float32))
        return cls(model, _processor_class(arch)(image_processor=image_proc, tokenizer=tok, video_processor=None), **kw)

    # --- rendering ---------------------------------------------------------------------------
    def _render(self, parts: list[Part], assistant_prefix: str = "") -> tuple[str, list[Image.Image]]:
        text, images = [], []
        for p in parts:
            if isinstance(p, str):
                text.append(p)
            else:
                im = p.convert("RGB")
                if max(im.size) > self.max_side:      # bound the visual tokens (the bench's long side <= 512)
                    s = self.max_side / max(im.size)
                    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
                text.append(_VISION)
                images.append(im)
        prompt = f"<|im_start|>user\n{''.join(text)}<|im_end|>\n<|im_start|>assistant\n{assistant_prefix}"
        return prompt, images

    def _inputs(self, rendered: list[tuple[str, list[Image.Image]]], padding_side: str) -> dict:
        self.tok.padding_side = padding_side
        images = [im for _, ims in rendered for im in ims]
        out = self.processor(text=[t for t, _ in rendered], images=images or None, return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in out.items()}

    # --- generate mode -----------------------------------------------------------------------
    @torch.inference_mode()
    def complete(self, parts: list[Part]) -> str | None:
        inputs = self._inputs([self._render(parts)], "left")
        sample = self.temperature > 0
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=sample,
                                  **({"temperature": self.temperature} if sample else {}))
        return self.tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    # --- expected-score mode -----------------------------------------------------------------
    @torch.inference_mode()
    def expected_scores(self, rendered: list[tuple[str, list[Image.Image]]]) -> list[float]:
        """Each rendered prompt must end with '{"score": 1'; returns E[score] in [0, 10] per prompt."""
        out = []
        for i in range(0, len(rendered), self.batch_size):
            inputs = self._inputs(rendered[i:i + self.batch_size], "right")
            logits = self.model(**inputs).logits.float()                      # [B, T, V]
            last = inputs["attention_mask"].sum(1) - 1                        # index of the forced "1"
            rows = torch.arange(logits.shape[0])
            first = logits[rows, last - 1]                                    # predicts the first digit
            after_one = logits[rows, last]                                    # predicts what follows "1"
            p = torch.softmax(first[:, self.digit_ids], dim=-1)              # [B, 10]
            cand = torch.softmax(after_one[:, [self.digit_ids[0], *self.stop_ids]], dim=-1)
            q = cand[:, 0]
            e = (p * torch.arange(10.0)).sum(-1) + 9.0 * p[:, 1] * q
            out += [float(v) for v in e.clamp(0.0, 10.0)]
        return out

    def score(self, requests: Sequence[JudgeRequest]) -> list[dict[str, float | None]]:
        if self.mode == "generate":
            return super().score(requests)
        results, jobs = [], []
        for r_i, req in enumerate(requests):
            ok = applicable_dimensions(role for role, _ in req.references)
            results.append({d: (None if d in ok else -1.0) for d in self.dimensions})
            for d in self.dimensions:
                if d in ok:
                    jobs.append((r_i, d, self._render(build_judge_parts(req, [d], "score"), _SCORE_PREFIX + "1")))
        scores = self.expected_scores([j[2] for j in jobs]) if jobs else []
        for (r_i, d, _), s in zip(jobs, scores):
            results[r_i][d] = s
        self._count("requests", len(jobs))
        return results
