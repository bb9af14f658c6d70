"""How the sandbox answers, for iamport's routes and PortOne V2's alike: late, dropped halfway,
or a few bytes at a time, and noticing a client that went away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

CLIENT_CLOSED = 499  # logged status of a call whose client went away before the answer


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def pause(request: Request, seconds: float, watch: bool) -> bool:
    """Sleep `seconds`; False if the client disconnected first (only noticed when `watch`)."""
    if seconds <= 0:
        return True
    if not watch:
        await asyncio.sleep(seconds)
        return True
    waiter = asyncio.ensure_future(wait_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        return not done
    finally:
        waiter.cancel()


class DroppedResponse(Response):
    """Headers and half the body, then the connection is closed: an answer lost on the way."""

    def __init__(self, content: bytes, status_code: int) -> None:
        super().__init__(content, status_code, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        # Returning now makes the server close the connection mid-answer.


class TrickleResponse(Response):
    """An answer sent a few bytes at a time; stops when the client goes away."""

    def __init__(
        self,
        content: bytes,
        status_code: int,
        interval: float,
        chunk: int,
        on_end: Callable[[int], None],
    ) -> None:
        super().__init__(content, status_code, media_type="application/json")
        self.interval = interval
        self.chunk = max(1, chunk)
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        waiter = asyncio.ensure_future(wait_disconnect(receive))
        try:
            for i in range(0, len(self.body), self.chunk):
                done, _ = await asyncio.wait({waiter}, timeout=self.interval)
                if done:
                    self.on_end(CLIENT_CLOSED)
                    return
                piece = self.body[i : i + self.chunk]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.on_end(self.status_code)
        finally:
            waiter.cancel()
