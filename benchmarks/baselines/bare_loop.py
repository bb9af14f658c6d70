"""The upstream-bound limit: a bare asyncio loop making cancel calls against the sandbox.

One aiohttp session, one token, `in_flight` coroutines each taking the next imp_uid: no
database, no broker, no bookkeeping. What the worker does per job beyond this is its cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aiohttp


async def _run(base_url: str, uids: Sequence[str], in_flight: int, key: str, secret: str) -> float:
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(base_url, connector=connector) as http:
        async with http.post("/users/getToken", json={"imp_key": key, "imp_secret": secret}) as r:
            token = (await r.json())["response"]["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        todo = iter(uids)
        failed = 0

        async def caller() -> None:
            nonlocal failed
            for uid in todo:
                async with http.delete(f"/cvs/{uid}", headers=headers) as r:
                    body = await r.json()
                    if r.status != 200 or body.get("code") != 0:
                        failed += 1

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{failed} bare cancels were not applied")
    return len(uids) / elapsed


def cancels_per_second(
    base_url: str, uids: Sequence[str], in_flight: int, key: str, secret: str
) -> float:
    """Cancel every one of `uids` with `in_flight` calls at a time; cancels per second."""
    return asyncio.run(_run(base_url, uids, in_flight, key, secret))
