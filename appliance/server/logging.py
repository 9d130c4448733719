"""Structured request logs: every request gets an id (`X-Request-ID` honoured or generated), returned in
its response and carried by every log line written while it is handled.

`configure_logging` (used by `appliance serve`) writes each line's `request_id=...`: the id of the request being
handled where the line was logged (`-` outside a request), or the one the record brings (Ray Serve's loggers set
their own). The middleware writes one access line per request when it ends.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = logging.getLogger("appliance.access")


class RequestIdFilter(logging.Filter):
    """Gives each record it sees the current request's id as `request_id`, unless the record has one already
    (Ray Serve's loggers pass their own in `extra`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "info") -> None:
    """Root logging to stderr with the request id in every line."""
    logging.basicConfig(level=level.upper(), force=True,
                        format="%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())


class RequestIdMiddleware:
    """Pure ASGI middleware (streams and client disconnects pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info("method=%s path=%s status=%d duration_ms=%.1f", scope["method"], scope["path"], status,
                     (time.perf_counter() - started) * 1000)
            request_id_var.reset(token)
