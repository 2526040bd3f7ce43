import numpy as np
import pandas as pd
import pytest

from core.config import FeatureConfig
from core.errors import DataError
from core.features import FeatureSpace, hash_token, tokenize
from core.schema import validate_interactions, validate_users, validate_videos
from core.vocab import FIRST_ID_ROW, OOV_ROW, PAD_ROW, IdVocabulary


def test_vocabulary_lookup_oov_and_reverse():
    vocab = IdVocabulary([30, 10, 20])
    assert vocab.lookup([10, 20, 30, 99]).tolist() == [3, 4, 2, OOV_ROW]
    assert vocab.id_of(np.array([2, 3, PAD_ROW, OOV_ROW])).tolist() == [30, 10, -1, -1]
    assert vocab.num_rows == 3 + FIRST_ID_ROW
    assert vocab.lookup(np.array([[10], [99]])).shape == (2, 1)


@pytest.mark.parametrize(
    "ids",
    [
        np.array([7, 0, 3, 12, 5]),  # compact: direct table
        np.array([10**15, -4, 3, 2**40, 99]),  # sparse and negative: sorted index
    ],
)
def test_vocabulary_lookup_is_the_same_whatever_the_id_layout(ids):
    vocab = IdVocabulary(ids)
    expected_rows = {int(i): r + FIRST_ID_ROW for r, i in enumerate(ids)}
    probes = np.array([[*ids.tolist(), -1, 1, 6, 13, 10**6, -(2**62), 2**62]])
    expected = [[expected_rows.get(int(p), OOV_ROW) for p in probes[0]]]
    np.testing.assert_array_equal(vocab.lookup(probes), expected)
    assert vocab.lookup(probes).dtype == np.int64
    np.testing.assert_array_equal(vocab.id_of(vocab.lookup(ids)), ids)


def test_vocabulary_grows_without_moving_rows(tmp_path):
    vocab = IdVocabulary([5, 6])
    grown = vocab.grow([6, 8, 7, 8])
    assert grown.ids.tolist() == [5, 6, 8, 7]
    assert grown.lookup([5, 6]).tolist() == vocab.lookup([5, 6]).tolist()
    grown.save(tmp_path / "v.npy")
    assert IdVocabulary.load(tmp_path / "v.npy") == grown


def test_vocabulary_refuses_duplicates():
    with pytest.raises(DataError, match="vocabulary id 4 appears twice"):
        IdVocabulary([4, 5, 4])


def _tables():
    videos = validate_videos(
        pd.DataFrame(
            {
                "video_id": [100, 200, 300],
                "title": [
                    "Cooking Pasta ep 1 | Chef",
                    "Cooking Pasta ep 2 | Chef",
                    "Rocket Launch",
                ],
                "categories": [("food",), ("food",), ("science", "news")],
                "tags": [("italian",), (), ()],
                "duration": [600.0, 650.0, np.nan],
                "creator": ["Chef", "Chef", ""],
            }
        )
    )
    interactions = validate_interactions(
        pd.DataFrame({"user_id": [1, 1, 2], "video_id": [100, 200, 300], "timestamp": [1, 2, 3]})
    )
    users = validate_users(pd.DataFrame({"user_id": [1, 2], "country": ["fr", "de"]}))
    return videos, interactions, users


def test_feature_space_rows_and_content():
    videos, interactions, users = _tables()
    space = FeatureSpace.fit(FeatureConfig(max_tokens=8), videos, interactions, users)
    rows = space.video_vocab.lookup([100, 300])
    cat = space.catalogue
    assert cat.video_rows[rows].tolist() == rows.tolist()
    food = space.categories.row("food")
    assert cat.category_rows[rows[0]].tolist()[:2] == [food, 0]
    expected = [
        hash_token(t, 20_000) for t in ["cooking", "pasta", "ep", "1", "chef", "tag:italian"]
    ]
    assert cat.token_ids[rows[0]].tolist()[:6] == expected
    assert cat.creator_rows[rows[1]] == PAD_ROW  # unknown creator
    # Duration known for 100, unknown for 300: the flag column says so.
    assert cat.numeric[rows[0], 3] == 1.0 and cat.numeric[rows[1], 3] == 0.0
    assert space.user_attribute_matrix(space.user_rows(np.array([2])))[0, 0] == (
        space.user_attributes["country"].row("de")
    )
    assert tokenize("Hello, World-2!") == ["hello", "world", "2"]


def test_history_matrix_left_pads_and_drops_unknown_videos():
    videos, interactions, users = _tables()
    space = FeatureSpace.fit(FeatureConfig(history_length=3), videos, interactions, users)
    rows, dropped = space.history_matrix(
        [np.array([100, 999, 200]), np.array([300, 100, 200, 300])]
    )
    r = space.video_vocab.lookup
    assert rows[0].tolist() == [0, r([100])[0], r([200])[0]]
    assert rows[1].tolist() == r([100, 200, 300]).tolist()  # most recent three
    assert dropped == 1


def test_feature_space_grows_and_round_trips(tmp_path):
    videos, interactions, users = _tables()
    space = FeatureSpace.fit(FeatureConfig(), videos, interactions, users)
    new_video = validate_videos(
        pd.DataFrame(
            {
                "video_id": [400],
                "title": ["Mars rover"],
                "categories": [("space",)],
                "creator": ["NASA"],
            }
        )
    )
    new_events = validate_interactions(
        pd.DataFrame({"user_id": [3], "video_id": [400], "timestamp": [9]})
    )
    grown = space.grow(videos=new_video, interactions=new_events)
    assert (
        grown.video_vocab.lookup([100, 200, 300]).tolist()
        == space.video_vocab.lookup([100, 200, 300]).tolist()
    )
    row = grown.video_vocab.lookup([400])[0]
    assert row == space.video_vocab.num_rows
    assert grown.catalogue.category_rows[row, 0] == grown.categories.row("space")
    np.testing.assert_array_equal(
        grown.catalogue.token_ids[: space.video_vocab.num_rows], space.catalogue.token_ids
    )
    assert grown.user_rows(np.array([3]))[0] != OOV_ROW
    grown.save(tmp_path / "vocab")
    loaded = FeatureSpace.load(tmp_path / "vocab")
    for name, values in grown.catalogue.as_dict().items():
        np.testing.assert_array_equal(getattr(loaded.catalogue, name), values)
    assert loaded.video_vocab == grown.video_vocab
    assert loaded.categories.values == grown.categories.values
    assert loaded.config == grown.config


def test_engagement_is_watch_fraction_else_rating():
    from core.features import engagement_labels

    videos = validate_videos(pd.DataFrame({"video_id": [1, 2], "duration": [100.0, np.nan]}))
    events = validate_interactions(
        pd.DataFrame(
            {
                "user_id": [1, 1, 1, 1],
                "video_id": [1, 1, 2, 2],
                "timestamp": [1, 2, 3, 4],
                "watch_seconds": [25.0, 150.0, 30.0, np.nan],
                "rating": [np.nan, np.nan, 4.0, np.nan],
            }
        )
    )
    labels = engagement_labels(events, videos)
    np.testing.assert_allclose(labels[:3], [0.25, 1.0, 0.8])
    assert np.isnan(labels[3])
