"""The ASGI layers around the FastAPI app, outermost first: `Instrumented` (Prometheus counts
and latency), `Gate` (API keys, then content type, before any body is read), `BodyLimit`.

Plain ASGI wrappers rather than Starlette's ``@app.middleware``, which costs a task and a queue
per request (about 1 ms on the request path).
"""

from __future__ import annotations

import os
import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import AuthError
from pipelines.serving.auth import KeyRing
from pipelines.serving.auth import Scope as KeyScope

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vidrec_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "vidrec_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "vidrec_stage_seconds",
            "Recommend latency per stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Under several workers each reports its own bundle (labelled with its pid).
        self.bundle = Gauge(
            "vidrec_bundle_info",
            "Serving bundle (value 1)",
            ["bundle_id"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.swaps = Gauge(
            "vidrec_bundle_swaps",
            "Bundles swapped in",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.feedback = Counter(
            "vidrec_feedback_events", "Feedback events stored", registry=self.registry
        )
        self.store_fallbacks = Counter(
            "vidrec_store_fallbacks",
            "Answers given without the event store (what: history read from the bundle alone, "
            "or catalogue_sync skipped)",
            ["what"],
            registry=self.registry,
        )
        # Read from the store, which every worker shares: any worker reports the same count.
        self.skipped = Gauge(
            "vidrec_skipped_stored_rows",
            "Stored rows servers could not apply and skipped (vidrec events check)",
            registry=self.registry,
            multiprocess_mode="max",
        )

    def exposition(self) -> bytes:
        """Prometheus text of this process, or of every worker under ``vidrec serve
        --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` is set)."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


class Instrumented:
    """Counts requests by route and status and times them (a plain ASGI wrapper: Starlette's
    ``@app.middleware`` costs a task and a queue per request)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "unknown"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, declared length or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, 413, f"body of {int(declared)} bytes exceeds {self.limit}")
            return
        seen = 0
        refused = False

        async def limited() -> Message:
            # Over the limit, answer 413 here and tell the app the client went away: raising
            # instead would reach FastAPI's body parser, which turns any error into a 400.
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if not refused:
                        refused = True
                        await _send_error(send, 413, f"body exceeds {self.limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited, unless_refused)
        except Exception:
            if not refused:  # the app's own failure, not the disconnect it was told of
                raise


async def _send_error(send: Send, status: int, message: str) -> None:
    body = JSONResponse({"error": message}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Gate:
    """Answers what must be refused before FastAPI reads a body: a missing, unknown or
    too narrow API key (401/403), then a body that is not JSON (415). A client without a key
    learns nothing about the body it sent, and FastAPI never parses one it would refuse.

    Args:
        app: The next ASGI app (the body limit around FastAPI).
        api: The FastAPI app, whose routes say which operation a request is for.
        scopes: Scope each protected operation needs, by ``(method, route path)``.
        keys: The keys in force.
    """

    def __init__(
        self,
        app: ASGIApp,
        api: FastAPI,
        scopes: dict[tuple[str, str], KeyScope],
        keys: KeyRing,
    ) -> None:
        self.app = app
        self.api = api
        self.scopes = scopes
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        if route is not None:
            needed = self.scopes.get((scope["method"], route.path))
            headers = dict(scope.get("headers") or [])
            try:
                if needed is not None:
                    given = headers.get(b"x-api-key")
                    self.keys.authorize(None if given is None else given.decode("latin-1"), needed)
            except AuthError as error:
                await _send_error(send, error.status, str(error))
                return
            if getattr(route, "body_field", None) is not None and not _is_json(
                headers.get(b"content-type", b"")
            ):
                await _send_error(
                    send, 415, "send the body as JSON with Content-Type: application/json"
                )
                return
        await self.app(scope, receive, send)

    def _route(self, scope: Scope) -> APIRoute | None:
        for route in self.api.router.routes:
            if isinstance(route, APIRoute):
                match, child = route.matches(scope)
                if match == Match.FULL:
                    scope.update(child)  # the metrics wrapper labels by route, even on refusal
                    return route
        return None


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )
