"""Generation over benchmark cases: fixed seed, resumable, atomic writes, rich progress bar.

Layout of a run directory ``<out>/<run_name>/``::

    run.json              generation settings + generator description (a resumed run must match)
    cases.jsonl           the cases of this run (index, category, n_refs, references, ...)
    images/<index>.png    one generated image per case, named by the record's ``index``
    failures.json         cases whose generation failed, with the error

Every case is generated with the same bench seed (the paper evaluates with seed 1 for all
cases), so two policies see identical initial noise per case. A case whose image already exists
and decodes is skipped; images are written to a temporary file and renamed, so an interrupted
run never leaves a truncated PNG that a resume would trust.
"""
from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import httpx
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from common.bench.loader import BenchCase, BenchDataError, resolve_image
from common.images import decode_image

__all__ = [
    "GenerationSettings", "Generator", "PolicyGenerator", "GatewayGenerator", "GenerationResult",
    "load_references", "is_valid_image", "save_image_atomic", "run_generation", "image_path",
    "RunMismatchError",
]

RefImages = list[tuple[str, Image.Image, str]]  # (role, image, name)


@dataclass(frozen=True)
class GenerationSettings:
    seed: int = 1
    width: int = 64
    height: int = 64
    num_inference_steps: int = 8
    guidance_scale: float = 1.0
    negative_prompt: str | None = None


class Generator(Protocol):
    """Anything that turns (prompt, typed references) into one image."""

    def describe(self) -> dict: ...

    def generate(self, prompt: str, references: RefImages, settings: GenerationSettings) -> Image.Image: ...


class RunMismatchError(RuntimeError):
    """A run directory already holds images made with different settings."""


class PolicyGenerator:
    """A local policy object exposing ``generate(prompt, references=[(role, PIL)], n, height, width,
    num_inference_steps, guidance_scale, negative_prompt, seed) -> list[PIL]`` (common.policy)."""

    def __init__(self, policy: Any, label: str = "local"):
        self.policy = policy
        self.label = label

    def describe(self) -> dict:
        return {"kind": "local", "label": self.label, "class": type(self.policy).__name__}

    def generate(self, prompt: str, references: RefImages, settings: GenerationSettings) -> Image.Image:
        out = self.policy.generate(
            prompt, [(role, img) for role, img, _ in references], n=1, height=settings.height,
            width=settings.width, num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, negative_prompt=settings.negative_prompt,
            seed=settings.seed)
        if not out:
            raise RuntimeError("policy returned no image")
        return out[0]


def _retryable(e: BaseException) -> bool:
    if isinstance(e, httpx.HTTPStatusError):
        return e.response.status_code in (408, 429) or e.response.status_code >= 500
    return isinstance(e, httpx.TransportError)


class GatewayGenerator:
    """A running DyRef gateway: ``POST {url}/v1/generations`` with base64 references.

    Retries (exponential backoff) on connection errors, 408/429 and 5xx; a 4xx is a bad request
    and fails the case at once with the gateway's error message.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 600.0, retries: int = 3,
                 client: httpx.Client | None = None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=timeout_s, headers=headers)
        self._post = retry(retry=retry_if_exception(_retryable), stop=stop_after_attempt(retries + 1),
                           wait=wait_exponential(multiplier=0.5, max=10), reraise=True)(self._post_once)

    def describe(self) -> dict:
        return {"kind": "gateway", "url": self.url}

    def _post_once(self, body: dict) -> dict:
        r = self.client.post(f"{self.url}/v1/generations", json=body)
        if r.status_code >= 400 and not _retryable(httpx.HTTPStatusError("", request=r.request, response=r)):
            raise RuntimeError(f"gateway refused the request ({r.status_code}): {r.text[:500]}")
        r.raise_for_status()
        return r.json()

    def generate(self, prompt: str, references: RefImages, settings: GenerationSettings) -> Image.Image:
        refs = []
        for role, img, name in references:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            refs.append({"role": role, "image": base64.b64encode(buf.getvalue()).decode(),
                         "description": name})
        body = {"prompt": prompt, "references": refs, "n": 1, "seed": settings.seed,
                "width": settings.width, "height": settings.height,
                "num_inference_steps": settings.num_inference_steps,
                "guidance_scale": settings.guidance_scale, "output_format": "png"}
        if settings.negative_prompt:
            body["negative_prompt"] = settings.negative_prompt
        data = self._post(body)
        try:
            b64 = data["images"][0]["b64_json"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"gateway response has no images[0].b64_json: {str(data)[:300]}") from None
        # bytes from the network: the one bounded decode path (byte and pixel limits)
        return decode_image(base64.b64decode(b64), what="gateway image")

    def close(self) -> None:
        self.client.close()


def load_references(case: BenchCase, image_root: str | os.PathLike) -> RefImages:
    """Open every reference of ``case`` (RGB) under ``image_root`` (path traversal refused)."""
    out = []
    for role, rel, name in case.references:
        with Image.open(resolve_image(image_root, rel)) as im:
            out.append((role, im.convert("RGB"), name))
    return out


def image_path(run_dir: str | os.PathLike, index: int) -> Path:
    return Path(run_dir) / "images" / f"{index}.png"


def is_valid_image(path: Path) -> bool:
    """True when ``path`` exists and fully decodes (a truncated file does not)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


def save_image_atomic(img: Image.Image, path: Path) -> None:
    """Write a PNG to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.convert("RGB").save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class GenerationResult:
    run_dir: Path
    generated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def _check_manifest(run_dir: Path, manifest: dict, allow_mismatch: bool) -> None:
    path = run_dir / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings") != manifest["settings"] and not allow_mismatch:
            raise RunMismatchError(
                f"{run_dir} was generated with settings {old.get('settings')}, now {manifest['settings']}; "
                "use a new --run-name (or --force to mix them)")
    path.write_text(json.dumps(manifest, indent=2))


def run_generation(cases: Iterable[BenchCase], generator: Generator, image_root: str | os.PathLike,
                   run_dir: str | os.PathLike, settings: GenerationSettings, *, progress: bool = True,
                   allow_mismatch: bool = False, extra_manifest: dict | None = None) -> GenerationResult:
    """Generate ``images/<index>.png`` for every case not already done.

    A failing case (unreadable reference, policy or gateway error) is recorded in
    ``failures.json`` and the run goes on; rerunning retries only missing cases.
    """
    run_dir = Path(run_dir)
    cases = list(cases)
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    manifest = {"settings": asdict(settings), "generator": generator.describe(),
                "image_root": str(image_root), **(extra_manifest or {})}
    _check_manifest(run_dir, manifest, allow_mismatch)
    with open(run_dir / "cases.jsonl", "w") as f:
        for c in cases:
            f.write(json.dumps(c.to_json()) + "\n")
    res = GenerationResult(run_dir)
    columns = (TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("generate", total=len(cases), status="")
        for case in cases:
            out = image_path(run_dir, case.index)
            if is_valid_image(out):
                res.skipped.append(case.index)
            else:
                try:
                    refs = load_references(case, image_root)
                    img = generator.generate(case.prompt, refs, settings)
                    save_image_atomic(img, out)
                    res.generated.append(case.index)
                except BenchDataError:
                    raise  # a path escaping the image root is a broken benchmark, not a failed case
                except Exception as e:  # noqa: BLE001 - one bad case must not end the run
                    res.failed[case.index] = f"{type(e).__name__}: {e}"
            bar.update(task, advance=1, status=f"new {len(res.generated)} skip {len(res.skipped)} "
                                               f"fail {len(res.failed)}")
    (run_dir / "failures.json").write_text(json.dumps({str(k): v for k, v in res.failed.items()}, indent=2))
    return res
