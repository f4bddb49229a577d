"""Refuses request bodies over ``settings.max_body_bytes`` with 413, before the app reads them into memory:
by ``Content-Length`` when the client sends one, else by counting the chunks as they stream in. The rest of a
moderately oversized body is read and dropped first, so the client reads the 413 instead of a reset."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Bodies up to this many times the limit are read (and dropped) before the 413, so the client gets the answer;
# larger ones are cut off at once (the client may then see the connection reset).
DRAIN_FACTOR = 8


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive)
            await self._refuse(scope, send)
            return
        if declared is not None:
            # The server stops reading at Content-Length, so the declared size is the size.
            await self.app(scope, receive, send)
            return
        # A chunked body: read it here, up to the limit, and hand the app the buffered body.
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, DRAIN_FACTOR * self.max_bytes - received)
                await self._refuse(scope, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        buffered: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return buffered.pop() if buffered else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive: Receive, limit: int | None = None) -> None:
        """Read and drop the rest of the body before refusing it: a server that answers and closes while the client
        is still sending resets the connection, and the client sees a broken connection instead of the 413."""
        drained = 0
        while limit is None or drained <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, scope: Scope, send: Send) -> None:
        detail = f"request body is larger than the limit of {self.max_bytes} bytes"
        if str(scope.get("path", "")).startswith("/v1/"):
            body = {"error": {"message": detail, "type": "invalid_request_error", "param": None,
                              "code": "body_too_large"}}
        else:
            body = {"detail": detail, "code": "body_too_large"}
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
