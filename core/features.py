"""Model inputs as numpy arrays: video content features, user attributes, padded histories.

`FeatureSpace` is fitted once on a dataset and saved in a bundle's ``vocab/`` directory; both
models and the server turn raw ids and metadata into embedding rows through it, so training and
serving cannot disagree. It grows (warm start, new uploads) without moving existing rows.

Row conventions follow `core.vocab`: 0 is padding / unknown, 1 is out-of-vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import FeatureConfig, config_from_dict, config_to_dict
from core.errors import BundleError, DataError
from core.io import atomic_save_npy, atomic_write_json, map_npy
from core.vocab import FIRST_ID_ROW, OOV_ROW, PAD_ROW, IdVocabulary

NUMERIC_FEATURES: tuple[str, ...] = (
    "year",
    "has_year",
    "log_duration",
    "has_duration",
    "upload_time",
    "has_upload_time",
)
_TOKEN = re.compile(r"[a-z0-9]+")


class StringVocabulary:
    """Strings to rows: ``""`` is row 0 (unknown), unseen strings row 1, known from row 2."""

    def __init__(self, values: Sequence[str] = ()) -> None:
        self._values = list(values)
        self._rows = {v: i + FIRST_ID_ROW for i, v in enumerate(self._values)}
        if len(self._rows) != len(self._values) or "" in self._rows:
            raise DataError("string vocabulary values must be distinct and non-empty")

    @property
    def values(self) -> list[str]:
        """Known strings in row order."""
        return list(self._values)

    @property
    def num_rows(self) -> int:
        """Rows an embedding table needs."""
        return len(self._values) + FIRST_ID_ROW

    def row(self, value: str) -> int:
        """Row of one string (0 for ``""``, 1 when unseen)."""
        if not value:
            return PAD_ROW
        return self._rows.get(value, OOV_ROW)

    def grow(self, values: Sequence[str]) -> StringVocabulary:
        """A new vocabulary with unseen non-empty ``values`` appended."""
        new = [v for v in dict.fromkeys(values) if v and v not in self._rows]
        return StringVocabulary(self._values + new)


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens of a title or tag."""
    return _TOKEN.findall(text.lower())


def hash_token(token: str, buckets: int) -> int:
    """Stable hash bucket in ``[1, buckets]`` (0 is padding), identical across processes."""
    return zlib.crc32(token.encode("utf-8")) % buckets + 1


@dataclasses.dataclass(frozen=True)
class VideoFeatureArrays:
    """Content features of ``n`` videos, row-aligned.

    Attributes:
        video_rows: ``[n] int64`` rows in the video vocabulary (OOV for unknown videos).
        category_rows: ``[n, max_categories] int64``, 0-padded.
        token_ids: ``[n, max_tokens] int64`` hashed title and tag tokens, 0-padded.
        creator_rows: ``[n] int64``.
        numeric: ``[n, len(NUMERIC_FEATURES)] float32`` standardised numbers and known flags.
    """

    video_rows: np.ndarray
    category_rows: np.ndarray
    token_ids: np.ndarray
    creator_rows: np.ndarray
    numeric: np.ndarray

    def __len__(self) -> int:
        return len(self.video_rows)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def take(self, index: np.ndarray) -> VideoFeatureArrays:
        """Rows ``index`` of every array."""
        return VideoFeatureArrays(**{k: v[index] for k, v in self.as_dict().items()})

    @staticmethod
    def concatenate(parts: Sequence[VideoFeatureArrays]) -> VideoFeatureArrays:
        """Stacks parts row-wise."""
        return VideoFeatureArrays(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in dataclasses.fields(VideoFeatureArrays)
            }
        )


@dataclasses.dataclass(frozen=True)
class NumericStats:
    """Means and standard deviations of the numeric video features, fixed at fit time."""

    year_mean: float = 0.0
    year_std: float = 1.0
    log_duration_mean: float = 0.0
    log_duration_std: float = 1.0
    upload_mean: float = 0.0
    upload_std: float = 1.0


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    known = values[np.isfinite(values)]
    if len(known) == 0:
        return 0.0, 1.0
    std = float(known.std())
    return float(known.mean()), std if std > 0 else 1.0


def _standardise(values: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    known = np.isfinite(values)
    return np.where(known, (values - mean) / std, 0.0), known.astype(np.float64)


class FeatureSpace:
    """Vocabularies and feature arrays of one catalogue and user base.

    Attributes:
        config: Which features exist and their sizes.
        video_vocab: Raw video ids to rows.
        user_vocab: Raw user ids to rows.
        categories: Category names to rows.
        creators: Creator names to rows.
        user_attributes: Per users-table attribute, its value vocabulary.
        stats: Standardisation of numeric video features.
        catalogue: Features of every video vocabulary row, ``[video_vocab.num_rows, ...]``
            (rows 0 and 1 are all zeros).
        user_attribute_rows: ``[user_vocab.num_rows, num_attributes] int64``.
    """

    def __init__(
        self,
        config: FeatureConfig,
        video_vocab: IdVocabulary,
        user_vocab: IdVocabulary,
        categories: StringVocabulary,
        creators: StringVocabulary,
        user_attributes: dict[str, StringVocabulary],
        stats: NumericStats,
        catalogue: VideoFeatureArrays,
        user_attribute_rows: np.ndarray,
    ) -> None:
        if len(catalogue) != video_vocab.num_rows:
            raise DataError(
                f"catalogue features have {len(catalogue)} rows, "
                f"the video vocabulary {video_vocab.num_rows}"
            )
        if user_attribute_rows.shape != (user_vocab.num_rows, len(user_attributes)):
            raise DataError(
                f"user attribute rows have shape {user_attribute_rows.shape}, expected "
                f"{(user_vocab.num_rows, len(user_attributes))}"
            )
        self.config = config
        self.video_vocab = video_vocab
        self.user_vocab = user_vocab
        self.categories = categories
        self.creators = creators
        self.user_attributes = user_attributes
        self.stats = stats
        self.catalogue = catalogue
        self.user_attribute_rows = user_attribute_rows

    @classmethod
    def fit(
        cls,
        config: FeatureConfig,
        videos: pd.DataFrame,
        interactions: pd.DataFrame,
        users: pd.DataFrame | None = None,
    ) -> FeatureSpace:
        """Builds vocabularies, statistics and arrays from validated tables.

        Every catalogue video gets a row, watched or not, so cold videos are retrievable.
        """
        year_mean, year_std = _mean_std(videos["year"].to_numpy(np.float64))
        duration_mean, duration_std = _mean_std(np.log1p(videos["duration"].to_numpy(np.float64)))
        upload_mean, upload_std = _mean_std(videos["upload_time"].to_numpy(np.float64))
        attributes: dict[str, StringVocabulary] = {}
        if users is not None and config.use_user_features:
            attributes = {
                column: StringVocabulary(sorted({v for v in users[column].astype(str) if v}))
                for column in users.columns
                if column != "user_id"
            }
        empty_catalogue = _zero_arrays(FIRST_ID_ROW, config)
        space = cls(
            config=config,
            video_vocab=IdVocabulary(),
            user_vocab=IdVocabulary(),
            categories=StringVocabulary(
                sorted({c for cats in videos["categories"] for c in cats if c})
            ),
            creators=StringVocabulary(sorted({c for c in videos["creator"] if c})),
            user_attributes=attributes,
            stats=NumericStats(
                year_mean, year_std, duration_mean, duration_std, upload_mean, upload_std
            ),
            catalogue=empty_catalogue,
            user_attribute_rows=np.zeros((FIRST_ID_ROW, len(attributes)), dtype=np.int64),
        )
        return space.grow(videos=videos, interactions=interactions, users=users)

    def grow(
        self,
        videos: pd.DataFrame | None = None,
        interactions: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
    ) -> FeatureSpace:
        """A new feature space with new videos and users appended; existing rows keep their ids.

        Videos already known get their metadata refreshed (an update); statistics stay fixed so
        existing embeddings keep their meaning.

        Args:
            videos: Validated videos table of new or updated videos.
            interactions: Validated interactions; their unseen users are added.
            users: Validated users table; attributes of known and new users are (re)set.
        """
        video_vocab = self.video_vocab
        categories, creators = self.categories, self.creators
        catalogue = self.catalogue
        if videos is not None and len(videos):
            video_vocab = video_vocab.grow(videos["video_id"].to_numpy(np.int64))
            categories = categories.grow([c for cats in videos["categories"] for c in cats])
            creators = creators.grow(list(videos["creator"]))
            extra = video_vocab.num_rows - len(catalogue)
            catalogue = VideoFeatureArrays.concatenate(
                [catalogue, _zero_arrays(extra, self.config)]
            )
            rows = video_vocab.lookup(videos["video_id"].to_numpy(np.int64))
            fresh = _video_arrays(videos, rows, categories, creators, self.stats, self.config)
            for name, values in fresh.as_dict().items():
                getattr(catalogue, name)[rows] = values
        user_vocab = self.user_vocab
        new_user_ids: list[np.ndarray] = []
        if interactions is not None and len(interactions):
            new_user_ids.append(interactions["user_id"].to_numpy(np.int64))
        if users is not None and len(users):
            new_user_ids.append(users["user_id"].to_numpy(np.int64))
        for ids in new_user_ids:
            user_vocab = user_vocab.grow(ids)
        attributes = dict(self.user_attributes)
        attribute_rows = np.zeros((user_vocab.num_rows, len(attributes)), dtype=np.int64)
        attribute_rows[: len(self.user_attribute_rows)] = self.user_attribute_rows
        if users is not None and len(users) and attributes:
            rows = user_vocab.lookup(users["user_id"].to_numpy(np.int64))
            for j, (column, vocab) in enumerate(attributes.items()):
                if column in users.columns:
                    attributes[column] = vocab = vocab.grow(list(users[column].astype(str)))
                    attribute_rows[rows, j] = [vocab.row(v) for v in users[column].astype(str)]
        return FeatureSpace(
            self.config,
            video_vocab,
            user_vocab,
            categories,
            creators,
            attributes,
            self.stats,
            catalogue,
            attribute_rows,
        )

    # -- lookups --------------------------------------------------------------------------

    def video_features(self, videos: pd.DataFrame) -> VideoFeatureArrays:
        """Features of videos described by a validated table (known or new ids)."""
        rows = self.video_vocab.lookup(videos["video_id"].to_numpy(np.int64))
        return _video_arrays(videos, rows, self.categories, self.creators, self.stats, self.config)

    def history_matrix(
        self, histories: Sequence[np.ndarray], length: int | None = None
    ) -> tuple[np.ndarray, int]:
        """Left-padded rows of the most recent watches.

        Args:
            histories: Per user, raw video ids oldest first.
            length: Columns; defaults to ``config.history_length``.

        Returns:
            ``([b, length] int64 rows, number of unknown video ids dropped)``.
        """
        length = length or self.config.history_length
        out = np.zeros((len(histories), length), dtype=np.int64)
        dropped = 0
        for i, history in enumerate(histories):
            rows = self.video_vocab.lookup(history)
            known = rows[rows >= FIRST_ID_ROW]
            dropped += len(rows) - len(known)
            recent = known[-length:]
            if len(recent):
                out[i, length - len(recent) :] = recent
        return out, dropped

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Rows of raw user ids (OOV for unknown users), same shape, int64."""
        return self.user_vocab.lookup(user_ids)

    def user_attribute_matrix(self, user_rows: np.ndarray) -> np.ndarray:
        """``[b, num_attributes] int64`` attribute rows of users (zeros for OOV)."""
        return self.user_attribute_rows[np.asarray(user_rows, dtype=np.int64)]

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes everything under ``directory`` (JSON plus ``.npy``), each file atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.video_vocab.save(directory / "video_ids.npy")
        self.user_vocab.save(directory / "user_ids.npy")
        for name, values in self.catalogue.as_dict().items():
            atomic_save_npy(directory / f"catalogue_{name}.npy", values)
        atomic_save_npy(directory / "user_attribute_rows.npy", self.user_attribute_rows)
        atomic_write_json(
            directory / "feature_space.json",
            {
                "config": config_to_dict(self.config),
                "categories": self.categories.values,
                "creators": self.creators.values,
                "user_attributes": {k: v.values for k, v in self.user_attributes.items()},
                "stats": dataclasses.asdict(self.stats),
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FeatureSpace:
        """Reads a feature space written by `save`.

        Raises:
            BundleError: A file is missing or unreadable.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / "feature_space.json").read_text("utf-8"))
            catalogue = VideoFeatureArrays(
                **{
                    f.name: map_npy(directory / f"catalogue_{f.name}.npy")
                    for f in dataclasses.fields(VideoFeatureArrays)
                }
            )
            return cls(
                config=config_from_dict(FeatureConfig, meta["config"], "features"),
                video_vocab=IdVocabulary.load(directory / "video_ids.npy"),
                user_vocab=IdVocabulary.load(directory / "user_ids.npy"),
                categories=StringVocabulary(meta["categories"]),
                creators=StringVocabulary(meta["creators"]),
                user_attributes={
                    k: StringVocabulary(v) for k, v in meta["user_attributes"].items()
                },
                stats=NumericStats(**meta["stats"]),
                catalogue=catalogue,
                user_attribute_rows=np.load(
                    directory / "user_attribute_rows.npy", allow_pickle=False
                ),
            )
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise BundleError(f"cannot read the feature space in {directory}: {error}") from error


def _zero_arrays(n: int, config: FeatureConfig) -> VideoFeatureArrays:
    return VideoFeatureArrays(
        video_rows=np.zeros(n, dtype=np.int64),
        category_rows=np.zeros((n, config.max_categories), dtype=np.int64),
        token_ids=np.zeros((n, config.max_tokens), dtype=np.int64),
        creator_rows=np.zeros(n, dtype=np.int64),
        numeric=np.zeros((n, len(NUMERIC_FEATURES)), dtype=np.float32),
    )


def _video_arrays(
    videos: pd.DataFrame,
    rows: np.ndarray,
    categories: StringVocabulary,
    creators: StringVocabulary,
    stats: NumericStats,
    config: FeatureConfig,
) -> VideoFeatureArrays:
    """Content features of a validated videos table, vectorised over videos.

    Python touches each *distinct* category tuple, creator, title, tag and token once (a
    catalogue of a million videos has far fewer of most); everything per video is numpy.
    """
    n = len(videos)
    out = _zero_arrays(n, config)
    out.video_rows[:] = rows
    if not config.use_content_features:
        return out
    codes, uniques = pd.factorize(videos["categories"].to_numpy(dtype=object))
    by_tuple = np.zeros((len(uniques), config.max_categories), dtype=np.int64)
    for u, cats in enumerate(uniques):
        picked = [categories.row(c) for c in cats[: config.max_categories]]
        by_tuple[u, : len(picked)] = picked
    out.category_rows[:] = by_tuple[codes]
    for start in range(0, n, _TOKEN_CHUNK):
        stop = min(start + _TOKEN_CHUNK, n)
        out.token_ids[start:stop] = _token_ids(
            videos["title"].iloc[start:stop],
            videos["tags"].iloc[start:stop],
            config.token_hash_buckets,
            config.max_tokens,
        )
    codes, uniques = pd.factorize(videos["creator"].to_numpy(dtype=object))
    out.creator_rows[:] = np.array([creators.row(c) for c in uniques], dtype=np.int64)[codes]
    year, has_year = _standardise(
        videos["year"].to_numpy(np.float64), stats.year_mean, stats.year_std
    )
    duration, has_duration = _standardise(
        np.log1p(videos["duration"].to_numpy(np.float64)),
        stats.log_duration_mean,
        stats.log_duration_std,
    )
    upload, has_upload = _standardise(
        videos["upload_time"].to_numpy(np.float64), stats.upload_mean, stats.upload_std
    )
    out.numeric[:] = np.stack([year, has_year, duration, has_duration, upload, has_upload], axis=1)
    return out


_TOKEN_CHUNK = 200_000


def _segments(texts: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """Token lists flattened, and ``[len(texts) + 1]`` offsets of each list."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)), out=offsets[1:])
    return [t for tokens in texts for t in tokens], offsets


def _token_ids(titles: pd.Series, tags: pd.Series, buckets: int, max_tokens: int) -> np.ndarray:
    """``[n, max_tokens] int64``: hashed title tokens, then ``tag:`` tokens of each tag in order,
    first occurrence of each token kept, 0-padded (what `tokenize` and `hash_token` give per
    video, computed once per distinct title, tag and token).
    """
    n = len(titles)
    title_codes, title_uniques = pd.factorize(titles.to_numpy(dtype=object))
    title_tokens, title_offsets = _segments([tokenize(t) for t in title_uniques])
    tag_lists = tags.to_numpy(dtype=object)
    tags_per_video = np.fromiter(map(len, tag_lists), np.int64, n)
    tag_codes, tag_uniques = pd.factorize(
        np.array([t for video_tags in tag_lists for t in video_tags], dtype=object)
    )
    tag_tokens, tag_offsets = _segments(
        [[f"tag:{t}" for t in tokenize(tag)] for tag in tag_uniques]
    )
    token_codes, token_uniques = pd.factorize(
        np.array(title_tokens + tag_tokens, dtype=object), use_na_sentinel=False
    )
    hashes = np.fromiter(
        (hash_token(t, buckets) for t in token_uniques), np.int64, len(token_uniques)
    )
    # Segments in video order: each video's title, then its tags in order.
    segment_video = np.concatenate(
        [np.arange(n, dtype=np.int64), np.repeat(np.arange(n, dtype=np.int64), tags_per_video)]
    )
    segment_order = np.concatenate(
        [
            np.zeros(n, dtype=np.int64),
            1
            + np.arange(len(tag_codes))
            - np.repeat(np.cumsum(tags_per_video) - tags_per_video, tags_per_video),
        ]
    )
    segment_start = np.concatenate(
        [title_offsets[title_codes], len(title_tokens) + tag_offsets[tag_codes]]
    )
    segment_stop = np.concatenate(
        [title_offsets[title_codes + 1], len(title_tokens) + tag_offsets[tag_codes + 1]]
    )
    order = np.lexsort((segment_order, segment_video))
    lengths = (segment_stop - segment_start)[order]
    first = np.cumsum(lengths) - lengths
    positions = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(
        segment_start[order] - first, lengths
    )
    video = np.repeat(segment_video[order], lengths)
    token = token_codes[positions]
    # Keep the first occurrence of each token per video (np.unique returns first indices).
    _, kept = np.unique(video * max(len(token_uniques), 1) + token, return_index=True)
    kept.sort()
    video, token = video[kept], token[kept]
    slot = np.arange(len(video)) - np.searchsorted(video, video)
    keep = slot < max_tokens
    out = np.zeros((n, max_tokens), dtype=np.int64)
    out[video[keep], slot[keep]] = hashes[token[keep]]
    return out


def engagement_labels(interactions: pd.DataFrame, videos: pd.DataFrame) -> np.ndarray:
    """How much each event engaged its user, in ``[0, 1]``; NaN when unknown.

    Watch fraction (``watch_seconds / duration``) where both are known, else ``rating / 5``.

    Returns:
        ``[len(interactions)] float32``.
    """
    duration = (
        videos.set_index("video_id")["duration"]
        .reindex(interactions["video_id"].to_numpy(np.int64))
        .to_numpy(np.float64)
    )
    watched = interactions["watch_seconds"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.clip(watched / duration, 0.0, 1.0)
    fraction[~(np.isfinite(fraction) & (duration > 0))] = np.nan
    rating = np.clip(interactions["rating"].to_numpy(np.float64) / 5.0, 0.0, 1.0)
    return np.where(np.isfinite(fraction), fraction, rating).astype(np.float32)
