"""The HTTP API (FastAPI): recommend, similar, feedback, catalogue writes, health, metrics.

Every bad request gets a 4xx whose body says what was wrong (``{"error": ...}``); nothing a
client sends can produce a 500. Write endpoints other than ``/feedback`` need the API key when
one is configured (``X-API-Key`` header). The OpenAPI schema is at ``/openapi.json``.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from typing import Any

import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import ServingConfig
from core.errors import BundleError, DataError, VidrecError
from pipelines.events import FeedbackEvent
from pipelines.serve import RecommenderService

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.05, 0.1, 0.25, 1.0)


class RecommendRequest(BaseModel):
    """Body of ``POST /recommend``."""

    model_config = ConfigDict(extra="forbid")
    user_id: int | None = Field(None, description="Raw user id; its stored history is used.")
    history: list[int] | None = Field(
        None, description="Watched video ids, oldest first; overrides the stored history."
    )
    k: int | None = Field(None, description="How many videos (default serving.default_k).")
    exclude: list[int] = Field(default_factory=list, description="Video ids never to return.")
    category: str | None = Field(None, description="Cold start: popular videos of a category.")


class FeedbackItem(BaseModel):
    """One feedback event."""

    model_config = ConfigDict(extra="forbid")
    user_id: int
    video_id: int
    event: str = "watch"
    watch_seconds: float | None = Field(None, ge=0)
    rating: float | None = None
    timestamp: int | None = Field(None, ge=0, description="Seconds; defaults to now.")


class FeedbackRequest(BaseModel):
    """Body of ``POST /feedback``: one event or a batch."""

    model_config = ConfigDict(extra="forbid")
    events: list[FeedbackItem] = Field(min_length=1, max_length=1_000)


class VideoRequest(BaseModel):
    """Body of ``POST /videos``: a new video or new metadata for a known one."""

    model_config = ConfigDict(extra="forbid")
    video_id: int
    title: str = ""
    categories: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    year: float | None = None
    duration: float | None = Field(None, ge=0)
    creator: str = ""
    upload_time: float | None = None


class _Metrics:
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

    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
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

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await _send_error(send, 413, f"body exceeds {self.limit} bytes")


class _BodyTooLargeError(Exception):
    pass


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


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        if item.get("type") == "json_invalid":
            return f"malformed JSON: {item.get('ctx', {}).get('error', item.get('msg'))}"
        parts.append(f"{location or 'body'}: {item.get('msg')}")
    return "; ".join(parts)


def create_app(service: RecommenderService, config: ServingConfig, api_key: str | None) -> FastAPI:
    """The ASGI app over a `RecommenderService`.

    Args:
        service: Serving recommender with hot swap.
        config: Limits and defaults.
        api_key: Key required on write endpoints (``/videos``, ``/admin/reload``); None or
            empty leaves them open.
    """
    app = FastAPI(
        title="vidrec",
        version="1",
        description="Video recommendations: two-tower retrieval, Faiss, attention ranker.",
    )
    metrics = _Metrics()
    app.state.metrics = metrics
    app.state.service = service

    def require_key(given: str | None) -> None:
        if api_key and not (given and hmac.compare_digest(given, api_key)):
            raise PermissionError("missing or wrong X-API-Key")

    reported: list[str] = []

    def refresh_bundle_metrics() -> None:
        # Set the old label to 0 rather than clearing it: multiprocess metric files keep
        # every label a worker ever wrote.
        for bundle_id in reported:
            metrics.bundle.labels(bundle_id=bundle_id).set(0)
        reported.clear()
        if service.ready:
            reported.append(service.current.bundle_id)
            metrics.bundle.labels(bundle_id=reported[0]).set(1)
        metrics.swaps.set(service.swaps)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(error)}, status_code=422)

    @app.exception_handler(DataError)
    async def bad_data(_: Request, error: DataError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(PermissionError)
    async def forbidden(_: Request, error: PermissionError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=401)

    @app.exception_handler(BundleError)
    async def unavailable(_: Request, error: BundleError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(VidrecError)
    async def refused(_: Request, error: VidrecError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.post("/recommend", response_model=None)
    def recommend(body: RecommendRequest) -> Response:
        """Recommendations for a user id, an anonymous history, or a cold-start visitor."""
        result = service.current.recommend(
            user_id=body.user_id,
            history=body.history,
            k=body.k,
            exclude=body.exclude,
            category=body.category,
        )
        for stage, ms in result.timings_ms.items():
            metrics.stages.labels(stage=stage).observe(ms / 1e3)
        # Serialised here with orjson: FastAPI's generic encoder cost more than the ranker.
        return Response(orjson.dumps(result.as_dict()), media_type="application/json")

    @app.get("/similar")
    def similar(
        video_id: int = Query(..., description="Raw video id"),
        k: int | None = Query(None, description="How many videos"),
    ) -> dict[str, Any]:
        """Videos nearest to a video (video-to-video)."""
        current = service.current
        return {"items": current.similar(video_id, k), "bundle_id": current.bundle_id}

    @app.post("/feedback")
    def feedback(body: FeedbackRequest | FeedbackItem) -> dict[str, Any]:
        """Stores watch/rating events durably; the user's next recommendation reads them."""
        items = body.events if isinstance(body, FeedbackRequest) else [body]
        now = int(time.time())
        events = [
            FeedbackEvent(
                user_id=e.user_id,
                video_id=e.video_id,
                timestamp=now if e.timestamp is None else e.timestamp,
                event=e.event,
                watch_seconds=e.watch_seconds,
                rating=e.rating,
            )
            for e in items
        ]
        stored = service.events.append(events)
        metrics.feedback.inc(stored)
        return {"stored": stored}

    @app.post("/videos")
    def upsert_video(body: VideoRequest, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Adds a video (searchable at once, embedded from its metadata) or updates one."""
        require_key(x_api_key)
        import pandas as pd

        ids = service.current.upsert_videos(pd.DataFrame([body.model_dump()]))
        return {"video_ids": ids}

    @app.delete("/videos/{video_id}")
    def take_down(video_id: int, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Takes a video down: it is never returned again."""
        require_key(x_api_key)
        removed = service.current.take_down([video_id])
        return {"video_id": video_id, "was_indexed": bool(removed)}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """A bundle is loaded, verified and warmed up."""
        if not service.ready:
            return JSONResponse({"status": "loading", "error": service.last_error}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "bundle_id": service.current.bundle_id,
                "last_refused": service.last_error,
                "worker": os.getpid(),
            }
        )

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        """Prometheus text exposition."""
        refresh_bundle_metrics()
        return PlainTextResponse(
            metrics.exposition().decode(),
            media_type="text/plain; version=0.0.4",
        )

    @app.post("/admin/reload")
    def reload(x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Loads the bundle named by CURRENT now (verified and warmed before the swap)."""
        require_key(x_api_key)
        return {"bundle_id": service.reload()}

    return Instrumented(BodyLimit(app, config.max_body_bytes), metrics)  # type: ignore[return-value]


def start_polling(service: RecommenderService, seconds: float) -> threading.Event:
    """Checks ``CURRENT`` every ``seconds`` in a daemon thread; set the event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                service.poll()
            except Exception:  # a poll must never kill the thread
                logger.exception("bundle poll failed")

    threading.Thread(target=loop, name="bundle-poll", daemon=True).start()
    return stop
