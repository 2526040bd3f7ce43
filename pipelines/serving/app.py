"""The HTTP API (FastAPI): recommend, similar, feedback, catalogue writes, health, metrics.

Every bad request gets a 4xx whose body says what was wrong (``{"error": ...}``); nothing a
client sends can produce a 500. Bounds live in the request models (built from the serving
configuration), so ``/openapi.json`` states every limit the server enforces and every status
code each operation can answer. When API keys are configured, ``/feedback`` needs an ingest
key and catalogue writes and reloads an admin key (`pipelines.serving.auth`); the `Gate` checks keys
and content type before any body is read.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and the
# request models are built per configuration inside `create_app`.
import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import ServingConfig
from core.errors import AuthError, BundleError, DataError, StoreError, VidrecError
from core.schema import (
    MAX_CATEGORIES,
    MAX_ID,
    MAX_NAME_CHARS,
    MAX_RATING,
    MAX_SECONDS,
    MAX_TAGS,
    MAX_TIMESTAMP,
    MAX_TITLE_CHARS,
    YEAR_RANGE,
)
from pipelines.serve import RecommenderService
from pipelines.serving.auth import KeyRing
from pipelines.serving.auth import Scope as KeyScope
from pipelines.serving.events import EVENT_KINDS, FeedbackEvent

logger = logging.getLogger(__name__)

RETRY_AFTER = "1"  # seconds; the store is busy for as long as one write transaction
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.05, 0.1, 0.25, 1.0)


BATCH_TAG, EVENT_TAG = "batch", "event"
MAX_CLOCK_SKEW_SECONDS = 86_400  # a feedback timestamp further ahead is a client bug
MAX_CATEGORY_CHARS = MAX_NAME_CHARS

Id = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


def _bounded_float(low: float, high: float, description: str, *, exclusive_low: bool = False):
    bounds = {"gt": low} if exclusive_low else {"ge": low}
    return Annotated[
        float | None, Field(None, strict=True, le=high, description=description, **bounds)
    ]


class ErrorBody(BaseModel):
    """Every 4xx and 503 answer: what was wrong and how to fix it."""

    error: str


class Item(BaseModel):
    video_id: int
    score: float
    because: list[int] = Field(description="Watched videos this one comes from.")


class RecommendResponse(BaseModel):
    items: list[Item]
    bundle_id: str
    source: Literal["personalized", "popular"]
    ignored_history: list[int]
    timings_ms: dict[str, float]
    attention: dict[str, Any] | None = None


class SimilarItem(BaseModel):
    video_id: int
    score: float


class SimilarResponse(BaseModel):
    items: list[SimilarItem]
    bundle_id: str


class FeedbackResponse(BaseModel):
    stored: int


class VideosResponse(BaseModel):
    video_ids: list[int]


class TakedownResponse(BaseModel):
    video_id: int
    was_indexed: bool


class ReadyResponse(BaseModel):
    status: Literal["ready", "degraded", "loading"]
    bundle_id: str | None = None
    last_refused: str | None = None
    error: str | None = None
    skipped_rows: int = Field(0, description="Stored rows skipped as unservable.")
    store_error: str | None = Field(None, description="Why the event store cannot be read.")
    worker: int | None = None


class ReloadResponse(BaseModel):
    bundle_id: str


class HealthResponse(BaseModel):
    status: Literal["ok"]


@dataclasses.dataclass(frozen=True)
class ApiModels:
    """The request bodies, bounded by the serving configuration so that OpenAPI states the
    limits the server enforces."""

    recommend: type[BaseModel]
    feedback_item: type[BaseModel]
    feedback_batch: type[BaseModel]
    video: type[BaseModel]
    feedback: Any  # one event or a batch (a tagged union of the two above)


def api_models(config: ServingConfig) -> ApiModels:
    """Request models for ``config``'s limits."""
    strict = ConfigDict(extra="forbid", allow_inf_nan=False)

    class RecommendRequest(BaseModel):
        """Body of ``POST /recommend``."""

        model_config = strict
        user_id: Id | None = Field(None, description="Raw user id; its stored history is used.")
        history: list[Id] | None = Field(
            None,
            max_length=config.max_request_history,
            description="Watched video ids, oldest first; overrides the stored history.",
        )
        k: Annotated[int, Field(strict=True, ge=1, le=config.max_k)] | None = Field(
            None, description=f"How many videos (default {config.default_k})."
        )
        exclude: list[Id] = Field(
            default_factory=list,
            max_length=config.max_exclude,
            description="Video ids never to return.",
        )
        category: str | None = Field(
            None,
            min_length=1,
            max_length=MAX_CATEGORY_CHARS,
            description="Cold start: popular videos of a category.",
        )

    class FeedbackItem(BaseModel):
        """One feedback event."""

        model_config = strict
        user_id: Id
        video_id: Id
        event: Literal[tuple(sorted(EVENT_KINDS))] = "watch"  # type: ignore[valid-type]
        watch_seconds: _bounded_float(0.0, MAX_SECONDS, "Seconds watched.")  # type: ignore[valid-type]
        rating: _bounded_float(0.0, MAX_RATING, "Explicit rating, 0 to 5.")  # type: ignore[valid-type]
        timestamp: Annotated[int, Field(strict=True, ge=0, le=MAX_TIMESTAMP)] | None = Field(
            None, description="Seconds since the epoch; defaults to now; at most a day ahead."
        )

    class FeedbackRequest(BaseModel):
        """Body of ``POST /feedback``: a batch of events."""

        model_config = strict
        events: list[FeedbackItem] = Field(min_length=1, max_length=config.max_feedback_batch)

    class VideoRequest(BaseModel):
        """Body of ``POST /videos``: a new video or new metadata for a known one."""

        model_config = strict
        video_id: Id
        title: str = Field("", max_length=MAX_TITLE_CHARS)
        categories: list[Name] = Field(default_factory=list, max_length=MAX_CATEGORIES)
        tags: list[Name] = Field(default_factory=list, max_length=MAX_TAGS)
        year: _bounded_float(*YEAR_RANGE, "Release year.")  # type: ignore[valid-type]
        duration: _bounded_float(  # type: ignore[valid-type]
            0.0, MAX_SECONDS, "Seconds.", exclusive_low=True
        )
        creator: str = Field("", max_length=MAX_NAME_CHARS)
        upload_time: _bounded_float(  # type: ignore[valid-type]
            0.0, float(MAX_TIMESTAMP), "Seconds since the epoch."
        )

    # One event or a batch, told apart by the "events" key, so that an error names the fields
    # of the form the client meant instead of both forms' mismatches.
    feedback = Annotated[
        Annotated[FeedbackRequest, Tag(BATCH_TAG)] | Annotated[FeedbackItem, Tag(EVENT_TAG)],
        Discriminator(_feedback_form),
    ]
    return ApiModels(RecommendRequest, FeedbackItem, FeedbackRequest, VideoRequest, feedback)


def _feedback_form(body: Any) -> str:
    """Which form of ``POST /feedback`` a body is: a batch has ``events``."""
    if isinstance(body, dict):
        return BATCH_TAG if "events" in body else EVENT_TAG
    return BATCH_TAG if hasattr(body, "events") else EVENT_TAG


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers an operation can give."""
    meaning = {
        400: "Refused (see error).",
        401: "No API key, or an unknown one, while keys are configured.",
        403: "The API key's scope does not cover this endpoint (an ingest key on an admin one).",
        413: "Body larger than serving.max_body_bytes.",
        415: "Body is not application/json.",
        422: "Malformed JSON, or a field missing, of the wrong type or out of range.",
        503: "No bundle loaded yet, or the event store is busy (retry after Retry-After).",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


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


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location as the client wrote it: without ``body`` and the feedback form's tag."""
    if loc[:1] == ("body",):
        loc = loc[1:]
    if loc[:1] in ((BATCH_TAG,), (EVENT_TAG,)):
        loc = loc[1:]
    return loc


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in _field_path(tuple(item.get("loc", ()))))
        if item.get("type") == "json_invalid":
            return f"malformed JSON: {item.get('ctx', {}).get('error', item.get('msg'))}"
        parts.append(f"{location or 'body'}: {item.get('msg')}")
    return "; ".join(parts)


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


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


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
    metrics = _Metrics()
    app.state.metrics = metrics
    app.state.service = service
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
        return JSONResponse({"error": _validation_message(error)}, status_code=422)

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
        responses={200: {"model": RecommendResponse}, **_errors(400, 413, 415, 422, 503)},
    )
    def recommend(body: models.recommend) -> Response:  # type: ignore[name-defined]
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

    @app.get("/similar", response_model=SimilarResponse, responses=_errors(400, 422, 503))
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
        responses=_errors(400, 401, 403, 413, 415, 422, 503),
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
        responses=_errors(400, 401, 403, 413, 415, 422, 503),
        **protected("POST", "/videos", KeyScope.ADMIN),
    )
    def upsert_video(body: models.video) -> dict[str, Any]:  # type: ignore[name-defined]
        """Adds a video (searchable at once, embedded from its metadata) or updates one."""
        return {"video_ids": service.current.upsert_videos([body.model_dump()])}

    @app.delete(
        "/videos/{video_id}",
        response_model=TakedownResponse,
        responses=_errors(400, 401, 403, 422, 503),
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
        had to be skipped (`vidrec events check` lists them)."""
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
        responses=_errors(401, 403, 503),
        **protected("POST", "/admin/reload", KeyScope.ADMIN),
    )
    def reload() -> dict[str, Any]:
        """Loads the bundle named by CURRENT now (verified and warmed before the swap)."""
        return {"bundle_id": service.reload()}

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
