import numpy as np
import pandas as pd
import pytest

from core.config import FeatureConfig
from core.errors import DataError
from core.features import FeatureSpace
from core.schema import validate_interactions, validate_videos
from core.sequences import training_windows


def _space_and_data(sequences):
    rows = [(u, v, t) for u, seq in sequences.items() for t, v in enumerate(seq)]
    interactions = validate_interactions(
        pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp"])
    )
    videos = validate_videos(pd.DataFrame({"video_id": sorted({v for _, v, _ in rows})}))
    return FeatureSpace.fit(FeatureConfig(), videos, interactions), interactions


def test_every_target_is_owned_once_with_only_earlier_inputs():
    sequences = {1: [10, 11, 12, 13, 14, 15, 16, 17], 2: [20, 21], 3: [30]}
    space, interactions = _space_and_data(sequences)
    windows = training_windows(interactions, space, length=4, stride=2)
    to_id = space.video_vocab.id_of
    owned_pairs = []
    for i in range(len(windows)):
        inputs = to_id(windows.inputs[i])
        targets = to_id(windows.targets[i])
        for j in np.flatnonzero(windows.owned[i]):
            history = [v for v in inputs[: j + 1] if v >= 0]
            owned_pairs.append((int(targets[j]), history))
    # User 1's targets 11..17 and user 2's 21 appear exactly once each.
    assert sorted(t for t, _ in owned_pairs) == [11, 12, 13, 14, 15, 16, 17, 21]
    for target, history in owned_pairs:
        seq = sequences[1] if target < 20 else sequences[2]
        position = seq.index(target)
        # The history is a contiguous run of the watches right before the target.
        assert history == seq[position - len(history) : position]
        # With stride 2 and length 4 every owned target sees >= 2 earlier watches, or all.
        assert len(history) >= min(2, position)


def test_windows_by_hand():
    space, interactions = _space_and_data({1: [10, 11, 12, 13, 14]})
    windows = training_windows(interactions, space, length=3, stride=3)
    to_id = space.video_vocab.id_of
    assert [to_id(w).tolist() for w in windows.targets] == [[12, 13, 14], [-1, -1, 11]]
    assert [to_id(w).tolist() for w in windows.inputs] == [[11, 12, 13], [-1, -1, 10]]
    assert windows.owned.tolist() == [[True, True, True], [False, False, True]]
    assert windows.num_examples == 4


def test_windows_need_a_second_event():
    space, interactions = _space_and_data({1: [10], 2: [11]})
    with pytest.raises(DataError, match="no user has two or more training events"):
        training_windows(interactions, space, length=4)


def test_next_watch_examples_hold_only_earlier_events_of_the_same_user():
    from core.sequences import next_watch_examples

    _, interactions = _space_and_data({1: [10, 11, 12, 13], 2: [20, 21]})
    examples = next_watch_examples(interactions, length=2)
    videos = interactions["video_id"].to_numpy()
    assert [videos[t] for t in examples.target_events] == [11, 12, 13, 21]
    histories = examples.gather(videos, fill=-1).tolist()
    assert histories == [[-1, 10], [10, 11], [11, 12], [-1, 20]]
    recent = next_watch_examples(interactions, length=2, max_examples=2)
    assert [videos[t] for t in recent.target_events] == [12, 13]  # timestamps 2 and 3


def test_next_watch_examples_keep_each_users_latest_when_asked():
    from core.sequences import next_watch_examples

    _, interactions = _space_and_data({1: [10, 11, 12, 13], 2: [20, 21]})
    videos = interactions["video_id"].to_numpy()
    latest = next_watch_examples(interactions, length=3, per_user=2)
    assert [videos[t] for t in latest.target_events] == [12, 13, 21]
    # The histories still reach back before the kept examples.
    assert latest.gather(videos, fill=-1).tolist() == [[-1, 10, 11], [10, 11, 12], [-1, -1, 20]]
