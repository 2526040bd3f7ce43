"""The HTTP API's request and response models, and how their errors read.

The request models are built from the serving configuration (`api_models`), so that
``/openapi.json`` states every bound the server enforces: the write path's bounds from
`core.schema`, and the configured limits on ``k``, histories, exclusions and feedback batches.
Integers are strict (no bool, no float), floats are finite.
"""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations, some of
# which are built from the configuration inside `api_models`.
import dataclasses
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from candidates import ORIGINS
from core.config import ServingConfig
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
from pipelines.serving.events import EVENT_KINDS

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


# "retrieval" and the item-to-item sources (`candidates.ORIGINS`).
Origin = Literal[ORIGINS]  # type: ignore[valid-type]


class Item(BaseModel):
    video_id: int
    score: float
    because: list[int] = Field(
        description="Watched videos this one comes from; the first is the one its evidence "
        "points at (the watch it follows in the source that brought it, or the watch the "
        "ranker attends to most times its similarity)."
    )
    source: Origin | None = Field(
        None,
        description="The list that brought it: the two-tower index (retrieval) or an "
        "item-to-item source (what is watched right after, what is watched nearby, the "
        "creator's next upload); absent for popular items.",
    )
    sources: list[Origin] = Field(
        default_factory=list, description="Every candidate list it was in."
    )


class RecommendResponse(BaseModel):
    items: list[Item]
    bundle_id: str
    source: Literal["personalized", "popular"]
    ignored_history: list[int]
    timings_ms: dict[str, float]
    history_source: Literal["request", "bundle_and_store", "bundle_only", "none"] = Field(
        description="Where the watches came from: the request's history; the bundle's "
        "history plus the user's live events from the event store; the bundle's history "
        "alone, because the event store could not be read in time (the answer misses the "
        "user's latest watches, and uploads or takedowns not yet applied here; counted in "
        "vidrec_store_fallbacks_total); or none (no user id, no history)."
    )
    attention: "Attention | None" = Field(
        None, description="With explain: the ranker's attention over the history."
    )


class Attention(BaseModel):
    history: list[int] = Field(description="Watched video ids the ranker read, oldest first.")
    weights: list[list[float]] = Field(
        description="[items][history]: each recommendation's attention over the history."
    )


RecommendResponse.model_rebuild()


class VideoInfo(BaseModel):
    video_id: int
    title: str = Field(description="Empty when the bundle keeps no title for it.")
    categories: list[str]
    known: bool = Field(description="In the bundle's catalogue or uploaded since.")
    servable: bool = Field(description="Indexed and not taken down.")


class VideoInfoResponse(BaseModel):
    videos: list[VideoInfo]
    bundle_id: str


class Watch(BaseModel):
    video_id: int
    timestamp: int
    engagement: float | None = Field(description="Watch fraction or rating / 5; None unknown.")


class HistoryResponse(BaseModel):
    user_id: int
    watches: list[Watch] = Field(description="The latest watches, oldest first.")
    total: int = Field(description="Every watch the user has.")
    history_source: Literal["bundle_and_store", "bundle_only"]
    bundle_id: str


class PublishRecord(BaseModel):
    time: str
    action: str
    bundle_id: str
    previous: str | None = None
    reason: str = ""


class BundleResponse(BaseModel):
    bundle_id: str
    created_at: str
    parent: str | None = None
    data: dict[str, Any]
    counts: dict[str, int]
    metrics: dict[str, Any]
    libraries: dict[str, str]
    serving_since: PublishRecord | None = Field(
        None, description="The publish event that made this bundle the serving one."
    )
    published: list[PublishRecord] = Field(description="The latest publish events, newest first.")
    reports: list[str] = Field(description="Files under GET /bundle/reports/{name}.")
    training: dict[str, Any] = Field(
        description="Per-epoch training history of each stage (reports/*_training.json)."
    )
    evaluation: dict[str, Any] | None = Field(
        None,
        description=(
            "The bundle's latest evaluation next to the baselines (`vidrec evaluate`, the "
            "demo); null until one is run."
        ),
    )


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


class StoreHealth(BaseModel):
    backend: Literal["sqlite", "postgresql"]
    location: str = Field(description="The store's path or URL (without a password).")
    state: Literal["ok", "unavailable"] = Field(
        description="unavailable: answers come from the bundle alone and writes answer 503 "
        "until the server reconnects by itself."
    )
    error: str | None = None
    unavailable_seconds: float | None = None


class ReadyResponse(BaseModel):
    status: Literal["ready", "degraded", "loading"]
    bundle_id: str | None = None
    last_refused: str | None = None
    error: str | None = None
    skipped_rows: int = Field(0, description="Stored rows skipped as unservable.")
    store_error: str | None = Field(None, description="Why the event store cannot be read.")
    store: StoreHealth | None = None
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
        explain: Annotated[bool, Field(strict=True)] = Field(
            False,
            description="Also return the ranker's attention over the history (attention).",
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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers an operation can give."""
    meaning = {
        400: "Refused (see error).",
        401: "No API key, or an unknown one, while keys are configured.",
        403: "The API key's scope does not cover this endpoint (an ingest key on an admin one).",
        404: "No such file.",
        413: "Body larger than serving.max_body_bytes.",
        415: "Body is not application/json.",
        422: "Malformed JSON, or a field missing, of the wrong type or out of range.",
        503: "No bundle loaded yet, or the event store is busy or unreachable (retry after "
        "Retry-After).",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location as the client wrote it: without ``body`` and the feedback form's tag."""
    if loc[:1] == ("body",):
        loc = loc[1:]
    if loc[:1] in ((BATCH_TAG,), (EVENT_TAG,)):
        loc = loc[1:]
    return loc


def validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in _field_path(tuple(item.get("loc", ()))))
        if item.get("type") == "json_invalid":
            return f"malformed JSON: {item.get('ctx', {}).get('error', item.get('msg'))}"
        parts.append(f"{location or 'body'}: {item.get('msg')}")
    return "; ".join(parts)
