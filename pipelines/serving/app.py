"""The HTTP API (FastAPI): recommend, similar, feedback, catalogue writes, health, metrics.

Every bad request gets a 4xx whose body says what was wrong (``{"error": ...}``); nothing a
client sends can produce a 500. Bounds live in the request models (built from the serving
configuration), so ``/openapi.json`` states every limit the server enforces and every status
code each operation can answer. When API keys are configured, ``/feedback`` needs an ingest
key and catalogue writes and reloads an admin key (`pipelines.serving.auth`). The models are
in `pipelines.serving.api_models`, the ASGI layers around the app (metrics, keys and content
type before any body is read, the body limit) in `pipelines.serving.middleware`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and the
# request models are built per configuration inside `create_app`.
import contextlib
import logging
import os
import threading
import time
from typing import Any

import orjson
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.config import ServingConfig
from core.errors import AuthError, BundleError, DataError, StoreError, VidrecError
from core.schema import MAX_ID
from pipelines.serve import RecommenderService
from pipelines.serving.api_models import (
    MAX_CLOCK_SKEW_SECONDS,
    FeedbackResponse,
    HealthResponse,
    ReadyResponse,
    RecommendResponse,
    ReloadResponse,
    SimilarResponse,
    TakedownResponse,
    VideosResponse,
    api_models,
    error_responses,
    validation_message,
)
from pipelines.serving.auth import KeyRing
from pipelines.serving.auth import Scope as KeyScope
from pipelines.serving.events import FeedbackEvent
from pipelines.serving.inspector import add_inspector_routes
from pipelines.serving.middleware import BodyLimit, Gate, Instrumented, Metrics

logger = logging.getLogger(__name__)

RETRY_AFTER = "1"  # seconds; the store is busy for as long as one write transaction


def _exact_id_bounds(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "maximum" and value == float(MAX_ID):
                node[key] = MAX_ID
            else:
                _exact_id_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _exact_id_bounds(value)


def create_app(service: RecommenderService, config: ServingConfig, keys: KeyRing) -> FastAPI:
    """The ASGI app over a `RecommenderService`.

    Args:
        service: Serving recommender with hot swap.
        config: Limits and defaults.
        keys: API keys in force (`pipelines.serving.auth`); with none configured every endpoint is
            open.
    """
    app = FastAPI(
        title="vidrec",
        version="1",
        description="Video recommendations: two-tower retrieval, Faiss, attention ranker. "
        "Reads need no key; when keys are configured, POST /feedback needs an ingest or admin "
        "key and catalogue writes and reloads need an admin key (X-API-Key header).",
    )
    metrics = Metrics()
    app.state.metrics = metrics
    app.state.service = service

    def store_fallback(what: str) -> None:
        metrics.store_fallbacks.labels(what=what).inc()

    service.on_store_fallback = store_fallback
    models = api_models(config)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
    scopes: dict[tuple[str, str], KeyScope] = {}

    def protected(method: str, path: str, needed: KeyScope) -> dict[str, Any]:
        """Route options of an operation that needs a key: the `Gate` enforces the scope;
        the security entry documents it in OpenAPI."""
        scopes[(method, path)] = needed
        options: dict[str, Any] = {"openapi_extra": {"x-required-scope": needed.value}}
        if keys.configured:  # an open server documents no key
            options["dependencies"] = [Security(key_header)]
        return options

    reported: list[str] = []

    def refresh_gauges() -> None:
        # Set the old label to 0 rather than clearing it: multiprocess metric files keep
        # every label a worker ever wrote.
        for bundle_id in reported:
            metrics.bundle.labels(bundle_id=bundle_id).set(0)
        reported.clear()
        if service.ready:
            reported.append(service.current.bundle_id)
            metrics.bundle.labels(bundle_id=reported[0]).set(1)
        metrics.swaps.set(service.swaps)
        with contextlib.suppress(StoreError):  # /readyz says why; the metrics still answer
            metrics.skipped.set(service.events.skipped_count())

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(error)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 400:  # FastAPI could not decode the body at all
            message = f"{message}: send the body as UTF-8 JSON"
        return JSONResponse({"error": message}, status_code=error.status_code)

    @app.exception_handler(DataError)
    async def bad_data(_: Request, error: DataError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(AuthError)
    async def unauthorised(_: Request, error: AuthError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(BundleError)
    async def unavailable(_: Request, error: BundleError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(StoreError)
    async def store_busy(_: Request, error: StoreError) -> JSONResponse:
        return JSONResponse(
            {"error": str(error)}, status_code=503, headers={"Retry-After": RETRY_AFTER}
        )

    @app.exception_handler(VidrecError)
    async def refused(_: Request, error: VidrecError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.post(
        "/recommend",
        response_model=None,
        responses={200: {"model": RecommendResponse}, **error_responses(400, 413, 415, 422, 503)},
    )
    def recommend(body: models.recommend) -> Response:  # type: ignore[name-defined]
        """Recommendations for a user id, an anonymous history, or a cold-start visitor.

        When the event store cannot be read, the answer still comes, from the bundle's history
        alone (``history_source: "bundle_only"``)."""
        result = service.current.recommend(
            user_id=body.user_id,
            history=body.history,
            k=body.k,
            exclude=body.exclude,
            category=body.category,
            explain=body.explain,
        )
        for stage, ms in result.timings_ms.items():
            metrics.stages.labels(stage=stage).observe(ms / 1e3)
        # Serialised here with orjson: FastAPI's generic encoder cost more than the ranker.
        return Response(orjson.dumps(result.as_dict()), media_type="application/json")

    @app.get("/similar", response_model=SimilarResponse, responses=error_responses(400, 422, 503))
    def similar(
        video_id: int = Query(..., ge=0, le=MAX_ID, description="Raw video id"),
        k: int | None = Query(None, ge=1, le=config.max_k, description="How many videos"),
    ) -> dict[str, Any]:
        """Videos nearest to a video (video-to-video)."""
        current = service.current
        return {"items": current.similar(video_id, k), "bundle_id": current.bundle_id}

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses=error_responses(400, 401, 403, 413, 415, 422, 503),
        **protected("POST", "/feedback", KeyScope.INGEST),
    )
    def feedback(
        body: models.feedback,  # type: ignore[name-defined]
    ) -> dict[str, Any]:
        """Stores watch/rating events durably (one event, or ``{"events": [...]}``); the
        user's next recommendation reads them."""
        items = body.events if isinstance(body, models.feedback_batch) else [body]
        now = int(time.time())
        for event in items:
            if event.timestamp is not None and event.timestamp > now + MAX_CLOCK_SKEW_SECONDS:
                raise DataError(
                    f"timestamp {event.timestamp} is more than a day ahead of the server's "
                    f"clock ({now}); send seconds since the epoch, or leave it out for now"
                )
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

    @app.post(
        "/videos",
        response_model=VideosResponse,
        responses=error_responses(400, 401, 403, 413, 415, 422, 503),
        **protected("POST", "/videos", KeyScope.ADMIN),
    )
    def upsert_video(body: models.video) -> dict[str, Any]:  # type: ignore[name-defined]
        """Adds a video (searchable at once, embedded from its metadata) or updates one."""
        return {"video_ids": service.current.upsert_videos([body.model_dump()])}

    @app.delete(
        "/videos/{video_id}",
        response_model=TakedownResponse,
        responses=error_responses(400, 401, 403, 422, 503),
        **protected("DELETE", "/videos/{video_id}", KeyScope.ADMIN),
    )
    def take_down(video_id: int = Path(..., ge=0, le=MAX_ID)) -> dict[str, Any]:
        """Takes a video down: it is never returned again."""
        removed = service.current.take_down([video_id])
        return {"video_id": video_id, "was_indexed": bool(removed)}

    @app.get("/healthz", response_model=HealthResponse)
    def healthz() -> dict[str, Any]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "No bundle loaded yet."}},
    )
    def readyz() -> JSONResponse:
        """A bundle is loaded, verified and warmed up. ``degraded``: serving, but stored rows
        had to be skipped (`vidrec events check` lists them), or the event store cannot be
        reached (answers come from the bundle alone, writes answer 503). Still 200 then: every
        replica shares the store, and taking them all out of rotation would answer nothing."""
        if not service.ready:
            return JSONResponse({"status": "loading", "error": service.last_error}, status_code=503)
        store_error = None
        try:
            skipped = service.events.skipped_count()
        except StoreError as error:  # the bundle still answers; say what is wrong
            skipped, store_error = 0, str(error)
        return JSONResponse(
            {
                "status": "degraded" if skipped or store_error else "ready",
                "bundle_id": service.current.bundle_id,
                "last_refused": service.last_error,
                "skipped_rows": skipped,
                "store_error": store_error,
                "store": service.events.health(),
                "worker": os.getpid(),
            }
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def prometheus() -> PlainTextResponse:
        """Prometheus text exposition."""
        refresh_gauges()
        return PlainTextResponse(
            metrics.exposition().decode(),
            media_type="text/plain; version=0.0.4",
        )

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        responses=error_responses(401, 403, 503),
        **protected("POST", "/admin/reload", KeyScope.ADMIN),
    )
    def reload() -> dict[str, Any]:
        """Loads the bundle named by CURRENT now (verified and warmed before the swap)."""
        return {"bundle_id": service.reload()}

    add_inspector_routes(app, service, config)

    default_openapi = app.openapi

    def openapi_with_exact_bounds() -> dict[str, Any]:
        # FastAPI's OpenAPI model holds bounds as floats, and float(2**63 - 1) is 2**63: put
        # the id bound back as the integer the server enforces.
        if app.openapi_schema is None:
            _exact_id_bounds(default_openapi())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi_with_exact_bounds  # type: ignore[method-assign]
    # Keys and content type first, then the body's size: a client without a key learns
    # nothing about its body.
    gated = Gate(BodyLimit(app, config.max_body_bytes), app, scopes, keys)
    return Instrumented(gated, metrics)  # type: ignore[return-value]


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
