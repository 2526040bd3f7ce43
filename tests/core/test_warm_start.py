import numpy as np
import pytest

from core.errors import DataError
from core.warm_start import grow_weights


def test_old_rows_kept_new_rows_fresh_other_tensors_copied():
    previous = [np.arange(6.0).reshape(3, 2), np.array([7.0, 8.0])]
    fresh = [np.full((5, 2), -1.0), np.zeros(2)]
    merged, report = grow_weights(fresh, previous)
    np.testing.assert_array_equal(merged[0][:3], previous[0])
    np.testing.assert_array_equal(merged[0][3:], [[-1.0, -1.0], [-1.0, -1.0]])
    np.testing.assert_array_equal(merged[1], [7.0, 8.0])
    assert report.copied == 1 and report.grown == {0: (3, 5)}
    # The inputs are not modified.
    assert (fresh[0] == -1.0).all()


@pytest.mark.parametrize(
    ("fresh", "previous", "message"),
    [
        (
            [np.zeros((2, 2))],
            [np.zeros((3, 2))],
            r"weight 0 has shape \(2, 2\), previously \(3, 2\)",
        ),
        ([np.zeros((3, 4))], [np.zeros((3, 2))], "only tables may grow"),
        (
            [np.zeros(2)],
            [np.zeros(2), np.zeros(1)],
            "the model has 1 weight tensors, the previous one 2",
        ),
    ],
)
def test_architecture_changes_are_refused(fresh, previous, message):
    with pytest.raises(DataError, match=message):
        grow_weights(fresh, previous)
