"""Turn an HTTP request (JSON, form or OpenAI shim) into a validated :class:`GenJob`, or an APIError.

Every limit of :class:`common.config.GatewayConfig` is checked here, before anything is queued, and
every refusal names its field (``references[2].image``). Reference images are decoded only through
:func:`common.images.decode_image` (byte limit, then the header's pixel count before the pixels
are decoded: the decompression-bomb guard). URLs are fetched only when ``allow_url_fetch`` is on
and the host is on ``url_allow_list`` (redirects are not followed, so the list cannot be escaped).
"""
from __future__ import annotations

import base64
import binascii
import fnmatch
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from common.config import GatewayConfig
from common.images import ImageError, decode_image
from common.roles import ROLES
from services.gateway.errors import APIError

__all__ = ["RefIn", "GenJob", "GenResult", "prepare_job", "check_url", "fetch_url", "parse_size", "is_url"]


@dataclass
class RefIn:
    """One reference as received: exactly one of `data` (bytes), `b64` (base64 / data URL) or `url`."""
    role: str
    param: str                        # the field the image came from, e.g. "references[2].image"
    data: bytes | None = None
    b64: str | None = None
    url: str | None = None
    description: str | None = None
    role_param: str | None = None     # the field the role came from (form: "roles[2]")


@dataclass
class GenJob:
    """A validated generation request; crosses the Ray handle (pickled by Ray, never put in Redis)."""
    prompt: str
    refs: list[tuple[str, np.ndarray, str | None]]   # (role, uint8 [H,W,3], description), user's order
    n: int
    width: int
    height: int
    seed: int
    steps: int
    guidance: float
    negative_prompt: str | None = None
    output_format: str = "png"
    received_at: float = field(default_factory=time.time)

    def batch_key(self) -> tuple:
        """Requests with equal keys can share a pipeline configuration inside one batch."""
        return (self.width, self.height, self.steps, round(self.guidance, 4), self.negative_prompt is not None)


@dataclass
class GenResult:
    """Images (encoded) or an error (status, code, message, param) from the generator deployment."""
    images: list[bytes] = field(default_factory=list)
    width: int = 0
    height: int = 0
    seed: int = 0
    output_format: str = "png"
    policy_version: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: tuple[int, str, str, str | None] | None = None


def is_url(s: str) -> bool:
    return s[:8].lower().startswith(("http://", "https://"))


def check_url(url: str, allow_list: list[str], param: str) -> str:
    """Raise APIError unless `url` is http(s) to a host on the allow-list ("*.example.com" wildcards).
    -> the lower-cased host. No list entry means nothing is allowed."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise APIError(400, "invalid_url", f"{param}: not a valid URL", param) from None
    if parts.scheme not in ("http", "https") or not host:
        raise APIError(400, "invalid_url", f"{param}: only http(s) URLs with a host can be fetched", param)
    if parts.username or parts.password:
        raise APIError(400, "invalid_url", f"{param}: URLs with credentials are refused", param)
    for pattern in allow_list:
        pattern = pattern.lower().strip()
        if not pattern:
            continue
        if host == pattern or ("*" in pattern and fnmatch.fnmatchcase(host, pattern)):
            return host
    raise APIError(400, "url_not_allowed", f"{param}: host {host!r} is not on the gateway's URL allow-list", param)


def fetch_url(url: str, cfg: GatewayConfig, param: str) -> bytes:
    """GET an allowed URL, streaming at most ``max_image_bytes`` (+1 to detect overflow)."""
    import httpx
    if not cfg.allow_url_fetch:
        raise APIError(400, "url_fetch_disabled",
                       f"{param}: fetching reference images by URL is disabled; send the image as base64", param)
    check_url(url, cfg.url_allow_list, param)
    try:
        with httpx.Client(timeout=cfg.url_fetch_timeout_s, follow_redirects=False) as c, c.stream("GET", url) as r:
            if r.status_code != 200:
                raise APIError(400, "url_fetch_failed", f"{param}: fetching the URL answered HTTP {r.status_code}", param)
            buf = bytearray()
            for chunk in r.iter_bytes():
                buf += chunk
                if len(buf) > cfg.max_image_bytes:
                    raise APIError(400, "image_too_large",
                                   f"{param}: more than the limit of {cfg.max_image_bytes} bytes", param)
            return bytes(buf)
    except httpx.HTTPError as e:
        why = ("timed out" if isinstance(e, httpx.TimeoutException) else
               "could not connect" if isinstance(e, httpx.ConnectError) else "failed")
        raise APIError(400, "url_fetch_failed", f"{param}: fetching the URL {why}", param) from None


def parse_size(size: str | None, param: str = "size") -> tuple[int | None, int | None]:
    """OpenAI "WxH" (or "auto"/None) -> (width, height)."""
    if size is None or size == "auto":
        return None, None
    try:
        w, h = (int(x) for x in size.lower().split("x"))
    except ValueError:
        raise APIError(400, "invalid_size", f"{param}: expected 'WIDTHxHEIGHT' (e.g. 512x512) or 'auto', got {size!r}",
                       param) from None
    return w, h


def _image_error(e: ImageError, param: str) -> APIError:
    msg = str(e)
    if "bytes exceeds" in msg:
        code = "image_too_large"
    elif "pixels" in msg:
        code = "image_too_many_pixels"
    else:
        code = "invalid_image"
    return APIError(400, code, f"{param}: {msg}", param)


_DECODERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-decode")

def _decode_ref(ref: RefIn, i: int, cfg: GatewayConfig) -> np.ndarray:
    what = f"reference {i + 1} ({ref.role})"
    data = ref.data
    if data is None and ref.url is not None:
        data = fetch_url(ref.url, cfg, ref.param)
    if data is None:
        s = ref.b64 or ""
        if is_url(s):
            data = fetch_url(s, cfg, ref.param)
        else:
            payload = s.split(",", 1)[1] if s.startswith("data:") else s
            if any(c in payload for c in " \r\n\t"):
                payload = "".join(payload.split())  # MIME-style base64 (line breaks every 76): accepted, as OpenAI does
            # refuse oversize images before spending time on base64 decoding
            if len(payload) > (cfg.max_image_bytes * 4) // 3 + 8:
                raise APIError(400, "image_too_large", f"{ref.param}: {what}: about {len(payload) * 3 // 4} bytes "
                               f"exceeds the limit of {cfg.max_image_bytes} bytes", ref.param)
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise APIError(400, "invalid_base64", f"{ref.param}: {what}: not valid base64", ref.param) from None
    try:
        img = decode_image(data, max_bytes=cfg.max_image_bytes, max_pixels=cfg.max_image_pixels, what=what)
    except ImageError as e:
        raise _image_error(e, ref.param) from None
    return np.asarray(img, dtype=np.uint8)


def _check_dim(name: str, v: int, cfg: GatewayConfig) -> None:
    if v % 16:
        raise APIError(400, "invalid_size", f"{name} must be a multiple of 16, got {v}", name)
    if v < 16 or v > cfg.max_side:
        raise APIError(400, "size_too_large" if v > cfg.max_side else "invalid_size",
                       f"{name} must be between 16 and {cfg.max_side}, got {v}", name)


def prepare_job(cfg: GatewayConfig, *, prompt: str | None, refs: list[RefIn], n: int = 1, width: int | None = None,
                height: int | None = None, seed: int | None = None, steps: int | None = None,
                guidance: float | None = None, negative_prompt: str | None = None, output_format: str = "png",
                default_size: tuple[int, int] = (64, 64), default_steps: int = 8, default_guidance: float = 1.0,
                size_param: str | None = None) -> GenJob:
    """Check every limit (cheap checks first, image decoding last) and decode the references."""
    if prompt is None or not str(prompt).strip():
        raise APIError(400, "missing_prompt", "prompt is required and must not be blank", "prompt")
    if len(prompt) > 4000:
        raise APIError(400, "prompt_too_long", f"prompt has {len(prompt)} characters; at most 4000", "prompt")
    if len(refs) > cfg.max_references:
        raise APIError(400, "too_many_references",
                       f"{len(refs)} references given; at most {cfg.max_references} are allowed", "references")
    for i, ref in enumerate(refs):
        if ref.role not in ROLES:
            p = ref.role_param or f"references[{i}].role"
            raise APIError(400, "unknown_role", f"{p}: unknown role {ref.role!r}; expected one of {', '.join(ROLES)}", p)
    if not 1 <= n <= cfg.max_n:
        raise APIError(400, "n_too_large" if n > cfg.max_n else "invalid_n", f"n must be between 1 and {cfg.max_n}, got {n}", "n")
    w = default_size[0] if width is None else width
    h = default_size[1] if height is None else height
    _check_dim(size_param or "width", w, cfg)
    _check_dim(size_param or "height", h, cfg)
    steps = default_steps if steps is None else steps
    if not 1 <= steps <= cfg.max_steps:
        raise APIError(400, "too_many_steps" if steps > cfg.max_steps else "invalid_steps",
                       f"num_inference_steps must be between 1 and {cfg.max_steps}, got {steps}", "num_inference_steps")
    g = default_guidance if guidance is None else float(guidance)
    if not 0 <= g <= 30:
        raise APIError(400, "invalid_guidance", f"guidance_scale must be in [0, 30], got {g}", "guidance_scale")
    if output_format not in ("png", "jpeg", "webp"):
        raise APIError(400, "invalid_output_format", f"output_format must be png, jpeg or webp, got {output_format!r}",
                       "output_format")
    if seed is None:
        seed = secrets.randbits(31)
    elif not 0 <= seed <= 2**63 - 1:
        raise APIError(400, "invalid_seed", f"seed must be in [0, 2^63-1], got {seed}", "seed")
    # the references decode in parallel (zlib and Pillow's decoders release the GIL): four 256 px PNGs
    # took 8 ms one after another, most of the gateway's overhead (docs/measurements.md §4). The
    # first bad reference, in request order, is the error reported, as before.
    decode = _DECODERS.map if len(refs) > 1 else map   # one reference: no hand-off to a thread
    arrays = list(decode(_decode_ref, refs, range(len(refs)), [cfg] * len(refs)))
    decoded = [(ref.role, a, ref.description) for ref, a in zip(refs, arrays)]
    return GenJob(prompt=prompt, refs=decoded, n=n, width=w, height=h, seed=seed, steps=steps, guidance=g,
                  negative_prompt=negative_prompt or None, output_format=output_format)

