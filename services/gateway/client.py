"""A small client of the gateway (what ``dyref generate`` uses): references from files, images to files."""
from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx

from common.roles import ROLES

__all__ = ["GatewayClient", "GatewayError", "parse_ref", "save_images"]


class GatewayError(RuntimeError):
    """The gateway answered an error envelope (status, code, message, param kept)."""

    def __init__(self, status: int, body: dict):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status, self.code, self.param = status, err.get("code"), err.get("param")
        msg = err.get("message") or str(body)[:300]
        super().__init__(f"HTTP {status} {self.code}: {msg}" + (f" (field: {self.param})" if self.param else ""))


def parse_ref(spec: str) -> tuple[str, Path]:
    """"subject:path.png" -> ("subject", Path("path.png")); a bare path is a subject."""
    role, sep, path = spec.partition(":")
    if not sep or role not in ROLES:
        if sep and role not in ROLES and len(role) > 1:
            raise ValueError(f"--ref {spec!r}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        role, path = "subject", spec
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--ref {spec!r}: no such file {path!r}")
    return role, p


class GatewayClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout_s: float = 600.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self.http.close()

    def _check(self, r: httpx.Response) -> dict:
        try:
            body = r.json()
        except ValueError:
            body = {"error": {"message": r.text[:300]}}
        if r.status_code >= 400:
            raise GatewayError(r.status_code, body)
        return body

    def generate(self, prompt: str, refs: list[tuple[str, Path]] = (), wait_async: bool = False,
                 poll_s: float = 0.2, **params) -> dict:
        """POST /v1/generations (base64 references); ``wait_async`` uses 202 + polling instead."""
        body = {"prompt": prompt, "references": [
            {"role": role, "image": base64.b64encode(Path(p).read_bytes()).decode()} for role, p in refs]}
        body.update({k: v for k, v in params.items() if v is not None})
        headers = {"Prefer": "respond-async"} if wait_async else {}
        data = self._check(self.http.post(f"{self.url}/v1/generations", json=body, headers=headers))
        while data.get("status") in ("queued", "running"):
            time.sleep(poll_s)
            data = self._check(self.http.get(f"{self.url}/v1/generations/{data['id']}"))
        if data.get("status") == "failed":
            raise GatewayError(200, {"error": data.get("error") or {}})
        return data


def save_images(resp: dict, out: str | Path) -> list[Path]:
    """Write every image of a response: ``out`` for one image, ``out-<i>.<ext>`` for several."""
    out = Path(out)
    images = resp.get("images", [])
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(len(images))]
    for p, im in zip(paths, images):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(base64.b64decode(im["b64_json"]))
    return paths
