"""Async generation jobs (``Prefer: respond-async``): one JSON value per job in Redis, with a TTL.

A job is a :class:`common.schemas.GenerateResponse` stored under ``Keys.job(id)``; its status goes
queued -> running -> succeeded | failed, and the key expires ``job_ttl_s`` after its last write.
Redis calls run in a worker thread so a slow Redis never blocks the gateway's event loop.
"""
from __future__ import annotations

import asyncio
import re

import redis

from common.schemas import GenerateResponse
from common.transport import Keys

__all__ = ["JobStore", "JOB_ID_RE"]

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class JobStore:
    def __init__(self, r: redis.Redis, keys: Keys, ttl_s: int):
        self.r, self.keys, self.ttl_s = r, keys, ttl_s

    async def put(self, job: GenerateResponse) -> None:
        await asyncio.to_thread(self.r.set, self.keys.job(job.id), job.model_dump_json(), ex=self.ttl_s)

    async def get(self, job_id: str) -> GenerateResponse | None:
        if not JOB_ID_RE.match(job_id):
            return None
        raw = await asyncio.to_thread(self.r.get, self.keys.job(job_id))
        return GenerateResponse.model_validate_json(raw) if raw else None

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(asyncio.to_thread(self.r.ping), timeout=2.0))
        except Exception:  # noqa: BLE001 - readiness reports, it does not raise
            return False
