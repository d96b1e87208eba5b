"""Wire types: the only types that cross a process boundary (pydantic v2).

Images travel as encoded image files (PNG/JPEG/WebP bytes), never as pickled objects; over HTTP
they are base64 in JSON. Tensors travel through :mod:`common.codec`.
"""
from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.config import Dynamics, PolicyConfig, SDEConfig
from common.roles import ROLES, Role

__all__ = [
    "Reference", "SamplingParams", "Task", "GroupHeader", "WeightVersion",
    "GenerateReference", "GenerateRequest", "GeneratedImage", "GenerateResponse", "ErrorBody",
    "ErrorEnvelope", "group_id_for", "ScoreRequest", "ScoreResponse", "OpenAIImage", "OpenAIImagesResponse",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Box = tuple[float, float, float, float]


class Reference(_Wire):
    """One typed reference image. `image` holds the encoded file bytes."""
    role: Role = Field(..., description="What the reference contributes: subject, style, background, lighting or pose.")
    image: bytes = Field(..., repr=False, description="Encoded image file (PNG, JPEG or WebP).")
    description: str | None = Field(None, max_length=1000, description="Optional words about the reference (e.g. the subject's name).")
    box: Box | None = Field(None, description="Where this reference's content belongs in the output: (x0, y0, x1, y1) as fractions of the image. Known for synthetic training tasks; the per-reference reward scores a subject inside it.")

    @field_validator("box")
    @classmethod
    def _valid_box(cls, v: Box | None) -> Box | None:
        if v is not None and not (0.0 <= v[0] < v[2] <= 1.0 and 0.0 <= v[1] < v[3] <= 1.0):
            raise ValueError(f"box must be (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {v}")
        return v


def _default(section: type[BaseModel], name: str):
    return section.model_fields[name].default


class SamplingParams(_Wire):
    """How one task's group is sampled. The defaults are the config's own (policy.* and
    policy.sde.*), read from its field declarations, so there is one place to change them; a run
    builds its parameters with :meth:`from_config`."""
    num_inference_steps: int = Field(_default(PolicyConfig, "num_inference_steps"), ge=1, le=200)
    height: int = Field(_default(PolicyConfig, "height"), ge=16, le=4096)
    width: int = Field(_default(PolicyConfig, "width"), ge=16, le=4096)
    noise_level: float = Field(_default(SDEConfig, "noise_level"), ge=0)
    dynamics: Dynamics = _default(SDEConfig, "dynamics")
    train_steps: tuple[int, ...] = Field(tuple(_default(SDEConfig, "train_steps")),
                                         description="Indices the train steps are drawn from.")
    num_train_steps: int = Field(_default(SDEConfig, "num_train_steps"), ge=1)
    # rollouts run without CFG whatever this says (docs/algorithm.md §9); kept so task payloads keep their shape
    guidance_scale: float = Field(1.0, ge=0)

    @classmethod
    def from_config(cls, policy: PolicyConfig, **overrides) -> "SamplingParams":
        """The rollout parameters a run's config asks for (``overrides`` replace single fields)."""
        sde = policy.sde
        return cls(**{"num_inference_steps": policy.num_inference_steps, "height": policy.height,
                      "width": policy.width, "noise_level": sde.noise_level, "dynamics": sde.dynamics,
                      "train_steps": tuple(sde.train_steps), "num_train_steps": sde.num_train_steps, **overrides})


class Task(_Wire):
    """A prompt with its references, admitted by the learner for one group of G rollouts."""
    task_id: str = Field(..., min_length=1, max_length=128)
    prompt: str = Field(..., min_length=1, max_length=4000)
    references: tuple[Reference, ...] = Field(..., min_length=1)
    group_size: int = Field(..., ge=2, le=256)
    policy_version: int = Field(..., ge=0, description="Policy version current at admission; generators serve at least this.")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    seed: int = Field(..., ge=0, description="Seed of the group's noise and of its train-step choice.")
    target: bytes | None = Field(None, repr=False, description="Ground-truth target image (encoded), when the record has one.")
    record_index: int | None = Field(None, description="`index` of the training record.")
    admitted_at: float = Field(default_factory=time.time)

    @property
    def n_refs(self) -> int:
        return len(self.references)


def group_id_for(task_id: str, policy_version: int) -> str:
    """Deterministic group id: a redelivered or re-run task maps to the same id, so it is counted once."""
    return hashlib.sha256(f"{task_id}@{policy_version}".encode()).hexdigest()[:24]


class GroupHeader(_Wire):
    """Small stream entry announcing a scored group; the payload sits in a blob key."""
    group_id: str = Field(..., min_length=1, max_length=64)
    task_id: str
    policy_version: int = Field(..., ge=0, description="Version of the weights that sampled the group.")
    generator_id: str
    blob_key: str
    blob_bytes: int = Field(..., ge=0)
    blob_sha256: str = Field(..., min_length=64, max_length=64)
    group_size: int = Field(..., ge=1)
    n_refs: int = Field(..., ge=0)
    created_at: float = Field(default_factory=time.time)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase on the generator (sample, score, publish).")


class WeightVersion(_Wire):
    """A published set of trainable weights (LoRA adapter or full), verified by sha256."""
    version: int = Field(..., ge=0)
    sha256: str = Field(..., min_length=64, max_length=64)
    key: str
    nbytes: int = Field(..., ge=0)
    kind: Literal["lora", "full"]
    step: int = Field(0, ge=0)
    chunks: int = Field(1, ge=0, description="The bytes are split over this many keys (Redis caps one value at 512 MB); 0 on the direct path.")
    transport: Literal["redis", "direct"] = Field("redis", description="Where the bytes are: in Redis beside this metadata, or held by the learner's weight source actor (common/transport/direct.py).")
    source: str | None = Field(None, description="The direct path's weight source actor (its Ray name).")
    created_at: float = Field(default_factory=time.time)
    probe: list[float] | None = Field(None, description="The publisher's MRIGPolicy.probe() under these weights: a consumer recomputes it after loading, so a load that binds nothing fails loudly.")


class ScoreRequest(_Wire):
    """One group's images for one scorer deployment (generator -> reward worker)."""
    group_id: str
    images: tuple[bytes, ...] = Field(..., min_length=1, repr=False, description="Generated images (encoded), G of them.")
    against: tuple[bytes, ...] = Field((), repr=False, description="Comparison images: the target, or every reference of one role.")
    prompt: str = ""
    references: tuple[Reference, ...] = Field((), repr=False, description="All references (judges read them by role).")
    n_refs: int = Field(0, ge=0)
    roles: tuple[Role, ...] | None = Field(None, description="Per-reference scorer: the roles whose references it scores (None: every role it can).")


class ScoreResponse(_Wire):
    """Raw scores: one row per generated image, one column per comparison image (None = missing)."""
    scorer: str
    scores: tuple[tuple[float | None, ...], ...]
    seconds: float = 0.0
    batch_images: int = Field(0, ge=0, description="Images in the batched model call this answer came from.")


# ---- HTTP (gateway) ----------------------------------------------------------------------------

class GenerateReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(..., description=f"One of {', '.join(ROLES)}.")
    image: str = Field(..., description="Base64-encoded image file (PNG, JPEG or WebP), or a data: URL.")
    description: str | None = Field(None, max_length=1000)

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: str) -> str:
        # a str field (not Literal) so the error names the role and lists the known ones
        if v not in ROLES:
            raise ValueError(f"unknown role {v!r}; expected one of {', '.join(ROLES)}")
        return v

    def decode_bytes(self) -> bytes:
        data = self.image.split(",", 1)[1] if self.image.startswith("data:") else self.image
        return base64.b64decode(data, validate=True)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, max_length=4000)
    negative_prompt: str | None = Field(None, max_length=4000)
    references: list[GenerateReference] = Field(default_factory=list)
    n: int = Field(1, ge=1)
    width: int | None = Field(None, ge=16)
    height: int | None = Field(None, ge=16)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0, le=30, allow_inf_nan=False)  # NaN: 'finite number', not '<= 30'
    output_format: Literal["png", "jpeg", "webp"] = "png"


class GeneratedImage(BaseModel):
    b64_json: str
    width: int
    height: int
    seed: int
    index: int = Field(0, ge=0, description="Member of the request's batch; image i is reproduced by the same seed with n > i.")
    format: Literal["png", "jpeg", "webp"] = "png"


class GenerateResponse(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    status: Literal["queued", "running", "succeeded", "failed"] = "succeeded"
    policy_version: int | None = None
    images: list[GeneratedImage] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    error: "ErrorBody | None" = None


class ErrorBody(BaseModel):
    type: str
    code: str
    message: str
    param: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    """OpenAI Images API response (``/v1/images/edits``), plus the DyRef policy version."""
    created: int
    data: list[OpenAIImage]
    policy_version: int | None = None


GenerateResponse.model_rebuild()

