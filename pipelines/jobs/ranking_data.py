"""Candidate lists for the ranker, made by the candidate stage itself.

Training: for every (history strictly before t, watch at t) pair, the watched video plus hard
negatives drawn from the merged candidates for that history (retrieval's top-N and the
item-to-item sources', what the ranker will have to order at serving) plus a few random
videos. Evaluation: the merged candidates of each case, watched videos removed, for the ranker
to reorder. Every candidate carries its evidence (`candidates.sources.EVIDENCE_FEATURES`),
computed by the same functions the request path calls. The stages meet only here, as numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from candidates import (
    EVIDENCE_FEATURES,
    EVIDENCE_WIDTH,
    SERVING_ORDERS,
    CandidateSources,
    merge_candidates,
    order_scores,
)
from candidates.sources import TWO_STAGE
from core.config import RankingConfig
from core.features import FeatureSpace
from core.progress import Progress
from core.sequences import next_watch_examples
from core.splits import EvalCases
from core.vocab import FIRST_ID_ROW
from ranking.blend import blend_scores
from ranking.encoders import RankerScorer
from ranking.inputs import UNKNOWN_ENGAGEMENT, CandidateLists
from retrieval.encoders import RetrievalEncoders

logger = logging.getLogger(__name__)

QUERY_BATCH = 2_048
SCORE_BLOCK = 1 << 25  # scores held at once by exact search (128 MiB of float32)
CANDIDATE_OFFSET = 1e4


def query_embeddings(
    encoders: RetrievalEncoders,
    catalogue: np.ndarray,
    history_rows: np.ndarray,
    user_rows: np.ndarray,
) -> np.ndarray:
    """User-tower queries for padded history rows ``[n, L]``, ``[n, d] float32``."""
    features = encoders.features
    out = np.empty((len(history_rows), encoders.dim), dtype=np.float32)
    for start in range(0, len(history_rows), QUERY_BATCH):
        stop = start + QUERY_BATCH
        rows = user_rows[start:stop]
        out[start:stop] = encoders.query_fn(
            catalogue[history_rows[start:stop]], rows, features.user_attribute_matrix(rows)
        ).numpy()
    return out


def top_candidates(
    queries: np.ndarray,
    catalogue: np.ndarray,
    k: int,
    excluded_rows: Sequence[np.ndarray] | np.ndarray,
    with_full: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Exact top-``k`` videos per query with each query's excluded rows removed.

    Queries are scored in blocks of at most `SCORE_BLOCK` scores, so memory stays bounded
    whatever the catalogue size (unless ``with_full`` asks for every score).

    Args:
        queries: ``[n, d] float32``.
        catalogue: ``[num_rows, d] float32`` embeddings by row (rows 0, 1 are not videos).
        k: Candidates per query.
        excluded_rows: Per query, rows never to return (watched videos; 0 is ignored).
        with_full: Also return every score (``[n, num_rows - 2]``; -inf at excluded columns).

    Returns:
        ``(rows [n, k] int64, scores [n, k] float32, full scores or None)``, best first.
    """
    videos = catalogue[FIRST_ID_ROW:]
    k = min(k, len(videos))
    n = len(queries)
    rows_out = np.zeros((n, k), dtype=np.int64)
    scores_out = np.zeros((n, k), dtype=np.float32)
    full = np.empty((n, len(videos)), dtype=np.float32) if with_full else None
    block = max(1, SCORE_BLOCK // max(len(videos), 1))
    for start in range(0, n, block):
        stop = min(start + block, n)
        scores = queries[start:stop] @ videos.T
        for i in range(start, stop):
            columns = np.asarray(excluded_rows[i], dtype=np.int64) - FIRST_ID_ROW
            scores[i - start, columns[columns >= 0]] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        rows_out[start:stop] = np.take_along_axis(top, order, axis=1) + FIRST_ID_ROW
        scores_out[start:stop] = np.take_along_axis(top_scores, order, axis=1)
        if full is not None:
            full[start:stop] = scores
    return rows_out, scores_out, full


Retriever = Callable[[np.ndarray, int, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(queries [n, d], k, excluded rows [n, L]) -> (rows [n, k], scores [n, k])``; rows of
unfilled slots are 0."""


def exact_retriever(catalogue: np.ndarray) -> Retriever:
    """Exact inner-product search over ``catalogue`` (embeddings by row)."""

    def retrieve(queries: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, ...]:
        rows, scores, _ = top_candidates(queries, catalogue, k, excluded)
        return rows, scores

    return retrieve


def training_lists(
    interactions: pd.DataFrame,
    engagement: np.ndarray,
    features: FeatureSpace,
    encoders: RetrievalEncoders,
    catalogue: np.ndarray,
    config: RankingConfig,
    sources: CandidateSources,
    retrieve: Retriever | None = None,
    progress: bool = False,
) -> CandidateLists:
    """One list per training event: the watched video, hard negatives from the merged
    candidates, randoms.

    Args:
        interactions: Validated training interactions.
        engagement: ``[len(interactions)] float32`` per event (NaN unknown).
        features: Feature space.
        encoders: Trained retrieval towers.
        catalogue: ``[num_rows, d]`` retrieval embeddings by row.
        config: List sizes, sampling and the example budget.
        sources: The item-to-item sources, counted from these same interactions.
        retrieve: Where retrieval's candidates come from: the serving index (what the ranker
            will see) or, by default, exact search over ``catalogue``.
        progress: Report the candidate retrieval's examples, rate and time left.

    Returns:
        Lists with the watched video in column 0.
    """
    rng = np.random.default_rng(config.seed)
    retrieve = retrieve or exact_retriever(catalogue)
    examples = next_watch_examples(
        interactions,
        features.config.history_length,
        max_examples=config.max_examples,
        per_user=config.examples_per_user or None,
    )
    event_rows = features.video_vocab.lookup(interactions["video_id"].to_numpy(np.int64))
    stamps = interactions["timestamp"].to_numpy(np.int64)
    history_rows = examples.gather(event_rows, 0)
    target_rows = event_rows[examples.target_events]
    user_rows = features.user_rows(
        interactions["user_id"].to_numpy(np.int64)[examples.target_events]
    )
    logger.info("ranking: candidates for %d training examples", len(examples))
    queries = query_embeddings(encoders, catalogue, history_rows, user_rows)
    n = len(examples)
    width = 1 + config.hard_negatives + config.random_negatives
    candidates = np.zeros((n, width), dtype=np.int64)
    valid = np.ones((n, width), dtype=bool)
    evidence = np.zeros((n, width, EVIDENCE_WIDTH), dtype=np.float32)
    candidates[:, 0] = target_rows
    candidates[:, 1 + config.hard_negatives :] = rng.integers(
        FIRST_ID_ROW, features.video_vocab.num_rows, size=(n, config.random_negatives)
    )
    moments = stamps[examples.target_events].astype(np.float64)
    slots = sources.config.source_slots(config.candidates)
    per_source = sources.config.per_source
    users = interactions["user_id"].to_numpy(np.int64)
    reach = sources.config.covisit_window
    report = Progress("ranker candidates", n, unit="example", enabled=progress)
    for start in range(0, n, QUERY_BATCH):
        stop = min(start + QUERY_BATCH, n)
        targets = target_rows[start:stop, None]
        history = history_rows[start:stop]
        upcoming = _upcoming(event_rows, users, examples.target_events[start:stop], reach)
        index_rows, _ = retrieve(queries[start:stop], config.candidates, history)
        recent = sources.recent(history)
        # More than a request gets: the user's upcoming videos may be among them (their own
        # pairs were counted), and a source's bar is its n-th best other video.
        extended = sources.propose(recent, history, per_source + upcoming.shape[1])
        proposals = {
            name: (rows[:, :per_source], scores[:, :per_source])
            for name, (rows, scores) in extended.items()
        }
        merged = merge_candidates(index_rows, proposals, config.candidates, slots)
        # The user's next few watches are not negatives: they are what the user wants soon,
        # and the sources' own counts (inflated by this very sequence) would offer them as
        # hard negatives far more often than a request would.
        soon = upcoming[:, 1:]
        if config.hard_negatives:
            pool = merged.rows
            keys = rng.random(pool.shape)
            upcoming_soon = (pool[:, :, None] == soon[:, None, :]).any(axis=2)
            keys[(pool == targets) | (pool < FIRST_ID_ROW) | upcoming_soon] = np.inf
            pick = np.argpartition(keys, config.hard_negatives - 1, axis=1)
            candidates[start:stop, 1 : 1 + config.hard_negatives] = np.take_along_axis(
                pool, pick[:, : config.hard_negatives], axis=1
            )
        chunk = candidates[start:stop]
        negatives = chunk[:, 1:]
        watched = (negatives[:, :, None] == history[:, None, :]).any(axis=2)
        watched |= (negatives[:, :, None] == soon[:, None, :]).any(axis=2)
        valid[start:stop, 1:] = (negatives >= FIRST_ID_ROW) & (negatives != targets) & ~watched
        origins, retrieval_rank = merged.describe(chunk)
        scores = np.einsum("nd,nkd->nk", queries[start:stop], catalogue[chunk])
        part = sources.evidence(
            recent,
            chunk,
            scores.astype(np.float32),
            retrieval_rank,
            origins,
            moments[start:stop],
            upcoming=upcoming,
        )
        _flag_as_requested(part, upcoming, extended, per_source)
        evidence[start:stop] = part
        report.update(stop - start)
    report.close()
    # The ranker reads the most recent `config.history_length` of the retrieval history.
    recent_slice = slice(-config.history_length, None)
    history_engagement = examples.gather(engagement.astype(np.float32), np.nan)[:, recent_slice]
    ages = (stamps[examples.target_events][:, None] - examples.gather(stamps, 0)) / 3600.0
    ages = np.where(examples.history_events >= 0, ages, 0.0)[:, recent_slice]
    return CandidateLists(
        history_rows=history_rows[:, recent_slice],
        history_engagement=np.nan_to_num(history_engagement, nan=UNKNOWN_ENGAGEMENT),
        history_age_hours=ages.astype(np.float32),
        candidate_rows=candidates,
        candidate_valid=valid,
        evidence=evidence,
        user_attributes=features.user_attribute_matrix(user_rows),
        target=np.zeros(n, dtype=np.int64),
        engagement=engagement[examples.target_events].astype(np.float32),
    )


def _flag_as_requested(
    evidence: np.ndarray,
    upcoming: np.ndarray,
    proposals: dict[str, tuple[np.ndarray, np.ndarray]],
    per_source: int,
) -> None:
    """Sets each training candidate's source flags as a request would have (in place on
    ``evidence [b, k, E]``): proposed when its score without the user's own upcoming pairs
    reaches the ``per_source``-th best score among the source's other videos.

    ``upcoming [b, u]``: the rows the user watches from the ranking moment on; their own
    pairs inflated their place in ``proposals`` (which hold ``per_source + u`` per list), so
    they do not set the bar.
    """
    for name, (rows, scores) in proposals.items():
        own = (rows[:, :, None] == upcoming[:, None, :]).any(axis=2) | (rows < FIRST_ID_ROW)
        others = np.sort(np.where(own, -1.0, scores), axis=1)[:, ::-1]
        threshold = np.maximum(others[:, per_source - 1], 0.0)[:, None]
        score = evidence[:, :, EVIDENCE_FEATURES.index(f"{name}_score")]
        flag = EVIDENCE_FEATURES.index(f"from_{name}")
        evidence[:, :, flag] = (score > 0) & (score >= threshold)


def _upcoming(
    event_rows: np.ndarray, users: np.ndarray, target_events: np.ndarray, length: int
) -> np.ndarray:
    """``[b, length] int64``: each example's watched video and the same user's next ones
    (0 past the user's last event); events sorted by user, then time."""
    positions = target_events[:, None] + np.arange(length)[None, :]
    inside = positions < len(event_rows)
    positions = np.where(inside, positions, 0)
    same = inside & (users[positions] == users[target_events][:, None])
    return np.where(same, event_rows[positions], 0)


def case_lists(
    cases: EvalCases,
    features: FeatureSpace,
    encoders: RetrievalEncoders,
    catalogue: np.ndarray,
    num_candidates: int,
    ranker_history: int,
    sources: CandidateSources,
    with_full: bool = False,
) -> tuple[CandidateLists, np.ndarray | None]:
    """The merged candidates for each case, watched videos removed, ready for the ranker.

    The ranking moment of a case is its first target's timestamp.

    Returns:
        ``(lists, full retrieval scores [u, num_videos] with -inf at watched videos, or None
        unless ``with_full``)``; ``lists.target`` is the column of the case's first target
        (-1 if no candidate list had it).
    """
    histories = [cases.history(i) for i in range(len(cases))]
    history_rows, _ = features.history_matrix(histories)
    user_rows = features.user_rows(cases.user_ids)
    queries = query_embeddings(encoders, catalogue, history_rows, user_rows)
    watched = [features.video_vocab.lookup(h) for h in histories]
    index_rows, _, full = top_candidates(
        queries, catalogue, num_candidates, watched, with_full=with_full
    )
    recent = sources.recent(history_rows)
    width = max((len(w) for w in watched), default=0)
    excluded = np.zeros((len(cases), max(width, 1)), dtype=np.int64)
    for i, rows in enumerate(watched):
        excluded[i, : len(rows)] = np.where(rows >= FIRST_ID_ROW, rows, 0)
    proposals = sources.propose(recent, excluded)
    merged = merge_candidates(
        index_rows, proposals, num_candidates, sources.config.source_slots(num_candidates)
    )
    rows = merged.rows
    first_target = features.video_vocab.lookup(cases.target_video_ids[cases.target_indptr[:-1]])
    hits = (rows == first_target[:, None]) & merged.valid
    target = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    length = ranker_history
    engagement = np.full((len(cases), length), UNKNOWN_ENGAGEMENT, dtype=np.float32)
    ages = np.zeros((len(cases), length), dtype=np.float32)
    now = cases.target_timestamps[cases.target_indptr[:-1]]
    for i in range(len(cases)):
        known = watched[i] >= FIRST_ID_ROW
        recent_known = np.flatnonzero(known)[-length:]
        if len(recent_known) == 0:
            continue
        span = slice(length - len(recent_known), length)
        start = cases.history_indptr[i]
        ages[i, span] = (now[i] - cases.history_timestamps[start + recent_known]) / 3600.0
        if cases.history_engagement is not None:
            values = cases.history_engagement[start + recent_known]
            engagement[i, span] = np.nan_to_num(values, nan=UNKNOWN_ENGAGEMENT)
    retrieval = np.where(merged.valid, np.einsum("nd,nkd->nk", queries, catalogue[rows]), 0.0)
    evidence = sources.evidence(
        recent,
        rows,
        retrieval.astype(np.float32),
        merged.retrieval_rank,
        merged.origins,
        now.astype(np.float64),
    )
    lists = CandidateLists(
        history_rows=history_rows[:, -length:],
        history_engagement=engagement,
        history_age_hours=ages,
        candidate_rows=rows,
        candidate_valid=merged.valid,
        evidence=evidence,
        user_attributes=features.user_attribute_matrix(user_rows),
        target=target.astype(np.int64),
        engagement=np.full(len(cases), np.nan, dtype=np.float32),
    )
    return lists, full


def list_scores(
    lists: CandidateLists, order: str, ranker: RankerScorer | None, engagement_weight: float
) -> np.ndarray:
    """``[n, k]`` scores that put each list in ``order`` (`candidates.SERVING_ORDERS`): the
    ranker's blend for ``"two_stage"``, else retrieval's or one source's (`order_scores`).
    Invalid slots score -inf."""
    if order == TWO_STAGE:
        if ranker is None:
            raise ValueError("the two-stage order needs the ranker")
        out = ranker.score_lists(lists)
        scores = blend_scores(
            out["watch_logits"], out["engagement"], engagement_weight, lists.candidate_valid
        ).astype(np.float64)
    else:
        scores = order_scores(lists.evidence, order)
    return np.where(lists.candidate_valid, scores, -np.inf)


class TwoStageScorer:
    """The merged candidates put in a serving order: a `core.metrics.Scorer`.

    Candidates score above every other video (in the order's scores); the rest keep their
    retrieval order below them, so Recall@N of the list is the merged candidates'.

    Args:
        encoders: Retrieval towers.
        catalogue: ``[num_rows, d]`` retrieval embeddings by row.
        ranker: The ranker (needed for the ``"two_stage"`` order only).
        config: The ranking configuration (N, history length, engagement weight).
        sources: The bundle's candidate sources.
        order: One of `candidates.SERVING_ORDERS`.
    """

    def __init__(
        self,
        encoders: RetrievalEncoders,
        catalogue: np.ndarray,
        ranker: RankerScorer | None,
        config: RankingConfig,
        sources: CandidateSources,
        order: str = TWO_STAGE,
    ) -> None:
        if order not in SERVING_ORDERS:
            raise ValueError(f"unknown order {order!r}; choose from {SERVING_ORDERS}")
        self.encoders = encoders
        self.catalogue = catalogue
        self.ranker = ranker
        self.config = config
        self.sources = sources
        self.order = order

    def __call__(self, cases: EvalCases) -> np.ndarray:
        lists, full = case_lists(
            cases,
            self.encoders.features,
            self.encoders,
            self.catalogue,
            self.config.candidates,
            self.config.history_length,
            self.sources,
            with_full=True,
        )
        ordered = list_scores(lists, self.order, self.ranker, self.config.engagement_weight)
        # Order scores are log-probabilities, inner products or small sums (far above -1e4),
        # so every candidate ranks above every other video without losing float32 precision
        # among candidates.
        scores = full - CANDIDATE_OFFSET
        columns = lists.candidate_rows - FIRST_ID_ROW
        rows = np.arange(len(cases))[:, None]
        valid = lists.candidate_valid
        scores[np.broadcast_to(rows, columns.shape)[valid], columns[valid]] = ordered[valid]
        return scores.astype(np.float32)


class SourceScorer:
    """One item-to-item source alone: its ``per_source`` proposals in its own order, every
    other video at -inf (a `core.metrics.Scorer`; its Recall@N is the source's)."""

    def __init__(self, sources: CandidateSources, name: str, features: FeatureSpace) -> None:
        self.sources = sources
        self.name = name
        self.features = features

    def __call__(self, cases: EvalCases) -> np.ndarray:
        histories = [cases.history(i) for i in range(len(cases))]
        history_rows, _ = self.features.history_matrix(histories)
        recent = self.sources.recent(history_rows)
        rows, scores = self.sources.propose(recent, history_rows)[self.name]
        out = np.full((len(cases), self.features.video_vocab.num_ids), -np.inf, np.float32)
        found = rows >= FIRST_ID_ROW
        case = np.broadcast_to(np.arange(len(cases))[:, None], rows.shape)
        out[case[found], rows[found] - FIRST_ID_ROW] = scores[found]
        return out
