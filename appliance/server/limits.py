"""Request limits: body size (413 before or while the body is read) and the bound on `max_tokens` (400).

The body limit is a pure ASGI middleware, so a body over the limit is never buffered: a declared
`Content-Length` over it is refused before a byte is read, and a chunked body is refused the moment it
passes the limit (the route then sees a client disconnect and its own answer is dropped).
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.server.deps import AppState
from appliance.server.errors import ApiError

_UPLOAD_PATH = re.compile(r"^/api/admin/collections/[^/]+/documents/?$")


def bounded_max_tokens(state: AppState, requested: int | None, default: int) -> int:
    """`requested`, or `default` when not given, within APPLIANCE_MAX_TOKENS_LIMIT (400 when asked for more)."""
    limit = state.settings.max_tokens_limit
    if requested is None:
        return min(default, limit)
    if requested > limit:
        raise ApiError(400, "invalid_request",
                       f"max_tokens={requested} is over this server's limit of {limit} (APPLIANCE_MAX_TOKENS_LIMIT)")
    return requested


class BodyLimitMiddleware:
    """413 for a request body over `max_body` bytes (`max_upload` for document uploads)."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and _UPLOAD_PATH.match(scope["path"]) is not None
        limit = self.max_upload if upload else self.max_body
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        received, refused, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the route's answer to a body it never got whole
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps({"error": {"type": "too_large",
                                 "message": f"the request body is over the limit of {limit} bytes"}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
