"""`LiveCatalogue` (pipelines/serving/catalogue.py): uploads get new rows past the bundle's,
updates keep theirs, and a video that embeds to NaN is refused before anything is written.

The video tower is replaced by plain functions that return chosen vectors, so every stored
embedding is known exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from core.config import FeatureConfig
from core.errors import DataError
from core.features import FeatureSpace, VideoFeatureArrays
from core.schema import validate_videos
from core.vocab import FIRST_ID_ROW, OOV_ROW, PAD_ROW
from pipelines.serving.catalogue import LiveCatalogue
from tests.tiny import small_platform

DIM = 4
FIRST_UPLOAD_ID = 1_000_000


@pytest.fixture(scope="module")
def platform():
    """``(features, durations)``: a feature space fitted on a small synthetic platform and the
    platform's video durations by id."""
    data = small_platform(seed=3)
    features = FeatureSpace.fit(
        FeatureConfig(history_length=10, max_tokens=8), data.videos, data.interactions, data.users
    )
    return features, data.videos.set_index("video_id")["duration"]


def _catalogue(features: FeatureSpace, durations: pd.Series) -> LiveCatalogue:
    """A catalogue whose base embedding of row ``r`` is ``[r, -r, 0.5, 1]`` (rows 0, 1 zero)."""
    rows = np.arange(features.video_vocab.num_rows, dtype=np.float32)
    embeddings = np.stack([rows, -rows, np.full_like(rows, 0.5), np.ones_like(rows)], axis=1)
    embeddings[:FIRST_ID_ROW] = 0.0
    seconds = durations.reindex(features.video_vocab.ids).to_numpy(np.float32)
    return LiveCatalogue(features, embeddings, seconds)


def _videos(
    ids: list[int] | np.ndarray, category: str = "", duration: float = 30.0
) -> pd.DataFrame:
    ids = np.asarray(ids, dtype=np.int64)
    return validate_videos(
        pd.DataFrame(
            {
                "video_id": ids,
                "title": [f"upload {i}" for i in ids],
                "categories": [(category,) if category else () for _ in ids],
                "duration": np.full(len(ids), duration),
            }
        )
    )


def _vectors(ids: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """The chosen embedding of each id: ``[id, shift, 0, 0]``."""
    out = np.zeros((len(ids), DIM), dtype=np.float32)
    out[:, 0] = ids
    out[:, 1] = shift
    return out


def _embed_as(
    vectors: np.ndarray, seen: list[VideoFeatureArrays] | None = None
) -> Callable[[VideoFeatureArrays], np.ndarray]:
    """A stand-in video tower that returns ``vectors`` (and records what it was given)."""

    def embed(arrays: VideoFeatureArrays) -> np.ndarray:
        assert len(arrays) == len(vectors)
        if seen is not None:
            seen.append(arrays)
        return vectors

    return embed


def test_rows_and_ids_round_trip_for_the_bundle_videos(platform):
    features, durations = platform
    catalogue = _catalogue(features, durations)
    base_ids = features.video_vocab.ids
    rows = np.arange(FIRST_ID_ROW, features.video_vocab.num_rows)
    assert catalogue.num_rows == len(base_ids) + FIRST_ID_ROW
    np.testing.assert_array_equal(catalogue.rows(base_ids), rows)
    np.testing.assert_array_equal(catalogue.ids(rows), base_ids)
    np.testing.assert_array_equal(catalogue.ids([PAD_ROW, OOV_ROW]), [-1, -1])
    np.testing.assert_array_equal(catalogue.rows([FIRST_UPLOAD_ID, -5]), [OOV_ROW, OOV_ROW])
    np.testing.assert_array_equal(catalogue.durations(rows), durations.loc[base_ids].to_numpy())
    np.testing.assert_array_equal(catalogue.embeddings[rows[:2], 0], rows[:2])


def test_uploads_grow_the_arrays_past_their_capacity(platform):
    features, durations = platform
    catalogue = _catalogue(features, durations)
    base = catalogue.num_rows
    category = features.categories.values[0]
    # Until the first upload the catalogue reads the bundle's arrays as they are (shared
    # between workers); the upload copies them with spare rows and leaves the bundle's alone.
    bundle_embeddings = catalogue._embeddings
    bundle_tokens = features.catalogue.token_ids.copy()
    assert len(bundle_embeddings) == base
    first_ids = FIRST_UPLOAD_ID + np.arange(1)
    rows, _ = catalogue.upsert(_videos(first_ids, category, 40.0), _embed_as(_vectors(first_ids)))
    assert rows.tolist() == [base]
    assert catalogue._embeddings is not bundle_embeddings and len(bundle_embeddings) == base
    np.testing.assert_array_equal(features.catalogue.token_ids, bundle_tokens)
    # The spare capacity is private; reading it is the only way to fill it exactly.
    capacity = len(catalogue._embeddings)
    more_ids = FIRST_UPLOAD_ID + np.arange(1, capacity - base)  # fills the spare rows exactly
    rows, stored = catalogue.upsert(
        _videos(more_ids, category, 40.0), _embed_as(_vectors(more_ids))
    )
    first_ids = np.concatenate([first_ids, more_ids])
    second_ids = FIRST_UPLOAD_ID + np.arange(capacity - base, capacity - base + 5)  # 5 more
    np.testing.assert_array_equal(rows, base + 1 + np.arange(len(more_ids)))
    np.testing.assert_array_equal(stored, _vectors(more_ids))
    assert (catalogue.num_rows, len(catalogue._embeddings)) == (capacity, capacity)  # no growth

    rows, _ = catalogue.upsert(_videos(second_ids, "", 50.0), _embed_as(_vectors(second_ids)))
    np.testing.assert_array_equal(rows, capacity + np.arange(5))
    assert catalogue.num_rows == capacity + 5
    assert len(catalogue._embeddings) >= capacity + 5  # grew

    # Every row kept its meaning through the growth: the bundle's and both batches.
    all_ids = np.concatenate([features.video_vocab.ids, first_ids, second_ids])
    all_rows = np.arange(FIRST_ID_ROW, capacity + 5)
    np.testing.assert_array_equal(catalogue.rows(all_ids), all_rows)
    np.testing.assert_array_equal(catalogue.ids(all_rows), all_ids)
    np.testing.assert_array_equal(catalogue.embeddings[base:, 0], np.r_[first_ids, second_ids])
    np.testing.assert_array_equal(catalogue.embeddings[FIRST_ID_ROW:base, 0], all_rows[: base - 2])
    np.testing.assert_array_equal(
        catalogue.durations(all_rows[base - 2 :]), [40.0] * len(first_ids) + [50.0] * 5
    )
    # The models see an uploaded id as OOV; its content carries it.
    videos = catalogue.videos
    assert len(videos) == capacity + 5
    np.testing.assert_array_equal(videos.video_rows[base:], OOV_ROW)
    np.testing.assert_array_equal(videos.video_rows[FIRST_ID_ROW:base], all_rows[: base - 2])
    assert catalogue.primary_categories(np.array([base, capacity])).tolist() == [
        features.categories.row(category),
        PAD_ROW,  # no category
    ]


def test_an_update_keeps_its_row_and_a_new_id_in_the_same_batch_gets_the_next(platform):
    features, durations = platform
    catalogue = _catalogue(features, durations)
    base = catalogue.num_rows
    known = int(features.video_vocab.ids[3])  # row 5
    catalogue.upsert(_videos([FIRST_UPLOAD_ID]), _embed_as(_vectors(np.array([1.0]))))

    seen: list[VideoFeatureArrays] = []
    ids = np.array([known, FIRST_UPLOAD_ID, FIRST_UPLOAD_ID + 1])
    vectors = _vectors(ids, shift=7.0)
    rows, _ = catalogue.upsert(_videos(ids, duration=99.0), _embed_as(vectors, seen))
    assert rows.tolist() == [FIRST_ID_ROW + 3, base, base + 1]
    assert catalogue.num_rows == base + 2
    np.testing.assert_array_equal(catalogue.embeddings[rows], vectors)
    np.testing.assert_array_equal(catalogue.durations(rows), [99.0, 99.0, 99.0])
    # The tower was given the known video's own row and OOV for the uploads.
    assert seen[0].video_rows.tolist() == [FIRST_ID_ROW + 3, OOV_ROW, OOV_ROW]
    # The known video still is its bundle row to the models.
    assert catalogue.videos.video_rows[FIRST_ID_ROW + 3] == FIRST_ID_ROW + 3
    np.testing.assert_array_equal(catalogue.ids(rows), ids)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_embedding_is_refused_and_nothing_is_written(platform, bad):
    features, durations = platform
    catalogue = _catalogue(features, durations)
    base = catalogue.num_rows
    known = int(features.video_vocab.ids[0])  # row 2
    before = catalogue.embeddings.copy()
    before_arrays = {k: v.copy() for k, v in catalogue.videos.as_dict().items()}
    ids = np.array([known, FIRST_UPLOAD_ID, FIRST_UPLOAD_ID + 1])
    vectors = _vectors(ids)
    vectors[2, 3] = bad

    with pytest.raises(
        DataError, match=rf"video\(s\) \[{FIRST_UPLOAD_ID + 1}\] embed to NaN or inf"
    ):
        catalogue.upsert(_videos(ids, features.categories.values[1], 5.0), _embed_as(vectors))
    assert catalogue.num_rows == base
    np.testing.assert_array_equal(catalogue.rows(ids), [FIRST_ID_ROW, OOV_ROW, OOV_ROW])
    np.testing.assert_array_equal(catalogue.embeddings, before)
    for name, values in catalogue.videos.as_dict().items():
        np.testing.assert_array_equal(values, before_arrays[name], err_msg=name)
    assert catalogue.durations(np.array([FIRST_ID_ROW]))[0] == durations.loc[known]
