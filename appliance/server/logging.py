"""Structured request logs: every request gets an id (`X-Request-ID` honoured or generated), returned in
its response and carried by every log line written while it is handled.

Every log record carries `request_id` (`-` outside a request; Ray Serve's loggers set their own);
`configure_logging` (used by `appliance serve`) writes it as `request_id=...` in each `key=value` line. The
middleware writes one access line per request when it ends.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = logging.getLogger("appliance.access")


# Loggers that pass a `request_id` of their own in `extra` (Ray Serve's, in a cluster's `Api` replica): logging
# refuses an `extra` key a record already has, so their records get theirs, not ours.
_OWN_REQUEST_IDS = ("ray.serve",)


def _with_request_id(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(name: str, *args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(name, *args, **kwargs)
        if not name.startswith(_OWN_REQUEST_IDS):
            record.request_id = request_id_var.get()
        return record

    make.adds_request_id = True  # type: ignore[attr-defined]
    return make


def install_request_id_records() -> None:
    """Give every log record a `request_id` attribute (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "adds_request_id", False):
        logging.setLogRecordFactory(_with_request_id(factory))


def configure_logging(level: str = "info") -> None:
    """Root logging to stderr with the request id in every line."""
    install_request_id_records()
    logging.basicConfig(level=level.upper(), force=True,
                        format="%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s")


class RequestIdMiddleware:
    """Pure ASGI middleware (streams and client disconnects pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        install_request_id_records()

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
