"""One prepared check of throughput, memory and weight sync at real scale (issue 11).

Measures, on one device, and writes a JSON report (bench/results/<card>-<date>.json):
  sampling     images/s of ``MRIGPolicy.generate(n=G)`` (plain ODE) and ``sample_group(G)`` (SDE train
               step + stored transitions + log-probs) at the same size: the bookkeeping overhead;
  train        one LoRA RL step (``step_log_prob`` + ``common.rl.ppo_loss`` on the sampled group, as
               services/learner/trainer.py ``Trainer.step_loss`` does; backward, grad clip, AdamW) with
               gradient checkpointing: seconds and peak memory;
  weight_sync  ``trainable_state`` -> WeightStore.publish -> latest/fetch -> ``load_trainable_state``
               through an embedded Redis;
  mfu          counted FLOPs (FlopCounterMode) of one transformer forward + encode + decode ->
               FLOP bound on images/s for the card's bf16 dense peak, and measured / bound.

Profiles: ``gpu`` (real architecture from common/policy/arch with random bf16 weights, 512 px, 10
steps, 4 references, G = 8, LoRA rank 64) and ``cpu-tiny`` (the tiny random pipelines; validates the
script and the report without a GPU). Switches for what the numbers may show: ``--compile``,
``--attention-backend``, ``--member-batch`` (group members per transformer call), ``--train-micro-batch``.
Run: scripts/gpu_check.sh --help.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from common.perf.flops import card_name, card_slug, count_flops, measured_matmul_tflops, peak_tflops

__all__ = ["main", "run_check", "parse_args", "REPORT_KEYS"]

log = logging.getLogger("gpu_check")
REPORT_KEYS = ("schema", "card", "device", "date", "profile", "arch", "family", "versions", "options", "setup",
               "shapes", "sampling", "train", "weight_sync", "mfu", "phase_seconds", "notes")
PROMPT = "put the cat from picture 1 on the sofa of picture 2, lit like picture 3, in the style of picture 4"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["gpu", "cpu-tiny"], default="gpu")
    ap.add_argument("--arch", default="qwen-image-edit-2511",
                    help="gpu profile: qwen-image-edit-2511 | flux2-klein-9b | flux2-klein-4b")
    from common.policy.families import names
    ap.add_argument("--family", default="flux2-klein", choices=names(), help="cpu-tiny profile: which tiny pipeline")
    ap.add_argument("--size", type=int, default=None, help="output and reference side (gpu 512, cpu-tiny 64)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--refs", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--lora-rank", type=int, default=None, help="gpu 64, cpu-tiny 8")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats of each sampling mode (median)")
    ap.add_argument("--train-steps", type=int, default=2, help="optimizer steps; the first is warm-up")
    ap.add_argument("--train-micro-batch", type=int, default=0, help="members per backward (0 = the whole group); "
                    "halved automatically on CUDA OOM")
    ap.add_argument("--keep-text-encoder", action="store_true",
                    help="keep the text encoder on the device for the train phase (a learner never needs it: "
                         "the rollout carries the conditioning)")
    ap.add_argument("--compile", choices=["off", "blocks", "full"], default="off",
                    help="torch.compile the transformer's repeated blocks (regional) or the whole transformer")
    ap.add_argument("--attention-backend", default="default",
                    help="diffusers attention backend: default | native | _native_flash | _native_cudnn | "
                         "_native_efficient | flash | _flash_3 | sage ...")
    ap.add_argument("--member-batch", type=int, default=0,
                    help="group members per transformer call while sampling (0 = all G in one call)")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: sampling,train,weight_sync,mfu")
    ap.add_argument("--budget-s", type=float, default=270.0, help="phases that would start after this are skipped")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--out", default=None, help="report path (default <out-dir>/<card>-<date>.json)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (cpu-tiny default 1)")
    return ap.parse_args(argv)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mem_gb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux: process peak RSS


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _refs(n: int, size: int):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    return [("subject", Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8))
             .resize((size, size))) for _ in range(n)]


def _build(args):
    """-> (policy, policy config, arch name, notes)."""
    from common.config import load_config
    notes = []
    if args.profile == "cpu-tiny":
        from common.policy import build_policy
        size = args.size or 64
        base = load_config("cpu-tiny").policy
        pcfg = base.model_copy(update={
            "family": args.family, "height": size, "width": size, "reference_size": size,
            "num_inference_steps": args.steps, "gradient_checkpointing": True,
            "lora": base.lora.model_copy(update={"rank": args.lora_rank or 8, "alpha": float(args.lora_rank or 8)})})
        return build_policy(pcfg), pcfg, f"tiny-{args.family}", notes
    from common.policy import families
    from common.policy.arch import ARCHES, build_random_policy
    if args.arch not in ARCHES:
        raise SystemExit(f"--arch must be one of {', '.join(ARCHES)}, got {args.arch!r}")
    if not torch.cuda.is_available():
        notes.append("gpu profile without CUDA: running the real architecture on the CPU (slow)")
    size = args.size or 512
    family = ARCHES[args.arch][1]
    base = load_config("gpu").policy
    rank = args.lora_rank or 64
    # model_copy skips validation on purpose: source stays "pretrained" for the LoRA target defaults,
    # but nothing is loaded from `path` (weights are random, built by common.policy.arch)
    pcfg = base.model_copy(update={
        "family": family, "path": f"random-arch:{args.arch}", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "dtype": "bfloat16", "height": size, "width": size, "reference_size": size, "encoder_reference_size": 384,
        "num_inference_steps": args.steps, "max_sequence_length": families.get(family).max_prompt_tokens,
        "gradient_checkpointing": True,
        "lora": base.lora.model_copy(update={"rank": rank, "alpha": float(rank), "init_adapter": None, "targets": None})})
    return build_random_policy(pcfg, args.arch), pcfg, args.arch, notes


def _apply_options(policy, args, notes: list[str]) -> None:
    tr = policy.transformer
    if args.attention_backend != "default":
        tr.set_attention_backend(args.attention_backend)
    if args.compile == "blocks":
        tr.compile_repeated_blocks(fullgraph=False, dynamic=False)
    elif args.compile == "full":
        tr.compile(dynamic=False)
    if args.member_batch and args.member_batch < args.group_size:
        fam, n = policy.family, args.member_batch
        inner = fam.velocity

        def chunked(transformer, cond, x, sigma, **kwargs):  # G members in calls of n: the batching switch
            return torch.cat([inner(transformer, cond, x[i:i + n], sigma, **kwargs) for i in range(0, x.shape[0], n)])
        fam.velocity = chunked
        notes.append(f"sampling runs the transformer on {n} member(s) per call")


def _sampling(policy, pcfg, args, refs, dev, out):
    from common.schemas import SamplingParams
    g, n = args.group_size, args.steps
    train_steps = tuple(s for s in pcfg.sde.train_steps if s < n) or (0,)
    params = SamplingParams(num_inference_steps=n, height=pcfg.height, width=pcfg.width, dynamics="flow-sde",
                            noise_level=1.0, train_steps=train_steps, num_train_steps=1)
    warm = SamplingParams(**{**params.model_dump(), "num_inference_steps": 2, "train_steps": (0,)})
    t = time.perf_counter()
    policy.sample_group(PROMPT, refs, g, warm, seed=1)  # warm-up: kernels, allocator, compile
    policy.generate(PROMPT, refs, n=g, num_inference_steps=2, output_type="np")
    _sync(dev)
    out["warmup_s"] = time.perf_counter() - t
    _reset_peak(dev)
    times = {"generate": [], "sample_group": []}
    ro = None
    for r in range(args.repeats):
        t = time.perf_counter()
        policy.generate(PROMPT, refs, n=g, num_inference_steps=n, output_type="np", seed=r)
        _sync(dev)
        times["generate"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ro = policy.sample_group(PROMPT, refs, g, params, seed=r)
        _sync(dev)
        times["sample_group"].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    out.update({"generate_s": med["generate"], "sample_group_s": med["sample_group"],
                "generate_images_per_s": g / med["generate"], "sample_group_images_per_s": g / med["sample_group"],
                "logprob_overhead": med["sample_group"] / med["generate"], "times": times,
                "peak_mem_gb": _peak_mem_gb(dev)})
    return ro


def _shapes(policy, ro, args) -> dict:
    c = ro.cond
    ref_tokens = int(c.tensors["image_latents"].shape[1]) if "image_latents" in c.tensors else 0
    return {"height": ro.params.height, "width": ro.params.width, "steps": args.steps, "refs": ro.n_refs,
            "group_size": args.group_size, "image_tokens": int(c.meta["seq_len"]), "reference_tokens": ref_tokens,
            "text_tokens": int(c.tensors["prompt_embeds"].shape[1]),
            "transformer_sequence": int(c.meta["seq_len"]) + ref_tokens + int(c.tensors["prompt_embeds"].shape[1])}


def _mfu(policy, ro, args, refs, dev, card, sampling) -> dict:
    g = args.group_size
    cond = ro.cond.to(dev)
    x = torch.randn(g, *ro.x_t.shape[2:], device=dev)
    with torch.no_grad():
        f_fwd, _ = count_flops(lambda: policy.velocity(cond, x, ro.sigmas[1]))
        f_enc, _ = count_flops(lambda: policy.encode(PROMPT, refs, ro.params.height, ro.params.width))
        f_dec, _ = count_flops(lambda: policy.family.decode(x, cond))
    per_image = (args.steps * f_fwd + f_enc + f_dec) / g
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    measured = measured_matmul_tflops(dev, dtype)
    peak, src = peak_tflops(card, measured)
    bound = peak * 1e12 / per_image
    out = {"transformer_forward_flops": f_fwd, "encode_flops": f_enc, "decode_flops": f_dec,
           "flops_per_image": per_image, "peak_tflops": peak, "peak_source": src,
           "measured_matmul_tflops": measured, "flop_bound_images_per_s": bound,
           "matmul_bound_images_per_s": measured * 1e12 / per_image}
    if sampling.get("generate_images_per_s"):
        out["generate_images_per_s"] = sampling["generate_images_per_s"]
        out["sample_group_images_per_s"] = sampling["sample_group_images_per_s"]
        out["mfu_generate"] = sampling["generate_images_per_s"] / bound
        out["mfu_sample_group"] = sampling["sample_group_images_per_s"] / bound
    return out


def _train(policy, ro, args, dev, notes) -> dict:
    from common.rl import ppo_loss
    if dev.type == "cuda" and not args.keep_text_encoder:
        policy.pipe.text_encoder.to("meta")  # frees its memory; a learner computes no prompt embeddings
        notes.append("train phase ran without the text encoder on the device (a learner does not need it)")
    policy.train()
    params = policy.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    g = ro.group_size
    adv = torch.randn(g, generator=torch.Generator().manual_seed(0))
    mb = args.train_micro_batch or g
    out = {"micro_batch": mb, "oom_retries": [], "step_s": [], "gradient_checkpointing": bool(policy.cfg.gradient_checkpointing),
           "trainable_params": sum(p.numel() for p in params), "lora_rank": policy.cfg.lora.rank}
    _reset_peak(dev)
    step = 0
    while step < args.train_steps:
        try:
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            x_t, x_next, idx = ro.transition(0)
            loss_sum = 0.0
            for i in range(0, g, mb):
                out_lp = policy.step_log_prob(ro.cond, x_t[i:i + mb], x_next[i:i + mb], idx, ro.sigmas, ro.params)
                loss, _ = ppo_loss(out_lp.log_prob, ro.log_probs[i:i + mb, 0].to(dev), adv[i:i + mb].to(dev),
                                   clip_range=1e-4)
                (loss * (out_lp.log_prob.shape[0] / g)).backward()
                loss_sum += float(loss.detach()) * out_lp.log_prob.shape[0] / g
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            _sync(dev)
            out["step_s"].append(time.perf_counter() - t)
            out["loss"] = loss_sum
            step += 1
        except torch.OutOfMemoryError as e:
            opt.zero_grad(set_to_none=True)
            out["oom_retries"].append({"micro_batch": mb, "error": str(e).splitlines()[0][:200]})
            torch.cuda.empty_cache()
            if mb == 1:
                out["error"] = "out of memory at micro-batch 1"
                break
            mb = max(1, mb // 2)
            out["micro_batch"] = mb
    policy.eval()
    out["peak_mem_gb"] = _peak_mem_gb(dev)
    if out["step_s"]:
        out["train_step_s"] = out["step_s"][-1]
    return out


def _weight_sync(policy, dev, bulk_limit: int | None = None) -> dict:
    """bulk_limit: set Redis proto-max-bulk-len first (tests exercise the over-limit path with it)."""
    from common.transport import EmbeddedRedis, Keys, WeightStore, connect
    t = time.perf_counter()
    data = policy.trainable_state()
    out = {"nbytes": len(data), "serialize_s": time.perf_counter() - t}
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedRedis(data_dir=tmp, appendonly=False, maxmemory_mb=max(1024, 3 * len(data) // 2 ** 20 + 256))
        srv.start()
        try:
            r = connect(srv.url)
            ws = WeightStore(r, Keys("gpu-check"), keep=2)
            if bulk_limit:
                r.config_set("proto-max-bulk-len", str(bulk_limit))
            limit = int(r.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
            if len(data) > limit:
                # Redis resets the connection on a value over proto-max-bulk-len (512 MiB by default), and the
                # client's retries would resend it: record the finding without sending, then raise the limit
                out["error_default_config"] = (f"payload {len(data)} B exceeds Redis proto-max-bulk-len {limit} B: "
                                               "the default server resets the connection on publish")
                r.config_set("proto-max-bulk-len", str(2 * len(data) + 2 ** 20))
                out["raised_proto_max_bulk_len"] = 2 * len(data) + 2 ** 20
            t = time.perf_counter()
            wv = ws.publish(data, 1, kind=policy.finetune)
            out["publish_s"] = time.perf_counter() - t
            t = time.perf_counter()
            got = ws.fetch(ws.latest())
            out["fetch_s"] = time.perf_counter() - t
            t = time.perf_counter()
            policy.load_trainable_state(got)
            _sync(dev)
            out["load_s"] = time.perf_counter() - t
            out["version"] = wv.version
        finally:
            srv.stop()
    out["publish_to_load_s"] = out["serialize_s"] + out["publish_s"] + out["fetch_s"] + out["load_s"]
    out["throughput_gb_per_s"] = out["nbytes"] / 2 ** 30 / out["publish_to_load_s"]
    return out


def run_check(args, on_phase=None) -> dict:
    """All phases -> the report dict. on_phase(report) is called after each phase (partial reports survive
    a timeout)."""
    on_phase = on_phase or (lambda rep: None)
    t0 = time.perf_counter()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    card = card_name()
    phase_s: dict[str, float] = {}
    t = time.perf_counter()
    policy, pcfg, arch, notes = _build(args)
    dev = torch.device(pcfg.device)
    _sync(dev)
    phase_s["build"] = time.perf_counter() - t
    _apply_options(policy, args, notes)
    from common.policy.arch import param_counts
    setup = {"build_s": phase_s["build"], "params": param_counts(policy.pipe), "dtype": pcfg.dtype,
             "mem_after_build_gb": _peak_mem_gb(dev)}
    refs = _refs(args.refs, pcfg.reference_size)
    report = {"schema": "dyref.gpu_check/1", "card": card, "device": str(dev),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "profile": args.profile,
              "arch": arch, "family": pcfg.family, "versions": _versions(),
              "options": {"compile": args.compile, "attention_backend": args.attention_backend,
                          "member_batch": args.member_batch or args.group_size,
                          "train_micro_batch": args.train_micro_batch or args.group_size,
                          "keep_text_encoder": args.keep_text_encoder, "repeats": args.repeats},
              "setup": setup, "shapes": {}, "sampling": {}, "train": {}, "weight_sync": {}, "mfu": {},
              "phase_seconds": phase_s, "notes": notes}

    def due(name: str) -> bool:
        if name in skip:
            report[name] = {"skipped": "--skip"}
            return False
        if time.perf_counter() - t0 > args.budget_s:
            report[name] = {"skipped": f"time budget {args.budget_s:.0f} s spent"}
            return False
        return True

    t = time.perf_counter()
    sampling: dict = {}
    ro = _sampling(policy, pcfg, args, refs, dev, sampling)  # always: the other phases need its rollout
    report["sampling"] = sampling if "sampling" not in skip else {**sampling, "note": "ran: other phases need it"}
    report["shapes"] = _shapes(policy, ro, args)
    phase_s["sampling"] = time.perf_counter() - t
    on_phase(report)
    for name, fn in (("mfu", lambda: _mfu(policy, ro, args, refs, dev, card, sampling)),
                     ("train", lambda: _train(policy, ro, args, dev, notes)),
                     ("weight_sync", lambda: _weight_sync(policy, dev))):
        if due(name):
            t = time.perf_counter()
            try:
                report[name] = fn()
            except Exception as e:  # noqa: BLE001 - one failing phase must not lose the others' numbers
                log.exception("phase %s failed", name)
                report[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            phase_s[name] = time.perf_counter() - t
            on_phase(report)
    phase_s["total"] = time.perf_counter() - t0
    return report


def _versions() -> dict:
    import diffusers
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def _summary(rep: dict) -> str:
    s, tr, ws, m = rep["sampling"], rep["train"], rep["weight_sync"], rep["mfu"]
    f = lambda d, k, fmt="{:.3g}": fmt.format(d[k]) if isinstance(d.get(k), (int, float)) else str(d.get(k, d.get("error", d.get("skipped", "-"))))  # noqa: E731
    return "\n".join([
        f"card: {rep['card']}  arch: {rep['arch']}  profile: {rep['profile']}  options: {rep['options']}",
        f"shapes: {rep['shapes']}",
        f"sampling  generate {f(s, 'generate_images_per_s')} img/s  sample_group {f(s, 'sample_group_images_per_s')} img/s"
        f"  log-prob overhead x{f(s, 'logprob_overhead')}  peak {f(s, 'peak_mem_gb')} GB",
        f"train     step {f(tr, 'train_step_s')} s  peak {f(tr, 'peak_mem_gb')} GB  micro-batch {tr.get('micro_batch', '-')}"
        f"  trainable {f(tr, 'trainable_params')}",
        f"weights   {f(ws, 'nbytes')} B  publish->load {f(ws, 'publish_to_load_s')} s"
        + (f"  (default Redis refused: {ws['error_default_config']})" if "error_default_config" in ws else ""),
        f"mfu       bound {f(m, 'flop_bound_images_per_s')} img/s at {f(m, 'peak_tflops')} TFLOP/s ({m.get('peak_source', '-')})"
        f"  measured/bound: generate {f(m, 'mfu_generate')}  sample_group {f(m, 'mfu_sample_group')}",
        f"seconds   {json.dumps({k: round(v, 1) for k, v in rep['phase_seconds'].items()})}"])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.threads or args.profile == "cpu-tiny":
        torch.set_num_threads(args.threads or 1)
    card = card_name()
    path = Path(args.out) if args.out else Path(args.out_dir) / (
        f"{card_slug(card)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {card}: report -> {path}", flush=True)

    def write(rep):
        path.write_text(json.dumps(rep, indent=2, default=str) + "\n")
    rep = run_check(args, on_phase=write)
    write(rep)
    print(_summary(rep))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
