"""The online recommender: user tower -> Faiss + item-to-item sources -> ranker -> blend ->
diversity (docs/design.md §3).

`Recommender` answers one request in-process in a few milliseconds: it reads the user's recent
watches (the bundle's history plus live events from the event store), embeds them with the user
tower at one request's fixed shapes (`retrieval.request`, LiteRT by default), fetches N
candidates from the index with watched, taken down and excluded videos removed, merges them with
what the item-to-item sources propose from the latest watches (`candidates`), scores them with
the ranker (one call for all N, each candidate with its evidence), blends the watch and
engagement heads, re-ranks for diversity and names, for each result, the list it came from and
the watched video that brought it.
`RecommenderService` owns the serving `Recommender` and swaps in a newly published bundle
without dropping a request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from candidates import EVIDENCE_FEATURES, ORIGINS, order_scores
from candidates.request import RequestCandidates, RequestSources, merge_one_list
from candidates.sources import TWO_STAGE
from core.bundle import BundleStore
from core.config import ServingConfig
from core.errors import BundleError, DataError, StoreError
from core.schema import MAX_ID, validate_upload, validate_videos
from core.vocab import FIRST_ID_ROW, OOV_ROW
from modeling.request_runtime import conversion_process
from pipelines.artifacts import LoadedBundle, load_bundle
from pipelines.serving.catalogue import LiveCatalogue
from pipelines.serving.events import (
    CHANGE_ROW,
    TAKEDOWN,
    UPSERT,
    VIDEO_ROW,
    CatalogueChange,
    EventStore,
)
from pipelines.serving.metadata import METADATA_FILE, VideoMetadata
from pipelines.serving.state import ServingState
from ranking.blend import blend_scores
from ranking.request import RequestScorer
from retrieval.request import RequestQuery

logger = logging.getLogger(__name__)

SERVING_DIR = "serving"
WARMUP_CALLS = 5
LIVE_EVENTS_LIMIT = 10_000


@dataclasses.dataclass
class Recommendation:
    """The answer to one request.

    Attributes:
        items: ``{"video_id", "score", "because", "source", "sources"}`` per recommended
            video, best first: ``because`` the watched videos it comes from (the first is the
            one its evidence points at), ``source`` the list that brought it (``retrieval`` or
            an item-to-item source, `candidates.ORIGINS`), ``sources`` every list it was in.
        bundle_id: Bundle that produced it.
        source: ``"personalized"`` or ``"popular"`` (cold start).
        ignored_history: Ids in a request's history that the catalogue does not know.
        timings_ms: Milliseconds per stage.
        history_source: Where the watches came from: ``"request"`` (the request's
            ``history``), ``"bundle_and_store"`` (the bundle's history plus the live events of
            the event store), ``"bundle_only"`` (the event store could not be read: the
            bundle's history alone, without the user's latest events) or ``"none"`` (no user
            id and no history).
        attention: With ``explain``: ``{"history": ids the ranker read (oldest first),
            "weights": [items][history]}``, the ranker's target attention.
    """

    items: list[dict[str, Any]]
    bundle_id: str
    source: str
    ignored_history: list[int]
    timings_ms: dict[str, float]
    history_source: str = "none"
    attention: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (shallow: the values are plain already)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


class _Timer:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.marks[stage] = round((now - self._last) * 1e3, 3)
        self._last = now


class Recommender:
    """One loaded bundle answering requests; thread-safe.

    Args:
        bundle: A verified, loaded bundle (with its ranker).
        state: The bundle's serving state.
        events: The live event store.
        config: Serving configuration.
    """

    def __init__(
        self,
        bundle: LoadedBundle,
        state: ServingState,
        events: EventStore,
        config: ServingConfig,
        metadata: VideoMetadata | None = None,
    ) -> None:
        if bundle.ranker is None:
            raise BundleError(f"bundle {bundle.bundle_id} was loaded without its ranker")
        self.bundle = bundle
        self.bundle_id = bundle.bundle_id
        self.state = state
        self.events = events
        self.config = config
        retrieval = bundle.retrieval
        self.features = retrieval.features
        self.catalogue = LiveCatalogue(
            retrieval.features, retrieval.catalogue_rows(), state.durations
        )
        self.index = bundle.index
        self.sources = bundle.sources
        self._request_sources = RequestSources(bundle.sources)
        # Titles and categories for people (the inspector); the models never read them.
        self.metadata = VideoMetadata() if metadata is None else metadata
        self.order = bundle.order
        self.ranker = bundle.ranker
        self.engagement_weight = bundle.config.ranking.engagement_weight
        self.history_length = self.features.config.history_length
        self.ranker_history = bundle.config.ranking.history_length
        # Fixed shapes (one user, `candidates` slots): each compiles once.
        encoders = retrieval.encoders
        # Only LiteRT converts, in a child process both models share; the other runtimes
        # must not pay a spawned interpreter at every load.
        converting = config.request_runtime == "litert"
        with conversion_process() if converting else contextlib.nullcontext() as converter:
            self._query = RequestQuery(
                encoders.query_fn,
                self.history_length,
                encoders.dim,
                len(self.features.user_attributes),
                config.request_runtime,
                encoders.keepalive,
                encoders.saved_model_dir,
                converter,
            )
            self._score = RequestScorer(
                self.ranker.score_fn,
                self.ranker_history,
                config.candidates,
                encoders.dim,
                self.features.config.max_categories,
                len(self.features.user_attributes),
                self.ranker.evidence_width,
                config.request_runtime,
                self.ranker.keepalive,
                self.ranker.saved_model_dir,
                converter,
            )
        self._embed = retrieval.encoders.embed_features
        self._taken_down: set[int] = set()
        self._catalogue_version = 0
        self.skipped_rows = 0  # stored rows this process could not apply (quarantined)
        # Told when an answer goes on without the event store ("history" or "catalogue_sync");
        # the HTTP app counts them (`RecommenderService.on_store_fallback`).
        self.on_store_fallback: Callable[[str], None] = _ignore_fallback
        # Re-entrant: a sync holds it while applying a run of changes.
        self._write_lock = threading.RLock()

    @classmethod
    def from_bundle(
        cls, bundle_dir: str | Path, events: EventStore, config: ServingConfig
    ) -> Recommender:
        """Loads and verifies a bundle, replays live catalogue changes and warms it up.

        Raises:
            BundleError: The bundle does not verify or cannot serve.
        """
        # A LiteRT server runs both models from the bundle's files: TensorFlow's copies stay
        # on disk until an upload needs the video tower.
        bundle = load_bundle(bundle_dir, deferred_models=config.request_runtime == "litert")
        serving_dir = Path(bundle_dir) / SERVING_DIR
        if not serving_dir.is_dir():
            raise BundleError(
                f"bundle {bundle.bundle_id} has no {SERVING_DIR}/ state; train it with a "
                "current `vidrec train`"
            )
        recommender = cls(
            bundle,
            ServingState.load(serving_dir),
            events,
            config,
            VideoMetadata.load(serving_dir / METADATA_FILE),
        )
        recommender.replay_catalogue_changes()
        recommender.warm_up()
        return recommender

    # -- live catalogue -------------------------------------------------------------------

    def replay_catalogue_changes(self) -> None:
        """Applies uploads and takedowns recorded in the event store to this bundle.

        A stored upload that cannot be applied (an older store, a bug) is quarantined and
        skipped: one row must never keep a server from starting.
        """
        # Read the log position first: a change committed while the tables are replayed is
        # applied again by the next sync, which is harmless (both kinds are idempotent).
        version = self.events.catalogue_version()
        uploads = []
        for video_id, metadata in self.events.upload_rows():
            try:
                uploads.append(validate_upload(metadata, f"stored upload of video {video_id}"))
            except DataError as error:
                self._quarantine(VIDEO_ROW, video_id, metadata, str(error))
        self._apply_isolated(VIDEO_ROW, [(row["video_id"], row) for row in uploads])
        taken_down = self.events.taken_down()
        if taken_down:
            self._apply_takedowns(np.asarray(sorted(taken_down), dtype=np.int64))
        self._catalogue_version = version
        logger.info(
            "bundle %s: replayed %d upload(s) and %d takedown(s)",
            self.bundle_id,
            len(uploads),
            len(taken_down),
        )

    def sync_catalogue(self, required: bool = False) -> bool:
        """Applies catalogue changes committed to the event store since the last sync.

        Runs before every answer, so an upload or takedown made through any server process
        (or the CLI) is in force for every process's next request. A change that cannot be
        applied is quarantined and skipped; the answer goes on without it.

        Args:
            required: Raise when the store cannot be read (a write that just committed must
                be in force when it is acknowledged). Otherwise the sync is skipped, counted
                (``on_store_fallback("catalogue_sync")``) and the answer goes on with the
                changes applied so far; the next sync catches up, in order.

        Returns:
            False when the sync was skipped because the store could not be read.

        Raises:
            StoreError: The store cannot be read and ``required`` is set.
        """
        try:
            if self.events.catalogue_version() <= self._catalogue_version:
                return True
            with self._write_lock:
                self._apply_changes(self.events.catalogue_changes_after(self._catalogue_version))
        except StoreError as error:
            if required:
                raise
            logger.debug("catalogue sync skipped: %s", error)
            self.on_store_fallback("catalogue_sync")
            return False
        return True

    def _apply_changes(self, changes: list[CatalogueChange]) -> None:
        """Applies changes read from the log, in commit order; the caller holds the lock."""
        # Consecutive changes of one kind are applied together, in commit order.
        for kind, group in itertools.groupby(changes, key=lambda change: change.change):
            run = list(group)
            if kind == UPSERT:
                self._apply_isolated(CHANGE_ROW, [(c.seq, c.metadata) for c in run])
            elif kind == TAKEDOWN:
                ids = [c.video_id for c in run if 0 <= c.video_id <= MAX_ID]
                self._apply_takedowns(np.asarray(ids, dtype=np.int64))
                for change in run:
                    if not 0 <= change.video_id <= MAX_ID:
                        self._quarantine(
                            CHANGE_ROW, change.seq, None, f"video_id {change.video_id}"
                        )
            else:
                for change in run:
                    self._quarantine(CHANGE_ROW, change.seq, None, f"unknown change {kind!r}")
            self._catalogue_version = run[-1].seq

    def _apply_isolated(self, source: str, rows: list[tuple[int, Any]]) -> None:
        """Applies uploads together, or one by one when that fails, quarantining each that
        fails alone (``rows``: ``(store key, metadata)``)."""
        if not rows:
            return
        try:
            self._apply_upserts(_videos_table([metadata for _, metadata in rows]))
            return
        except Exception as error:  # a row an older store or a bug let in; isolate it below
            if len(rows) == 1:
                self._quarantine(source, rows[0][0], rows[0][1], f"{type(error).__name__}: {error}")
                return
        for row in rows:
            self._apply_isolated(source, [row])

    def _quarantine(self, source: str, ref: int, payload: Any, reason: str) -> None:
        logger.error(
            "bundle %s: skipped stored %s %s that cannot be applied: %s; run `vidrec events check`",
            self.bundle_id,
            source,
            ref,
            reason,
        )
        self.skipped_rows += 1
        self.events.quarantine(source, ref, payload, reason)

    def upsert_videos(self, videos: Sequence[dict[str, Any]]) -> list[int]:
        """Adds or updates videos from their metadata; searchable when this returns.

        Every row is validated and embedded before anything is stored, so a video that could
        not be served never reaches the event store; then the change is committed there (every
        server process applies it from there) and applied here.

        Args:
            videos: Rows of the videos schema (``video_id`` and any of the other columns).

        Returns:
            The ids added or updated.

        Raises:
            DataError: A row out of bounds, or one that does not embed; nothing is stored.
        """
        rows = [validate_upload(video) for video in videos]
        self.catalogue.embed(_videos_table(rows), self._embed)
        for row in rows:
            self.events.upsert_video(row)
        self.sync_catalogue(required=True)
        return [row["video_id"] for row in rows]

    def take_down(self, video_ids: Sequence[int]) -> int:
        """Removes videos from every future answer; returns how many this index held.

        Raises:
            DataError: An id outside ``[0, 2**63 - 1]``; nothing is stored.
        """
        ids = np.asarray(video_ids, dtype=np.int64)
        held = int(self.index.contains(ids).sum())
        for video_id in ids:
            self.events.take_down(int(video_id))
        self.sync_catalogue(required=True)
        return held

    def _apply_upserts(self, table: pd.DataFrame) -> None:
        with self._write_lock:
            _, embeddings = self.catalogue.upsert(table, self._embed)
            ids = table["video_id"].to_numpy(np.int64)
            self.index.add(embeddings, ids)
            self.metadata.update(table)
            self._taken_down.difference_update(ids.tolist())

    def _apply_takedowns(self, ids: np.ndarray) -> None:
        with self._write_lock:
            self._taken_down.update(ids.tolist())
            self.index.remove(ids)

    # -- requests -------------------------------------------------------------------------

    def _watches(
        self, user_id: int | None, history: Sequence[int] | None, now: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """Every watch, oldest first: ``(ids [n] int64, timestamps [n] float64, engagement
        [n] float32 (NaN unknown), history source)`` (`Recommendation.history_source`)."""
        source = "none"
        if history is not None:
            source = "request"
            ids = np.asarray(history, dtype=np.int64)
            stamps = np.full(len(ids), now, dtype=np.float64)
            engagement = np.full(len(ids), np.nan, dtype=np.float32)
        else:
            ids, stamps, engagement = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.float32)
            if user_id is not None:
                base_ids, base_stamps, base_engagement = self.state.history(user_id)
                source = "bundle_and_store"
                try:
                    live = self.events.user_events(
                        user_id, self.state.events_until_id, LIVE_EVENTS_LIMIT
                    )
                except StoreError as error:
                    # Better an answer without the latest watches than none (docs/design.md §7).
                    logger.debug("history of user %s from the bundle alone: %s", user_id, error)
                    self.on_store_fallback("history")
                    live, source = [], "bundle_only"
                if not live:  # most requests: the bundle's arrays as they are
                    ids, stamps = base_ids, base_stamps.astype(np.float64)
                    engagement = base_engagement
                else:
                    live_ids, live_stamps, watched, ratings = (
                        np.asarray(column, dtype)
                        for column, dtype in zip(
                            zip(*live, strict=True),
                            (np.int64, np.float64, np.float64, np.float64),
                            strict=True,
                        )
                    )
                    ids = np.concatenate([base_ids, live_ids])
                    stamps = np.concatenate([base_stamps, live_stamps])
                    live_rows = self.catalogue.rows(live_ids)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        fraction = np.clip(watched / self.catalogue.durations(live_rows), 0, 1)
                    live_engagement = np.where(np.isfinite(fraction), fraction, ratings / 5.0)
                    engagement = np.concatenate([base_engagement, live_engagement]).astype(
                        np.float32
                    )
        return ids, stamps, engagement, source

    def _history(
        self, user_id: int | None, history: Sequence[int] | None, now: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int], str]:
        """Watches, oldest first: ``(recent rows, age_hours, engagement, every watched id,
        ignored ids, history source)``; the recent rows are the last ``history_length`` known
        videos, the source is `Recommendation.history_source`."""
        ids, stamps, engagement, source = self._watches(user_id, history, now)
        rows = self.catalogue.rows(ids)
        known = rows >= FIRST_ID_ROW
        ignored = ids[~known].tolist() if history is not None else []
        keep = np.flatnonzero(known)[-self.history_length :]
        ages = np.maximum(now - stamps[keep], 0.0) / 3600.0
        return rows[keep], ages.astype(np.float32), engagement[keep], ids, ignored, source

    def recommend(
        self,
        user_id: int | None = None,
        history: Sequence[int] | None = None,
        k: int | None = None,
        exclude: Sequence[int] = (),
        category: str | None = None,
        now: float | None = None,
        explain: bool = False,
    ) -> Recommendation:
        """Recommendations for a user, an anonymous history, or nobody (cold start).

        Args:
            user_id: Raw user id; its stored history is used unless ``history`` is given.
            history: Watched video ids, oldest first (overrides the stored history).
            k: How many videos; defaults to ``serving.default_k``.
            exclude: Video ids never to return.
            category: For cold start, restrict the popular list to this category.
            now: Request time in seconds (defaults to the clock; tests and replays pass it).
            explain: Also return the ranker's attention over the history for every item.

        Raises:
            DataError: ``k`` out of range or an oversized request.
        """
        config = self.config
        k = config.default_k if k is None else int(k)
        if not 1 <= k <= config.max_k:
            raise DataError(f"k must be between 1 and {config.max_k}, got {k}")
        if history is not None and len(history) > config.max_request_history:
            raise DataError(
                f"history has {len(history)} videos; at most {config.max_request_history} "
                "are accepted (send the most recent ones)"
            )
        if len(exclude) > config.max_exclude:
            raise DataError(f"exclude has {len(exclude)} ids; at most {config.max_exclude}")
        now = time.time() if now is None else float(now)
        timer = _Timer()
        self.sync_catalogue()
        rows, ages, engagement, watched_ids, ignored, source = self._history(user_id, history, now)
        timer.mark("history")
        excluded = np.unique(np.concatenate([watched_ids, np.asarray(exclude, dtype=np.int64)]))
        if len(rows) == 0:
            items = self._popular(k, excluded, category)
            timer.mark("popular")
            return Recommendation(
                items, self.bundle_id, "popular", ignored, timer.marks, history_source=source
            )

        length = self.history_length
        padded = np.zeros((1, length), dtype=np.int64)
        padded[0, length - len(rows) :] = rows
        user_row = self.features.user_rows(np.array([-1 if user_id is None else user_id]))
        user_attributes = self.features.user_attribute_matrix(user_row)
        embeddings = self.catalogue.embeddings
        query = self._query(np.take(embeddings, padded, axis=0), user_row, user_attributes)
        timer.mark("user_tower")
        _, ids = self.index.search(query, config.candidates, exclude=[excluded])
        index_rows = self.catalogue.rows(ids[0][ids[0] >= 0])
        timer.mark("index")
        # The catalogue is read again: an upload applied since the tower's read may be a
        # candidate now, with a row past the earlier views.
        embeddings = self.catalogue.embeddings
        merged, evidence = self._merge_sources(query, rows, index_rows, excluded, now, embeddings)
        candidate_rows = merged.rows
        timer.mark("sources")
        if len(candidate_rows) == 0:
            items = self._popular(k, excluded, category)
            return Recommendation(
                items, self.bundle_id, "popular", ignored, timer.marks, history_source=source
            )

        attention, history_rows = None, rows
        if self.order == TWO_STAGE:
            # The ranker pads both lists to its compiled shape itself (ranking.request).
            out = self._score(
                rows,
                engagement,
                ages,
                candidate_rows,
                evidence,
                user_attributes,
                self.catalogue.videos,
                embeddings,
            )
            attention, history_rows = out["attention"], out["history_rows"]
            timer.mark("ranker")
            ordered = blend_scores(out["watch_logits"], out["engagement"], self.engagement_weight)
        else:
            # The stage gate found one signal alone orders better than the ranker.
            ordered = order_scores(evidence, self.order)
        order = np.asarray(self._diversify(ordered, candidate_rows, k), dtype=np.int64)
        returned = np.take(candidate_rows, order)
        origins = np.take(merged.origins, order, axis=0)
        main = _main_sources(np.take(evidence, order, axis=0), origins)
        because = self._because(
            returned,
            main,
            None if attention is None else np.take(attention, order, axis=0),
            history_rows,
            embeddings,
        )
        # Plain Python values once, not a numpy scalar per item and field.
        flags = origins.tolist()
        items = [
            {
                "video_id": video_id,
                "score": score,
                "because": named,
                "source": ORIGINS[source],
                "sources": [origin for origin, on in zip(ORIGINS, on_lists, strict=True) if on],
            }
            for video_id, score, named, source, on_lists in zip(
                self.catalogue.ids(returned).tolist(),
                np.take(ordered, order).tolist(),
                because,
                np.argmax(main, axis=0).tolist(),
                flags,
                strict=True,
            )
        ]
        timer.mark("rerank")
        explained = None
        if explain and attention is not None:
            shown = history_rows >= FIRST_ID_ROW
            explained = {
                "history": self.catalogue.ids(history_rows[shown]).tolist(),
                # float64 before rounding: a rounded float32 prints as 0.08810000121593475.
                "weights": attention[order][:, shown].astype(np.float64).round(4).tolist(),
            }
        return Recommendation(
            items,
            self.bundle_id,
            "personalized",
            ignored,
            timer.marks,
            history_source=source,
            attention=explained,
        )

    def _merge_sources(
        self,
        query: np.ndarray,
        history_rows: np.ndarray,
        index_rows: np.ndarray,
        excluded: np.ndarray,
        now: float,
        embeddings: np.ndarray,
    ) -> tuple[RequestCandidates, np.ndarray]:
        """The index's candidates merged with the item-to-item sources', and their evidence.

        Args:
            query: ``[1, d] float32`` the user's query.
            history_rows: ``[h] int64`` the recent known watches, oldest first.
            index_rows: ``[n] int64`` the index's candidates, best first.
            excluded: ``[x] int64`` ids never to return (watched and excluded).
            now: The request time in seconds.
            embeddings: ``[rows, d] float32`` the live catalogue's embeddings.

        Returns:
            ``(merged candidates, evidence [k, E] float32)``.
        """
        sources = self._request_sources
        recent = sources.recent(history_rows)
        proposals = sources.propose(recent, np.sort(self.catalogue.rows(excluded)))
        if self._taken_down:
            blocked = np.fromiter(self._taken_down, dtype=np.int64, count=len(self._taken_down))
            for rows, _ in proposals.values():
                rows[np.isin(self.catalogue.ids(rows), blocked) & (rows >= FIRST_ID_ROW)] = 0
        merged = merge_one_list(
            index_rows,
            proposals,
            self.config.candidates,
            self.sources.config.source_slots(self.config.candidates),
        )
        scores = np.take(embeddings, merged.rows, axis=0) @ query[0]
        return merged, sources.evidence(recent, merged, scores, now)

    def _because(
        self,
        rows: np.ndarray,
        main: np.ndarray,
        attention: np.ndarray | None,
        history_rows: np.ndarray,
        embeddings: np.ndarray,
    ) -> list[list[int]]:
        """Per returned item, the watched ids it comes from, the strongest evidence first.

        An item an item-to-item source proposed names the watch it follows in that source
        (the transition, co-visit or creator edge it came through); any other names the watch
        with the largest attention weight times similarity (similarity alone without the
        ranker), so each item names its own reason instead of everyone's most recent watch.

        Args:
            rows: ``[k] int64`` the returned items' rows.
            main: ``[len(ORIGINS), k] bool`` the list that brought each (`_main_sources`).
            attention: ``[k, H]`` the ranker's attention over ``history_rows``, or None.
            history_rows: ``[H] int64`` the watches, oldest first (0 on padding).
            embeddings: ``[rows, d]`` the live catalogue's embeddings.
        """
        count = self.config.because
        if count == 0 or len(rows) == 0:
            return [[] for _ in range(len(rows))]
        # The watch each item follows in the source that brought it (the strongest
        # conditional probability, not the most recent watch): -1 for retrieval's items.
        recent = self._request_sources.recent(history_rows)  # newest first
        followed = np.full(len(rows), -1, dtype=np.int64)
        for name, source in zip(ORIGINS[1:], main[1:], strict=True):
            if name in self.sources.graphs and source.any():
                followed[source] = self._request_sources.followed_watches(
                    name, recent, rows[source]
                )
        shown = history_rows >= FIRST_ID_ROW
        similarity = np.maximum(
            np.take(embeddings, rows, axis=0) @ np.take(embeddings, history_rows, axis=0).T, 0.0
        )
        strength = similarity if attention is None else attention * similarity
        strength = np.where(shown[None, :], strength, -1.0)
        ranked = np.argsort(-strength, axis=1, kind="stable")[:, : count + 1]
        watched = np.take(history_rows, ranked).tolist()
        kept = (np.take_along_axis(strength, ranked, axis=1) >= 0).tolist()
        named = []
        for first, row_watched, row_kept in zip(followed.tolist(), watched, kept, strict=True):
            picks = [first] if first >= FIRST_ID_ROW else []
            picks += [
                w for w, ok in zip(row_watched, row_kept, strict=True) if ok and w not in picks
            ]
            named.append(picks[:count])
        ids = self.catalogue.ids(np.asarray([r for row in named for r in row], dtype=np.int64))
        out, start = [], 0
        ids = ids.tolist()
        for picks in named:
            out.append(ids[start : start + len(picks)])
            start += len(picks)
        return out

    def _diversify(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[int]:
        """Positions of the returned candidates, best first, under the diversity rule."""
        order = np.argsort(-scores, kind="stable")
        mode = self.config.diversity
        if mode == "none" or len(order) <= 1:
            return order[:k].tolist()
        if mode == "category_cap":
            categories = self.catalogue.primary_categories(rows).tolist()
            taken: dict[int, int] = {}
            chosen, overflow = [], []
            for position in order.tolist():
                category = categories[position]
                if category and taken.get(category, 0) >= self.config.category_cap:
                    overflow.append(position)
                    continue
                taken[category] = taken.get(category, 0) + 1
                chosen.append(position)
                if len(chosen) == k:
                    return chosen
            return (chosen + overflow)[:k]
        # Maximal marginal relevance on the retrieval embeddings.
        vectors = self.catalogue.embeddings[rows]
        relevance = (scores - scores.max()) / max(float(np.ptp(scores)), 1e-9)
        chosen = [int(order[0])]
        best_similarity = vectors @ vectors[chosen[0]]
        available = np.ones(len(scores), dtype=bool)
        available[chosen[0]] = False
        lam = self.config.mmr_lambda
        while len(chosen) < min(k, len(scores)):
            value = lam * relevance - (1.0 - lam) * best_similarity
            value[~available] = -np.inf
            pick = int(np.argmax(value))
            chosen.append(pick)
            available[pick] = False
            best_similarity = np.maximum(best_similarity, vectors @ vectors[pick])
        return chosen

    def _popular(self, k: int, excluded: np.ndarray, category: str | None) -> list[dict[str, Any]]:
        """Recent popularity (of a category when asked), minus excluded and taken-down videos."""
        candidates = self.state.popular(category)
        if category is not None and len(candidates) == 0:
            raise DataError(
                f"unknown category {category!r}; known: {', '.join(self.state.category_names)}"
            )
        blocked = np.isin(candidates, excluded) | np.isin(candidates, list(self._taken_down))
        picked = candidates[~blocked][:k]
        counts = dict(
            zip(
                self.state.popular_video_ids.tolist(),
                self.state.popular_counts.tolist(),
                strict=True,
            )
        )
        return [
            {"video_id": int(v), "score": float(counts.get(int(v), 0)), "because": []}
            for v in picked
        ]

    def similar(self, video_id: int, k: int | None = None) -> list[dict[str, Any]]:
        """Videos nearest to one video in the embedding space (video-to-video).

        Raises:
            DataError: Unknown or taken-down video, or ``k`` out of range.
        """
        k = self.config.default_k if k is None else int(k)
        if not 1 <= k <= self.config.max_k:
            raise DataError(f"k must be between 1 and {self.config.max_k}, got {k}")
        self.sync_catalogue()
        row = int(self.catalogue.rows(np.array([video_id]))[0])
        if row == OOV_ROW or int(video_id) in self._taken_down:
            raise DataError(f"unknown video_id {video_id}")
        query = self.catalogue.embeddings[row][None]
        scores, ids = self.index.search(query, k, exclude=[np.array([video_id])])
        found = ids[0] >= 0
        return [
            {"video_id": int(v), "score": float(s)}
            for v, s in zip(ids[0][found], scores[0][found], strict=True)
        ]

    def user_history(self, user_id: int, limit: int) -> dict[str, Any]:
        """A user's latest ``limit`` watches, oldest first, as a recommendation reads them:
        ``{"user_id", "watches": [{"video_id", "timestamp", "engagement"}], "total",
        "history_source"}`` (engagement None when unknown)."""
        ids, stamps, engagement, source = self._watches(user_id, None, time.time())
        start = max(0, len(ids) - limit)
        watches = [
            {
                "video_id": int(video_id),
                "timestamp": int(stamp),
                "engagement": None if np.isnan(value) else round(float(value), 4),
            }
            for video_id, stamp, value in zip(
                ids[start:], stamps[start:], engagement[start:], strict=True
            )
        ]
        return {
            "user_id": int(user_id),
            "watches": watches,
            "total": len(ids),
            "history_source": source,
        }

    def describe_videos(self, video_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Title, categories and status of videos, in the order asked: ``known`` (in the
        bundle's catalogue or uploaded) and ``servable`` (indexed and not taken down)."""
        self.sync_catalogue()
        ids = np.asarray(video_ids, dtype=np.int64)
        rows = self.catalogue.rows(ids)
        indexed = self.index.contains(ids) if len(ids) else np.zeros(0, dtype=bool)
        described = []
        for video_id, row, held in zip(ids.tolist(), rows.tolist(), indexed.tolist(), strict=True):
            item = self.metadata.describe(video_id)
            item["known"] = item["known"] or row != OOV_ROW
            item["servable"] = bool(held) and video_id not in self._taken_down
            described.append(item)
        return described

    def search_titles(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Videos of the live catalogue whose title holds every word of ``query``."""
        self.sync_catalogue()
        found = self.metadata.search(query, limit, hidden=self._taken_down)
        return self.describe_videos([item["video_id"] for item in found])

    def warm_up(self) -> None:
        """Traces the request path once so the first real request is not slow."""
        user_ids = self.state.history_user_ids
        for i in range(min(WARMUP_CALLS, len(user_ids))):
            self.recommend(user_id=int(user_ids[i]), now=self.state.data_until)
        self.recommend(user_id=None)


_SOURCE_SCORES = [EVIDENCE_FEATURES.index(f"{name}_score") for name in ORIGINS[1:]]


def _main_sources(evidence: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """The list that brought each candidate, one-hot ``[len(ORIGINS), k] bool``: the
    item-to-item source with the strongest evidence among those that proposed it, else
    retrieval (``evidence [k, E]``, ``origins [k, len(ORIGINS)] bool``)."""
    strength = np.where(origins[:, 1:], evidence[:, _SOURCE_SCORES], 0.0)
    best = np.where(strength.max(axis=1, initial=0.0) > 0, 1 + np.argmax(strength, axis=1), 0)
    return best[None, :] == np.arange(len(ORIGINS))[:, None]


def _ignore_fallback(what: str) -> None:
    """The default `Recommender.on_store_fallback`: nobody counts."""


def _videos_table(rows: Sequence[Any]) -> pd.DataFrame:
    """Validated upload rows (`validate_upload`) as a videos-schema table.

    Raises:
        DataError: A row that is not a valid upload (a stored row from an older store).
    """
    checked = [validate_upload(row) for row in rows]
    return validate_videos(pd.DataFrame(checked), "uploaded videos")


class RecommenderService:
    """The serving `Recommender` plus safe hot swaps to newly published bundles.

    A swap loads the new bundle aside, verifies it, replays live catalogue changes, warms it
    up and only then replaces the reference; requests already running finish on the old one.
    A bundle that fails any step is refused and the current one keeps serving. `poll` does not
    try a refused bundle again until ``CURRENT`` names another one or the refused bundle's
    manifest changes; `reload` (``POST /admin/reload``) always tries. A bundle that cannot load
    because the event store is unreachable is not refused: the next poll tries it again.

    Args:
        artifacts: Bundle store root (``CURRENT`` names the bundle to serve).
        events: Live event store.
        config: Serving configuration.
    """

    def __init__(self, artifacts: str | Path, events: EventStore, config: ServingConfig) -> None:
        self.store = BundleStore(artifacts)
        self.events = events
        self.config = config
        self._current: Recommender | None = None
        self._swap_lock = threading.Lock()
        self.last_error: str | None = None
        self.swaps = 0
        # The bundle refused last and the stamp of its manifest then (see `poll`).
        self._refused: tuple[str, tuple[int, int, int] | None] | None = None
        self._unreadable_current: str | None = None
        self._closing = False
        # Told when an answer goes on without the event store ("history", "catalogue_sync");
        # the HTTP app sets it to count them in /metrics.
        self.on_store_fallback: Callable[[str], None] = _ignore_fallback

    @property
    def current(self) -> Recommender:
        """The serving recommender.

        Raises:
            BundleError: Nothing is loaded yet.
        """
        current = self._current
        if current is None:
            raise BundleError("no bundle is loaded yet")
        return current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def reload(self, bundle_id: str | None = None) -> str:
        """Serves ``bundle_id`` (default: ``CURRENT``) if it loads and verifies.

        Returns:
            The serving bundle id afterwards.

        Raises:
            BundleError: The bundle was refused; the previous one keeps serving.
        """
        with self._swap_lock:
            target = bundle_id or self.store.current_id()
            if target is None:
                raise BundleError(f"no published bundle under {self.store.root}")
            return self._swap(target)

    def poll(self) -> None:
        """Reloads if ``CURRENT`` names a bundle other than the serving one.

        A refused bundle is logged once and kept in ``last_error``; it is tried again only
        when ``CURRENT`` names another bundle or its manifest changes (a swap costs a full load
        with a model conversion, and a bundle refused for what it holds would fail the same way
        every poll).
        """
        if self._closing:
            return
        try:
            target = self.store.current_id()
        except BundleError as error:
            if str(error) != self._unreadable_current:
                logger.error("%s; the serving bundle is kept", error)
                self._unreadable_current = self.last_error = str(error)
            return
        self._unreadable_current = None
        if target is None or (self._current is not None and self._current.bundle_id == target):
            self._refused = None
            return
        with self._swap_lock:
            if self._refused == (target, self.store.manifest_stamp(target)):
                return
            # Logged and kept in last_error by _swap; the current bundle keeps serving.
            with contextlib.suppress(BundleError, StoreError):
                self._swap(target)

    def close(self) -> None:
        """Stops swapping: the server is shutting down. A bundle still loading is abandoned
        (its conversion process killed) instead of being waited for."""
        self._closing = True
        # Imported here: only a shutting-down server needs it.
        from modeling.child_process import close_all

        abandoned = close_all()
        if abandoned:
            logger.info("shutting down: stopped %d model conversion process(es)", abandoned)

    def _store_fallback(self, what: str) -> None:
        self.on_store_fallback(what)

    def _swap(self, target: str) -> str:
        """Loads ``target`` aside and swaps it in; the caller holds the swap lock."""
        if self._current is not None and self._current.bundle_id == target:
            return target
        stamp = self.store.manifest_stamp(target)
        started = time.perf_counter()
        try:
            candidate = Recommender.from_bundle(self.store.path(target), self.events, self.config)
        except StoreError as error:
            # Not the bundle's fault: it is tried again at the next poll.
            self.last_error = f"bundle {target} not loaded yet: {error}"
            logger.error("%s", self.last_error)
            raise
        except BundleError as error:
            if self._closing:
                logger.info("shutting down: stopped loading bundle %s", target)
                raise
            self.last_error = str(error)
            self._refused = (target, stamp)
            logger.error("refused bundle %s: %s", target, error)
            raise
        previous = self._current.bundle_id if self._current else None
        candidate.on_store_fallback = self._store_fallback
        self._current = candidate
        self.swaps += 1
        self.last_error = None
        self._refused = None
        logger.info(
            "serving bundle %s (was %s), loaded in %.1f s",
            target,
            previous,
            time.perf_counter() - started,
        )
        return target
