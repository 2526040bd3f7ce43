"""`build_serving_state` and `ServingState` (pipelines/serving/state.py) on a data set small
enough that every history, count and category list below is worked out by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from core.config import FeatureConfig
from core.errors import BundleError
from core.features import FeatureSpace
from core.schema import Dataset
from pipelines.serving.state import ServingState, build_serving_state

DAY = 86_400
NAN = float("nan")

# Video 30's duration is unknown; video 40 is never watched.
VIDEOS = pd.DataFrame(
    {
        "video_id": [10, 20, 30, 40],
        "categories": [("drama",), ("comedy", "drama"), ("comedy",), ()],
        "duration": [100.0, 50.0, NAN, 200.0],
    }
)
# (user, video, timestamp, watch_seconds, rating), deliberately not in user/time order: the
# Dataset sorts by user then time. The last event is at day 10.
EVENTS = [
    (3, 20, int(9.9 * DAY), NAN, 5.0),  # engagement 5 / 5 = 1.0
    (1, 10, 10 * DAY, 10.0, NAN),  # 10 / 100 = 0.1
    (2, 10, 8 * DAY, 50.0, NAN),  # 50 / 100 = 0.5 (before the 1-day window)
    (1, 20, int(9.5 * DAY), 25.0, NAN),  # 25 / 50 = 0.5
    (3, 10, 1 * DAY, NAN, NAN),  # unknown (before the window)
    (1, 30, int(9.6 * DAY), NAN, 4.0),  # no duration: rating 4 / 5 = 0.8
    (2, 20, 10 * DAY - 100, 100.0, NAN),  # 100 / 50 clipped to 1.0
    (3, 30, int(9.8 * DAY), 30.0, NAN),  # no duration, no rating: unknown
]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    users, videos, stamps, watched, ratings = zip(*EVENTS, strict=True)
    interactions = pd.DataFrame(
        {
            "user_id": users,
            "video_id": videos,
            "timestamp": stamps,
            "watch_seconds": watched,
            "rating": ratings,
        }
    )
    return Dataset("hand-made", interactions, VIDEOS)


@pytest.fixture(scope="module")
def features(dataset) -> FeatureSpace:
    return FeatureSpace.fit(FeatureConfig(), dataset.videos, dataset.interactions)


@pytest.fixture(scope="module")
def state(dataset, features) -> ServingState:
    return build_serving_state(dataset, features, popularity_days=1.0, events_until_id=42)


def test_histories_are_every_watch_per_user_oldest_first(state):
    assert state.history_user_ids.tolist() == [1, 2, 3]
    assert state.history_indptr.tolist() == [0, 3, 5, 8]
    expected = {
        1: ([20, 30, 10], [int(9.5 * DAY), int(9.6 * DAY), 10 * DAY], [0.5, 0.8, 0.1]),
        2: ([10, 20], [8 * DAY, 10 * DAY - 100], [0.5, 1.0]),
        3: ([10, 30, 20], [1 * DAY, int(9.8 * DAY), int(9.9 * DAY)], [NAN, NAN, 1.0]),
    }
    for user, (videos, stamps, engagement) in expected.items():
        got_videos, got_stamps, got_engagement = state.history(user)
        assert got_videos.tolist() == videos
        assert got_stamps.tolist() == stamps
        assert got_engagement.dtype == np.float32
        np.testing.assert_allclose(got_engagement, engagement, rtol=1e-6)
    unknown = state.history(99)
    assert [len(part) for part in unknown] == [0, 0, 0]


def test_popularity_counts_the_last_days_overall_and_per_category(state):
    # Watches from day 9 on: video 20 by users 1, 2, 3; 30 by users 1 and 3; 10 by user 1
    # (user 2's day-8 and user 3's day-1 watches of 10 are older).
    assert state.popular_video_ids.tolist() == [20, 30, 10]
    assert state.popular_counts.tolist() == [3, 2, 1]
    assert state.popular().tolist() == [20, 30, 10]
    # Per category, most watched first: comedy holds 20 and 30, drama 20 and 10.
    assert state.category_names == ["comedy", "drama"]
    assert state.category_indptr.tolist() == [0, 2, 4]
    assert state.category_video_ids.tolist() == [20, 30, 20, 10]
    assert state.popular("comedy").tolist() == [20, 30]
    assert state.popular("drama").tolist() == [20, 10]
    assert state.popular("horror").tolist() == []


def test_durations_follow_the_vocabulary_and_the_scalars_are_kept(features, state):
    seconds = {10: 100.0, 20: 50.0, 30: NAN, 40: 200.0}
    assert sorted(features.video_vocab.ids.tolist()) == [10, 20, 30, 40]
    np.testing.assert_array_equal(
        state.durations, [seconds[v] for v in features.video_vocab.ids.tolist()]
    )
    assert state.durations.dtype == np.float32
    assert (state.events_until_id, state.data_until) == (42, 10 * DAY)


def test_save_and_load_round_trip(state, tmp_path):
    state.save(tmp_path)
    loaded = ServingState.load(tmp_path)
    for field in dataclasses.fields(ServingState):
        before, after = getattr(state, field.name), getattr(loaded, field.name)
        if isinstance(before, np.ndarray):
            assert after.dtype == before.dtype, field.name
            np.testing.assert_array_equal(after, before, err_msg=field.name)
        else:
            assert after == before, field.name


@pytest.mark.parametrize("missing", ["popular_counts.npy", "state.json"])
def test_a_missing_file_is_a_bundle_error(state, tmp_path, missing):
    state.save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(BundleError, match=rf"cannot read the serving state in .*{missing}"):
        ServingState.load(tmp_path)
