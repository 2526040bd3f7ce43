"""The queries an index is tuned and verified on: user-tower outputs, never video vectors.

The index serves user-tower outputs, so it is tuned on them:

- with a data set, on the most recent ``features.history_length`` watches of a sample of its
  users (``query_source="user_histories"``, `recent_histories`);
- inside `pipelines.jobs.train.train_job`, on the validation histories
  (``"validation_histories"``, `validation_queries`);
- without data (fallback), on one-watch histories: the user-tower query of a user who has
  watched a single sampled catalogue video (``"one_watch_histories"``). These are real user-tower
  outputs (what a new user gets after a first watch), not video vectors standing in for queries.

The sampled queries are shuffled and split into a tuning set (``index.tuning_queries``) and a
disjoint verification set of up to as many (`split_queries`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from core.config import IndexConfig
from core.errors import IndexBuildError
from core.features import FeatureSpace
from core.splits import EvalCases
from retrieval.encoders import RetrievalEncoders

QUERY_BATCH = 1_024
SOURCE_USER_HISTORIES = "user_histories"
SOURCE_VALIDATION_HISTORIES = "validation_histories"
SOURCE_ONE_WATCH = "one_watch_histories"


@dataclasses.dataclass(frozen=True)
class QuerySets:
    """Held-out query embeddings for tuning and, disjoint from them, for verification.

    Attributes:
        tuning: ``[q, d] float32`` queries the operating point is tuned on.
        verification: ``[v, d] float32`` other queries the chosen point is checked on.
        source: Where they come from (``"user_histories"``, ``"validation_histories"``,
            ``"one_watch_histories"``).
    """

    tuning: np.ndarray
    verification: np.ndarray
    source: str


def query_embeddings(
    encoders: RetrievalEncoders,
    catalogue_rows: np.ndarray,
    histories: list[np.ndarray],
    user_ids: np.ndarray | None = None,
    batch_size: int = QUERY_BATCH,
) -> np.ndarray:
    """User-tower queries of many histories, in batches.

    Args:
        encoders: The bundle's towers (over the feature space the histories are read with).
        catalogue_rows: ``[num_rows, d] float32`` embeddings by video vocabulary row.
        histories: Per user, raw video ids oldest first.
        user_ids: ``[b] int64`` raw user ids, or None for anonymous users.
        batch_size: Users per call of the user tower.

    Returns:
        ``[b, d] float32``.
    """
    out = np.zeros((len(histories), encoders.dim), dtype=np.float32)
    for start in range(0, len(histories), batch_size):
        stop = min(start + batch_size, len(histories))
        users = None if user_ids is None else user_ids[start:stop]
        out[start:stop] = encoders.query_embeddings(catalogue_rows, histories[start:stop], users)
    return out


def recent_histories(
    interactions: pd.DataFrame, features: FeatureSpace, max_users: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The most recent watches of a random sample of users who watched a known video.

    Args:
        interactions: Validated interactions (sorted by user, then time).
        features: The feature space histories are read with (its ``history_length``).
        max_users: Users to sample at most.
        seed: Seed of the sample.

    Returns:
        Histories (raw video ids, oldest first, at most ``history_length`` each) and their
        ``[u] int64`` user ids.
    """
    users = interactions["user_id"].to_numpy(np.int64)
    videos = interactions["video_id"].to_numpy(np.int64)
    if len(users) == 0:
        return [], np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    stops = np.r_[starts[1:], len(users)]
    known = features.video_vocab.contains(videos)
    has_known = np.add.reduceat(known.astype(np.int64), starts) > 0
    candidates = np.flatnonzero(has_known)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.permutation(candidates)[:max_users])
    length = features.config.history_length
    histories = [videos[max(starts[i], stops[i] - length) : stops[i]].copy() for i in picked]
    return histories, users[starts[picked]]


def one_watch_histories(video_ids: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """Fallback query histories: single watches of distinct sampled catalogue videos.

    Args:
        video_ids: ``[n] int64`` the catalogue.
        count: Histories wanted.
        seed: Seed of the sample.

    Returns:
        ``min(count, n)`` one-video histories (``[1] int64`` each), for anonymous users.
    """
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(video_ids))[:count]
    return [video_ids[i : i + 1] for i in picked]


def validation_queries(
    encoders: RetrievalEncoders,
    catalogue_rows: np.ndarray,
    cases: EvalCases,
    config: IndexConfig,
) -> QuerySets:
    """Tuning and verification queries from a split's validation histories (the training job).

    Args:
        encoders: The trained towers.
        catalogue_rows: ``[num_rows, d] float32`` embeddings by video vocabulary row.
        cases: Validation cases; their histories are the users' training watches.
        config: Index configuration (how many queries, seed).
    """
    sample = np.random.default_rng(config.seed).permutation(len(cases))[: queries_wanted(config)]
    sample = np.sort(sample)
    histories = [cases.history(int(i)) for i in sample]
    queries = query_embeddings(encoders, catalogue_rows, histories, cases.user_ids[sample])
    return split_queries(queries, config, SOURCE_VALIDATION_HISTORIES)


def held_out_queries(
    encoders: RetrievalEncoders,
    catalogue_rows: np.ndarray,
    video_ids: np.ndarray,
    config: IndexConfig,
    histories: tuple[list[np.ndarray], np.ndarray] | None = None,
) -> QuerySets:
    """The tuning and verification queries of a bundle's catalogue, as build-index takes them.

    Args:
        encoders: The bundle's towers.
        catalogue_rows: ``[num_rows, d] float32`` embeddings by video vocabulary row.
        video_ids: ``[n] int64`` the catalogue (for the one-watch fallback).
        config: Index configuration (how many queries, seed).
        histories: Users' recent histories and their ``[u] int64`` ids (`recent_histories` of
            a data set), or ``None`` for the one-watch fallback.

    Returns:
        Disjoint tuning and verification queries (`split_queries`).
    """
    if histories is not None:
        queries = query_embeddings(encoders, catalogue_rows, histories[0], histories[1])
        return split_queries(queries, config, SOURCE_USER_HISTORIES)
    watches = one_watch_histories(video_ids, queries_wanted(config), config.seed)
    queries = query_embeddings(encoders, catalogue_rows, watches)
    return split_queries(queries, config, SOURCE_ONE_WATCH)


def split_queries(queries: np.ndarray, config: IndexConfig, source: str) -> QuerySets:
    """Shuffles queries and splits them into disjoint tuning and verification sets.

    Tuning gets ``config.tuning_queries`` and verification up to as many; with fewer queries
    than twice that, each gets half.

    Raises:
        IndexBuildError: Fewer than two queries (nothing held out to verify on).
    """
    if len(queries) < 2:
        raise IndexBuildError(
            f"{len(queries)} {source} queries: at least 2 are needed to tune and verify the "
            "index on disjoint queries; give data with more users"
        )
    order = np.random.default_rng(config.seed + 7).permutation(len(queries))
    tuning = min(config.tuning_queries, math.ceil(len(queries) / 2))
    verification = min(config.tuning_queries, len(queries) - tuning)
    return QuerySets(
        tuning=np.ascontiguousarray(queries[order[:tuning]]),
        verification=np.ascontiguousarray(queries[order[tuning : tuning + verification]]),
        source=source,
    )


def queries_wanted(config: IndexConfig) -> int:
    """Queries to compute: a tuning set and a verification set of equal size."""
    return 2 * config.tuning_queries
