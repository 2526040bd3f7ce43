"""The recommendation inspector: read-only endpoints and the page at ``/ui`` that calls them.

The page is static HTML, CSS and plain JavaScript shipped in the package (``ui/``); it calls
only the public read endpoints (``/recommend`` with ``explain``, ``/similar``, ``/videos``,
``/videos/search``, ``/users/{id}/history``, ``/bundle``), so it never needs a key. Every page
answer carries a Content-Security-Policy that allows nothing but this server: the page fetches
nothing from the internet and runs no inline script.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.
import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import Field

from core.bundle import read_manifest
from core.config import ServingConfig
from core.errors import BundleError, DataError
from core.schema import MAX_ID
from pipelines.serve import RecommenderService
from pipelines.serving.api_models import (
    BundleResponse,
    HistoryResponse,
    VideoInfoResponse,
    error_responses,
)

logger = logging.getLogger(__name__)

REPORTS_DIR = "reports"
MAX_DESCRIBED = 500  # ids per GET /videos: a page shows a history and its recommendations
MAX_QUERY_CHARS = 200
MAX_HISTORY_SHOWN = 500
PUBLISH_EVENTS_SHOWN = 10
# A file name without a directory part: nothing can climb out of the directory it is read in.
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
REPORT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
UI_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def ui_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files, ``{name: (content, media type)}``, read once from the package."""
    assets = {}
    for entry in resources.files("pipelines.serving").joinpath("ui").iterdir():
        media = UI_TYPES.get(Path(entry.name).suffix)
        if media is not None and entry.is_file():
            assets[entry.name] = (entry.read_bytes(), media)
    return assets


def _static_responses(
    types: dict[str, str], description: str, *errors: int
) -> dict[int | str, Any]:
    content = {media.split(";")[0]: {"schema": {}} for media in types.values()}
    return {200: {"description": description, "content": content}, **error_responses(*errors)}


def bundle_summary(service: RecommenderService) -> dict[str, Any]:
    """The serving bundle for the inspector's bundle page (`BundleResponse`)."""
    current = service.current
    store = service.store
    directory = store.path(current.bundle_id)
    manifest = read_manifest(directory)
    events = [e.as_dict() for e in store.history()]
    mine = [e for e in events if e["bundle_id"] == current.bundle_id]
    training = {}
    for path in sorted((directory / REPORTS_DIR).glob("*_training.json")):
        try:
            training[path.name.removesuffix("_training.json")] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise BundleError(f"cannot read {path}: {error}") from error
    evaluation = _evaluation(store.evaluation_path(current.bundle_id))
    return {
        "bundle_id": manifest.bundle_id,
        "created_at": manifest.created_at,
        "parent": manifest.parent,
        "data": manifest.data,
        "counts": manifest.counts,
        "metrics": manifest.metrics,
        "libraries": manifest.libraries,
        "serving_since": mine[-1] if mine else None,
        "published": events[::-1][:PUBLISH_EVENTS_SHOWN],
        "reports": sorted(report_files(directory)),
        "training": training,
        "evaluation": evaluation,
    }


def _evaluation(path: Path) -> dict[str, Any] | None:
    """The evaluation report at ``path`` (`pipelines.jobs.evaluate.EvaluationResult.as_dict`),
    or None when there is none or it is not one: a report beside the bundle, not part of it,
    so the page shows the rest without it."""
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        logger.warning("cannot read the evaluation %s: %s", path, error)
        return None
    if not (
        isinstance(report, dict)
        and isinstance(report.get("columns"), list)
        and isinstance(report.get("rows"), dict)
    ):
        logger.warning("%s is not an evaluation report (no columns and rows); ignored", path)
        return None
    return report


def report_files(bundle_dir: Path) -> dict[str, Path]:
    """Files directly in a bundle's ``reports/`` that the inspector may serve, by name."""
    directory = bundle_dir / REPORTS_DIR
    if not directory.is_dir():
        return {}
    return {
        path.name: path
        for path in directory.iterdir()
        if path.is_file()
        and not path.is_symlink()
        and path.suffix in REPORT_TYPES
        and re.match(FILE_NAME, path.name)
    }


def add_inspector_routes(app: FastAPI, service: RecommenderService, config: ServingConfig) -> None:
    """Adds the inspector's read endpoints and its page to ``app``."""
    assets = ui_assets()
    if "index.html" not in assets:
        raise BundleError("the inspector's page is missing from the package (pipelines/serving/ui)")

    @app.get(
        "/videos",
        response_model=VideoInfoResponse,
        responses=error_responses(400, 422, 503),
    )
    def describe_videos(
        video_id: Annotated[
            list[Annotated[int, Field(ge=0, le=MAX_ID)]],
            Query(
                alias="id",
                min_length=1,
                max_length=MAX_DESCRIBED,
                description=f"Video ids (repeat the parameter, at most {MAX_DESCRIBED}).",
            ),
        ],
    ) -> dict[str, Any]:
        """Titles, categories and status of videos, in the order asked."""
        current = service.current
        return {"videos": current.describe_videos(video_id), "bundle_id": current.bundle_id}

    @app.get(
        "/videos/search",
        response_model=VideoInfoResponse,
        responses=error_responses(400, 422, 503),
    )
    def search_videos(
        q: str = Query(
            ...,
            min_length=1,
            max_length=MAX_QUERY_CHARS,
            description="Words that must all appear in the title (case-insensitive).",
        ),
        k: int | None = Query(None, ge=1, le=config.max_k, description="How many videos"),
    ) -> dict[str, Any]:
        """Videos of the live catalogue whose title holds every word of ``q``, by id."""
        if not q.split():
            raise DataError("q is blank: send at least one word of a title")
        current = service.current
        found = current.search_titles(q, config.default_k if k is None else k)
        return {"videos": found, "bundle_id": current.bundle_id}

    @app.get(
        "/users/{user_id}/history",
        response_model=HistoryResponse,
        responses=error_responses(400, 422, 503),
    )
    def user_history(
        user_id: int = PathParam(..., ge=0, le=MAX_ID, description="Raw user id"),
        limit: int = Query(
            50, ge=1, le=MAX_HISTORY_SHOWN, description="How many of the latest watches"
        ),
    ) -> dict[str, Any]:
        """A user's latest watches as a recommendation reads them (bundle and live events)."""
        current = service.current
        return {**current.user_history(user_id, limit), "bundle_id": current.bundle_id}

    @app.get("/bundle", response_model=BundleResponse, responses=error_responses(503))
    def bundle() -> dict[str, Any]:
        """The serving bundle: its data, metrics, training history, reports and when it was
        published."""
        return bundle_summary(service)

    @app.get(
        "/bundle/reports/{name}",
        response_class=Response,
        responses=_static_responses(REPORT_TYPES, "A report of the serving bundle.", 404, 422, 503),
    )
    def bundle_report(
        name: str = PathParam(..., pattern=FILE_NAME, description="A name from GET /bundle"),
    ) -> Response:
        """A file of the serving bundle's ``reports/`` (training curves, JSON reports)."""
        files = report_files(service.store.path(service.current.bundle_id))
        if name not in files:
            return _not_found(f"no report {name!r} in the serving bundle; GET /bundle lists them")
        return FileResponse(files[name], media_type=REPORT_TYPES[files[name].suffix])

    @app.get("/ui", response_class=Response, responses=_static_responses(UI_TYPES, "The page."))
    def page() -> Response:
        """The recommendation inspector (read-only)."""
        return _asset(assets, "index.html")

    @app.get(
        "/ui/{name}",
        response_class=Response,
        responses=_static_responses(UI_TYPES, "A file of the page.", 404, 422),
    )
    def page_file(name: str = PathParam(..., pattern=FILE_NAME)) -> Response:
        """The inspector's scripts and styles."""
        return _asset(assets, name)


def _asset(assets: dict[str, tuple[bytes, str]], name: str) -> Response:
    if name not in assets:
        return _not_found(f"no file {name!r} in the inspector; open /ui")
    content, media = assets[name]
    return Response(content, media_type=media, headers=UI_HEADERS)


def _not_found(message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=404, media_type="application/json")
