import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from core.schema import validate_interactions
from core.splits import leave_one_out, time_cut


def _interactions(rows):
    return validate_interactions(
        pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp"]), "test"
    )


def test_leave_one_out_by_hand():
    data = _interactions(
        [
            (1, 10, 100),
            (1, 11, 200),
            (1, 12, 300),
            (1, 13, 400),
            (1, 14, 500),
            (2, 20, 50),
            (2, 21, 60),  # two events: training only
            (3, 30, 10),
            (3, 31, 20),
            (3, 32, 30),
        ]
    )
    split = leave_one_out(data)
    assert split.train.groupby("user_id")["video_id"].apply(list).to_dict() == {
        1: [10, 11, 12],
        2: [20, 21],
        3: [30],
    }
    assert split.validation.user_ids.tolist() == [1, 3]
    assert [split.validation.history(i).tolist() for i in range(2)] == [[10, 11, 12], [30]]
    assert split.validation.target_video_ids.tolist() == [13, 31]
    assert [split.test.history(i).tolist() for i in range(2)] == [[10, 11, 12, 13], [30, 31]]
    assert split.test.target_video_ids.tolist() == [14, 32]


def test_leave_one_out_keeps_file_order_for_equal_timestamps():
    data = _interactions([(1, 10, 5), (1, 12, 5), (1, 11, 5)])
    split = leave_one_out(data)
    assert split.validation.target_video_ids.tolist() == [12]
    assert split.test.target_video_ids.tolist() == [11]


def test_no_leakage_on_ml_100k(shared_data_dir):
    from pipelines.data.datasets import load_movielens_100k

    data = load_movielens_100k(shared_data_dir / "ml-100k").interactions
    split = leave_one_out(data)
    assert len(split.test) == 943  # every ml-100k user rated at least 20 movies
    assert len(split.train) == 100_000 - 2 * 943
    last_train = split.train.groupby("user_id")["timestamp"].max()
    for cases in (split.validation, split.test):
        for i in range(len(cases)):
            user = cases.user_ids[i]
            # Every event the model may read precedes (or ties with) the held-out one.
            assert (
                cases.history_timestamps[
                    cases.history_indptr[i] : cases.history_indptr[i + 1]
                ].max()
                <= cases.target_timestamps[i]
            )
            assert last_train[user] <= cases.target_timestamps[i]
    # Held-out events are not in training, and validation precedes test.
    held_out = set(zip(split.test.user_ids, split.test.target_video_ids, strict=True))
    held_out |= set(zip(split.validation.user_ids, split.validation.target_video_ids, strict=True))
    train_pairs = set(zip(split.train["user_id"], split.train["video_id"], strict=True))
    assert not held_out & train_pairs
    assert (split.validation.target_timestamps <= split.test.target_timestamps).all()


def test_leave_one_out_needs_three_events():
    data = _interactions([(1, 10, 1), (1, 11, 2)])
    with pytest.raises(DataError, match="no user has 3 or more events"):
        leave_one_out(data)


def test_time_cut_by_hand():
    data = _interactions(
        [
            (1, 10, 100),
            (1, 11, 200),
            (1, 12, 300),
            (1, 11, 310),
            (1, 13, 500),
            (2, 20, 150),
            (2, 21, 250),
            (3, 30, 260),
        ]  # no history before the cut: not evaluated
    )
    split = time_cut(data, cutoff=250, window_seconds=100)
    assert split.train["video_id"].tolist() == [10, 11, 20]
    assert split.test.user_ids.tolist() == [1, 2]
    # User 1: 12 is new in the window, 11 was already watched, 13 is after the window.
    assert split.test.targets(0).tolist() == [12]
    assert split.test.history(0).tolist() == [10, 11]
    assert split.test.targets(1).tolist() == [21]


def test_time_cut_errors():
    data = _interactions([(1, 10, 100), (1, 11, 200)])
    with pytest.raises(DataError, match="no interactions before the cutoff 50"):
        time_cut(data, cutoff=50, window_seconds=10)
    with pytest.raises(DataError, match="widen the window"):
        time_cut(data, cutoff=150, window_seconds=10)
    with pytest.raises(DataError, match="window_seconds must be > 0"):
        time_cut(data, cutoff=150, window_seconds=0)


def test_last_event_holdout_by_hand():
    from core.splits import last_event_holdout

    data = _interactions([(1, 10, 1), (1, 11, 2), (1, 12, 3), (2, 20, 1), (3, 30, 1), (3, 31, 2)])
    train, cases = last_event_holdout(data, engagement=np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    assert train["video_id"].tolist() == [10, 11, 20, 30]
    assert cases.user_ids.tolist() == [1, 3]
    assert cases.target_video_ids.tolist() == [12, 31]
    assert cases.history(0).tolist() == [10, 11] and cases.history(1).tolist() == [30]
    np.testing.assert_allclose(cases.history_engagement, [0.1, 0.2, 0.5])
