"""The gateway's FastAPI app: routes, admission (queue limit), API keys, async jobs, metrics.

``build_api(cfg, backend, jobs, defaults)`` returns the ASGI app; the Serve gateway deployment
builds it on its replica (``__serve_build_asgi_app__``) with a backend that batches requests into
the policy of the same replica (services/gateway/deployments.py). Routes:

  POST /generate, /v1/generations          JSON (GenerateRequest); ``Prefer: respond-async`` -> 202
  POST /v1/generations/form                multipart: files ``references`` + ``roles`` (one each)
  GET  /v1/generations/{id}                poll an async job (Redis, TTL ``job_ttl_s``)
  POST /v1/images/edits                    OpenAI-compatible (image[] -> subject references; quality and
                                           background: only "auto", anything else is refused by name)
  GET  /healthz /readyz /metrics /         liveness, readiness (model + Redis), Prometheus, web page
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from fastapi import Depends, FastAPI, File, Form, Header, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from common import metrics as M
from common.config import GatewayConfig
from common.schemas import (GeneratedImage, GenerateRequest, GenerateResponse, OpenAIImage, OpenAIImagesResponse)
from services.gateway.errors import ERROR_RESPONSES, APIError, BodyTooLarge, envelope, install_error_handlers
from services.gateway.jobs import JobStore
from services.gateway.prepare import GenJob, GenResult, RefIn, parse_size, prepare_job

__all__ = ["build_api", "Backend", "Defaults", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_log = logging.getLogger("dyref.gateway")


class Backend(Protocol):
    """What the routes need from the generator: a generation and its replica's stats."""

    async def generate(self, job: GenJob) -> GenResult: ...

    async def stats(self) -> dict: ...


@dataclass
class Defaults:
    width: int = 64
    height: int = 64
    steps: int = 8
    guidance: float = 1.0


class _Observe:
    """Pure ASGI middleware: request counter + latency by route template, and the body-size limit.

    The limit is enforced twice: on a declared ``Content-Length`` before anything is read, and on the
    bytes actually received (``receive`` is wrapped and counts every ``http.request`` chunk), so a
    chunked body or one longer than its header declares is refused with 413 after at most the limit
    plus one chunk has been read; the 413 says ``Connection: close`` so the server stops reading.

    And a budget for the whole process: the request-body bytes held by every request in progress,
    summed, stay under ``budget`` (default: one body limit). A request whose declared length or
    next chunk does not fit gets 503 + Retry-After at once (nothing more of it is read), so N
    concurrent hostile uploads hold about one limit in total, not N. A request's bytes are given
    back when it ends (its parsed body lives until then)."""

    def __init__(self, app, max_body: int, busy: Callable[[], APIError | None] = lambda: None,
                 budget: int | None = None, retry_after_s: int = 1):
        self.app, self.max_body, self.busy = app, max_body, busy
        self.budget = budget or max_body
        self.held = 0  # body bytes held by requests in progress (one event loop: no lock)
        self.retry_after_s = retry_after_s

    def _over_budget(self) -> APIError:
        return APIError(503, "server_busy", "the gateway is receiving too much request data at once; retry later",
                        "body", headers={"Connection": "close", "Retry-After": str(self.retry_after_s)})

    def _too_large(self, n: int, declared: bool) -> APIError:
        what = f"request body of {n} bytes" if declared else f"request body of more than {self.max_body} bytes"
        return APIError(413, "body_too_large", f"{what} exceeds the limit of {self.max_body} bytes", "body",
                        headers={"Connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                resp = envelope(self._too_large(int(v), declared=True))
                await resp(scope, receive, send)
                M.GATEWAY_REQUESTS.labels("unmatched", "413").inc()
                return
            if k == b"content-length" and v.isdigit() and self.held + int(v) > self.budget:
                await envelope(self._over_budget())(scope, receive, send)
                M.GATEWAY_REQUESTS.labels("unmatched", "503").inc()
                return
        gen_route = next((g for g in _GENERATION_PATHS if scope["path"].rstrip("/").endswith(g)), None)
        if scope["method"] == "POST" and gen_route:
            # queue full: answer 429 before the (large) body is read, parsed and its images decoded
            err = self.busy()
            if err is not None:
                await envelope(err)(scope, receive, send)
                M.GATEWAY_REQUESTS.labels(gen_route, "429").inc()
                return
        status, started, received = [500], [False], [0]

        async def _receive():
            msg = await receive()
            if msg["type"] == "http.request":
                n = len(msg.get("body", b""))
                if received[0] + n > self.max_body:
                    raise BodyTooLarge(self._too_large(received[0] + n, declared=False))
                if self.held + n > self.budget:
                    raise BodyTooLarge(self._over_budget())
                received[0] += n
                self.held += n
            return msg

        async def _send(msg):
            if msg["type"] == "http.response.start":
                status[0], started[0] = msg["status"], True
            await send(msg)

        t0 = time.perf_counter()
        try:
            await self.app(scope, _receive, _send)
        except BodyTooLarge as e:  # raised outside the app's handlers (e.g. a mounted app): answer it here
            if started[0]:
                raise
            await envelope(e.error)(scope, receive, _send)
        finally:
            self.held -= received[0]
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # templates only: bounded labels
            M.GATEWAY_REQUESTS.labels(route, str(status[0])).inc()
            M.GATEWAY_LATENCY.labels(route).observe(time.perf_counter() - t0)


_GENERATION_PATHS = ("/v1/generations/form", "/v1/images/edits", "/v1/generations", "/generate")  # longest first


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def build_api(cfg: GatewayConfig, backend: Backend, jobs: JobStore | None, defaults: Defaults = Defaults(),
              replicas: int | None = None) -> FastAPI:
    app = FastAPI(title="DyRef gateway", version="1", description=(
        "Multi-reference image generation from the policy that training is producing. Every error is "
        '`{"error": {"type", "code", "message", "param"}}` with `param` naming the field.'))
    install_error_handlers(app)
    capacity = cfg.queue_limit * (replicas or cfg.replicas)
    state: dict[str, Any] = {"inflight": 0, "ready": False}
    tasks: set[asyncio.Task] = set()
    bearer = HTTPBearer(auto_error=False, description="API key (only when the gateway is configured with api_keys)")
    retry_after = {"Retry-After": str(cfg.retry_after_s)}

    async def require_key(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not cfg.api_keys:
            return
        if cred is None or not any(hmac.compare_digest(cred.credentials.encode(), k.encode()) for k in cfg.api_keys):
            raise APIError(401, "invalid_api_key", "missing or invalid API key (Authorization: Bearer <key>)",
                           None, headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_key)]

    async def prepared(**kw) -> GenJob:
        # decoding and optional URL fetches are blocking: keep them off the event loop
        return await asyncio.to_thread(prepare_job, cfg, default_size=(defaults.width, defaults.height),
                                       default_steps=defaults.steps, default_guidance=defaults.guidance, **kw)

    async def ensure_ready() -> None:
        if state["ready"]:
            return
        try:
            st = await asyncio.wait_for(backend.stats(), timeout=5.0)
        except Exception as e:  # noqa: BLE001
            _log.warning("generator stats failed: %s: %s", type(e).__name__, e)
            raise APIError(503, "model_not_ready", "generator unavailable (not answering); retry later", None,
                           headers=retry_after) from None
        if not st.get("ready"):
            why = st.get("load_error") or "model still loading"
            raise APIError(503, "model_not_ready", f"no model ready: {why}", None, headers=retry_after)
        state["ready"] = True

    async def call(job: GenJob) -> GenResult:
        try:
            res = await asyncio.wait_for(backend.generate(job), timeout=cfg.timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, "timeout", f"generation took longer than {cfg.timeout_s:g} s", None) from None
        except APIError:
            raise
        except Exception as e:  # noqa: BLE001 - the generator's worker failed outside a request
            _log.warning("generation failed: %s: %s", type(e).__name__, e)
            raise APIError(503, "generator_unavailable", "generator unavailable (replica failed or restarting); "
                           "retry later", None, headers=retry_after) from None
        if res.error:
            status, code, msg, param = res.error
            raise APIError(status, code, msg, param, headers=retry_after if status in (429, 503) else None)
        state["ready"] = True
        return res

    def busy() -> APIError | None:
        if state["inflight"] >= capacity:
            return APIError(429, "queue_full", f"{state['inflight']} generations in progress (limit {capacity}); "
                            "retry later", None, headers=retry_after)
        return None

    def admit() -> None:
        err = busy()
        if err is not None:
            raise err
        state["inflight"] += 1
        M.GATEWAY_QUEUE.set(state["inflight"])

    def release() -> None:
        state["inflight"] -= 1
        M.GATEWAY_QUEUE.set(state["inflight"])

    def to_response(res: GenResult, t0: float, job_id: str | None = None) -> GenerateResponse:
        M.GATEWAY_IMAGES.inc(len(res.images))
        imgs = [GeneratedImage(b64_json=_b64(b), width=res.width, height=res.height, seed=res.seed, index=i,
                               format=res.output_format) for i, b in enumerate(res.images)]
        timings = dict(res.timings) | {"total_s": time.perf_counter() - t0}
        kw = {"id": job_id} if job_id else {}
        return GenerateResponse(status="succeeded", policy_version=res.policy_version, images=imgs, timings=timings, **kw)

    async def run_job(job_id: str, job: GenJob, t0: float) -> None:
        try:
            await jobs.put(GenerateResponse(id=job_id, status="running"))
            try:
                resp = to_response(await call(job), t0, job_id)
            except APIError as e:
                resp = GenerateResponse(id=job_id, status="failed", error=e.body())
            await jobs.put(resp)
        except Exception:  # noqa: BLE001 - Redis gone: the job expires as queued/running
            import logging
            logging.getLogger(__name__).exception("async job %s could not be stored", job_id)
        finally:
            release()

    async def submit(job: GenJob, prefer: str | None, t0: float) -> Response:
        if prefer and "respond-async" in prefer.lower():
            if jobs is None:
                raise APIError(400, "async_unavailable", "async jobs need Redis, which this gateway has not", "Prefer")
            await ensure_ready()
            admit()
            try:
                queued = GenerateResponse(status="queued")
                await jobs.put(queued)
            except Exception:
                release()
                raise
            task = asyncio.create_task(run_job(queued.id, job, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return JSONResponse(queued.model_dump(mode="json"), status_code=202,
                                headers={"Location": f"/v1/generations/{queued.id}", "Preference-Applied": "respond-async"})
        admit()
        try:
            res = await call(job)
        finally:
            release()
        return JSONResponse(to_response(res, t0).model_dump(mode="json"))

    gen_responses = {200: {"model": GenerateResponse}, 202: {"model": GenerateResponse, "description": "Accepted (async)"}} | ERROR_RESPONSES

    async def generate_json(req: GenerateRequest, prefer: str | None = Header(None, description="`respond-async` -> 202 + job id")):
        t0 = time.perf_counter()
        refs = [RefIn(role=r.role, b64=r.image, description=r.description, param=f"references[{i}].image")
                for i, r in enumerate(req.references)]
        job = await prepared(prompt=req.prompt, refs=refs, n=req.n, width=req.width, height=req.height, seed=req.seed,
                             steps=req.num_inference_steps, guidance=req.guidance_scale,
                             negative_prompt=req.negative_prompt, output_format=req.output_format)
        return await submit(job, prefer, t0)

    for path, name in (("/generate", "generate"), ("/v1/generations", "create_generation")):
        app.post(path, response_model=GenerateResponse, responses=gen_responses, dependencies=auth, name=name,
                 summary="Generate images from a prompt and typed references")(generate_json)

    @app.post("/v1/generations/form", response_model=GenerateResponse, responses=gen_responses, dependencies=auth,
              summary="Generate (multipart form: reference files with one role each)")
    async def generate_form(prompt: str = Form(..., min_length=1, max_length=4000),
                            references: list[UploadFile] = File(default=[], description="Reference image files, in order"),
                            roles: list[str] = Form(default=[], description="One role per reference file, in order"),
                            descriptions: list[str] = Form(default=[]),
                            negative_prompt: str | None = Form(None), n: int = Form(1, ge=1),
                            width: int | None = Form(None, ge=16), height: int | None = Form(None, ge=16),
                            seed: int | None = Form(None, ge=0), num_inference_steps: int | None = Form(None, ge=1),
                            guidance_scale: float | None = Form(None, ge=0, le=30, allow_inf_nan=False), output_format: str = Form("png"),
                            prefer: str | None = Header(None)):
        t0 = time.perf_counter()
        if len(roles) != len(references):
            raise APIError(400, "roles_mismatch", f"{len(references)} reference files but {len(roles)} roles; "
                           "send one `roles` field per file, in order", "roles")
        if len(references) > cfg.max_references:
            raise APIError(400, "too_many_references",
                           f"{len(references)} references given; at most {cfg.max_references} are allowed", "references")
        refs = [RefIn(role=roles[i], data=await f.read(), param=f"references[{i}]", role_param=f"roles[{i}]",
                      description=descriptions[i] if i < len(descriptions) else None) for i, f in enumerate(references)]
        job = await prepared(prompt=prompt, refs=refs, n=n, width=width, height=height, seed=seed,
                             steps=num_inference_steps, guidance=guidance_scale, negative_prompt=negative_prompt,
                             output_format=output_format)
        return await submit(job, prefer, t0)

    @app.get("/v1/generations/{job_id}", response_model=GenerateResponse, dependencies=auth,
             responses={404: ERROR_RESPONSES[400] | {"description": "No such job (or expired)"}},
             summary="Poll an async generation")
    async def get_generation(job_id: str):
        if jobs is None:
            raise APIError(404, "job_not_found", "this gateway keeps no jobs", "id")
        job = await jobs.get(job_id)
        if job is None:
            shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."  # never echo a client's megabytes back
            raise APIError(404, "job_not_found", f"no job {shown!r} (unknown or expired after {cfg.job_ttl_s} s)", "id")
        return job

    @app.post("/v1/images/edits", response_model=OpenAIImagesResponse, responses=ERROR_RESPONSES, dependencies=auth,
              summary="OpenAI-compatible image edit: every image is a subject reference, in order")
    async def images_edits(prompt: str = Form(..., min_length=1, max_length=4000),
                           image_list: list[UploadFile] = File(default=[], alias="image[]"),
                           image: list[UploadFile] = File(default=[]),
                           mask: UploadFile | None = File(None), n: int = Form(1, ge=1),
                           size: str | None = Form(None), response_format: str | None = Form(None),
                           model: str | None = Form(None), output_format: str | None = Form(None),
                           quality: str | None = Form(None), background: str | None = Form(None),
                           user: str | None = Form(None)):
        files = list(image_list) + list(image)
        if mask is not None:
            raise APIError(400, "mask_not_supported", "mask is not supported; DyRef edits from references only", "mask")
        if response_format not in (None, "b64_json"):
            raise APIError(400, "unsupported_response_format", "only response_format=b64_json is served", "response_format")
        # OpenAI's quality / background have no equivalent here: refused by name rather than ignored
        if quality not in (None, "auto"):
            raise APIError(400, "unsupported_quality", f"quality={quality!r} is not supported; omit it or send 'auto' "
                           "(quality follows num_inference_steps of the gateway's defaults)", "quality")
        if background not in (None, "auto"):
            raise APIError(400, "unsupported_background", f"background={background!r} is not supported; omit it or send "
                           "'auto' (images are opaque RGB)", "background")
        if not files:
            raise APIError(400, "missing_image", "at least one image (image[] or image) is required", "image")
        if len(files) > cfg.max_references:
            raise APIError(400, "too_many_references",
                           f"{len(files)} images given; at most {cfg.max_references} are allowed", "image")
        w, h = parse_size(size)
        refs = [RefIn(role="subject", data=await f.read(), param=f"image[{i}]") for i, f in enumerate(files)]
        fmt = output_format or "png"
        job = await prepared(prompt=prompt, refs=refs, n=n, width=w, height=h, output_format=fmt,
                             size_param="size" if size else None)
        admit()
        try:
            res = await call(job)
        finally:
            release()
        M.GATEWAY_IMAGES.inc(len(res.images))
        return OpenAIImagesResponse(created=int(time.time()), data=[OpenAIImage(b64_json=_b64(b)) for b in res.images],
                                    policy_version=res.policy_version)

    _ops_routes(app, cfg, backend, jobs, state)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _strip_422(app)
    max_body = cfg.max_references * (cfg.max_image_bytes * 4 // 3 + 1024) + 1024 * 1024
    budget = int(cfg.receive_budget_mb * 2**20) if cfg.receive_budget_mb else None
    app.add_middleware(_Observe, max_body=max_body, busy=busy, budget=budget, retry_after_s=cfg.retry_after_s)
    app.state.gateway = {"tasks": tasks, "state": state, "capacity": capacity}
    return app


def _ops_routes(app: FastAPI, cfg: GatewayConfig, backend: Backend, jobs: JobStore | None, state: dict) -> None:
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz", summary="Liveness: the gateway process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: a model is loaded and Redis answers",
             responses={503: ERROR_RESPONSES[503]})
    async def readyz():
        try:
            st = await asyncio.wait_for(backend.stats(), timeout=5.0)
        except Exception as e:  # noqa: BLE001
            _log.warning("generator stats failed: %s: %s", type(e).__name__, e)
            st = {"ready": False, "load_error": "generator unavailable (not answering)"}
        redis_ok = await jobs.ping() if jobs is not None else False
        if st.get("ready") and redis_ok:
            state["ready"] = True
            return {"status": "ready", "model": True, "redis": True, "policy_version": st.get("policy_version"),
                    "replica": st.get("replica"), "weight_load_failures": st.get("weight_load_failures", {})}
        why = []
        if not st.get("ready"):
            why.append("model: " + (st.get("load_error") or "loading"))
        if not redis_ok:
            why.append("redis: unreachable")
        return envelope(APIError(503, "not_ready", "; ".join(why), None, headers={"Retry-After": str(cfg.retry_after_s)}))

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        # the policy runs in this process (services/gateway/deployments.py): its served version and
        # weight-load failures are already in this registry
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _strip_422(app: FastAPI) -> None:
    """FastAPI documents 422 for every route; this gateway answers validation errors as 400 envelopes."""
    original: Callable[[], dict] = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                if isinstance(op, dict):
                    op.get("responses", {}).pop("422", None)
        comps = schema.get("components", {}).get("schemas", {})
        for k in ("HTTPValidationError", "ValidationError"):
            comps.pop(k, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

