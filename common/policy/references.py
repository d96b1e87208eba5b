"""Reference compiler: typed references -> the ordered image list and prompt preamble a model expects.

Order policy: references are kept in the USER'S order. Prompts address references by position
("the hat in image 3"), so reordering them by role would silently break the prompt; the role is
validated and kept alongside (rewards match references by role) but does not move an image.
Reference i (1-based) is therefore "Picture i" for Qwen-Image-Edit and the i-th time-offset block
of FLUX.2's 4-D RoPE ids (T = 10 * i, see :func:`flux_reference_offsets`).

Per family:
- Qwen-Image-Edit-Plus: each reference is shown twice: to the Qwen2.5-VL text encoder at about
  ``encoder_reference_size``^2 pixels (preamble "Picture i: <|vision_start|><|image_pad|><|vision_end|>"
  per reference, in front of the prompt), and VAE-encoded at about ``reference_size``^2 pixels;
  aspect kept, sides rounded to multiples of 32 (the pipeline's ``calculate_dimensions``).
  We compute these sizes ourselves instead of patching the pipeline's module constants
  (``VAE_IMAGE_SIZE`` = 1024^2, ``CONDITION_IMAGE_SIZE`` = 384^2), so no global state is touched.
- FLUX.2-klein: the Qwen3 text encoder is text-only; each reference is shrunk to at most
  ``reference_size``^2 pixels (never enlarged), floored to the latent multiple, centre-cropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from PIL import Image

from common.roles import ROLES
from common.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, decode_image

__all__ = ["ReferenceError_", "TooManyReferencesError", "UnknownRoleError", "InvalidReferenceError", "ImageError",
           "CompiledReferences", "compile_references", "QWEN_PICTURE_TEMPLATE", "qwen_preamble",
           "qwen_reference_sizes", "flux_reference_size", "flux_reference_offsets"]

QWEN_PICTURE_TEMPLATE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"


class ReferenceError_(ValueError):
    """Base class of every bad-reference error (a ValueError; the message names the reference)."""


class TooManyReferencesError(ReferenceError_):
    """More references than ``max_references``."""


class UnknownRoleError(ReferenceError_):
    """A role outside subject, style, background, lighting, pose."""


class InvalidReferenceError(ReferenceError_):
    """A reference that is neither a (role, image) pair nor a schemas.Reference."""


@dataclass
class CompiledReferences:
    """References ready for a model, in the user's order. images: PIL RGB (original size)."""
    roles: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    descriptions: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _role_of(i: int, role: Any) -> str:
    if not isinstance(role, str) or role not in ROLES:
        raise UnknownRoleError(f"reference {i}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def compile_references(references: Iterable[Any] | None, max_references: int,
                       max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> CompiledReferences:
    """Validate and decode references, keeping their order.

    Accepts ``(role, PIL.Image)`` pairs, ``(role, bytes)`` pairs, or ``common.schemas.Reference``
    objects (encoded bytes, decoded through :func:`common.images.decode_image`). Raises
    TooManyReferencesError, UnknownRoleError, InvalidReferenceError or ImageError (all ValueError),
    each naming the 1-based reference index.
    """
    refs = list(references or [])
    if len(refs) > max_references:
        raise TooManyReferencesError(f"{len(refs)} references given; at most {max_references} are allowed")
    out = CompiledReferences()
    for i, r in enumerate(refs, start=1):
        desc = None
        if hasattr(r, "role") and hasattr(r, "image"):  # schemas.Reference (or anything shaped like it)
            role, img, desc = r.role, r.image, getattr(r, "description", None)
        elif isinstance(r, (tuple, list)) and len(r) == 2:
            role, img = r
        else:
            raise InvalidReferenceError(f"reference {i}: expected (role, image) or a Reference, got {type(r).__name__}")
        role = _role_of(i, role)
        what = f"reference {i} ({role})"
        if isinstance(img, Image.Image):
            if img.width < 1 or img.height < 1:
                raise ImageError(f"{what}: empty image {img.width}x{img.height}")
            if img.width * img.height > max_pixels:
                raise ImageError(f"{what}: {img.width}x{img.height} exceeds the limit of {max_pixels} pixels")
            img = img.convert("RGB") if img.mode != "RGB" else img
        elif isinstance(img, (bytes, bytearray, memoryview)):
            img = decode_image(bytes(img), max_bytes=max_bytes, max_pixels=max_pixels, what=what)
        else:
            raise ImageError(f"{what}: expected a PIL image or encoded bytes, got {type(img).__name__}")
        out.roles.append(role)
        out.images.append(img)
        out.descriptions.append(desc)
    return out


def qwen_preamble(n: int) -> str:
    """The text put before the prompt for ``n`` references ("Picture 1: <|vision_start|>..." x n)."""
    return "".join(QWEN_PICTURE_TEMPLATE.format(i + 1) for i in range(n))


def _qwen_dims(area: int, ratio: float) -> tuple[int, int]:
    # the pipeline's calculate_dimensions (round to multiples of 32), floored at 32 so an extreme
    # aspect ratio at a small area never rounds a side to 0
    w = math.sqrt(area * ratio)
    h = w / ratio
    return max(32, round(w / 32) * 32), max(32, round(h / 32) * 32)


def qwen_reference_sizes(img: Image.Image, reference_size: int, encoder_reference_size: int):
    """((vae_w, vae_h), (enc_w, enc_h)) for one reference: areas reference_size^2 and
    encoder_reference_size^2, aspect ratio of ``img`` kept, sides multiples of 32."""
    ratio = img.width / img.height
    return _qwen_dims(reference_size ** 2, ratio), _qwen_dims(encoder_reference_size ** 2, ratio)


def flux_reference_size(img: Image.Image, reference_size: int, multiple_of: int) -> tuple[int, int]:
    """(w, h) a FLUX.2 reference is encoded at: shrunk to <= reference_size^2 pixels (aspect kept,
    never enlarged, as the pipeline does with 1024^2), floored to ``multiple_of`` (at least one)."""
    w, h = img.size
    if w * h > reference_size ** 2:
        s = math.sqrt(reference_size ** 2 / (w * h))
        w, h = int(w * s), int(h * s)
    return max(multiple_of, (w // multiple_of) * multiple_of), max(multiple_of, (h // multiple_of) * multiple_of)


def flux_reference_offsets(n: int, scale: int = 10) -> list[int]:
    """RoPE time coordinate of each reference's tokens in FLUX.2 (``Flux2KleinPipeline._prepare_image_ids``):
    the generated image sits at T=0, reference i (0-based) at T = scale + scale * i."""
    return [scale + scale * i for i in range(n)]
