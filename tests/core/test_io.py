"""Atomic writes and read-only mappings (core/io.py)."""

import mmap
from pathlib import Path

import numpy as np
import pytest

from core.io import atomic_write_with, map_npy


def test_a_streamed_write_replaces_the_file_whole_or_not_at_all(tmp_path):
    target = tmp_path / "videos.faiss"
    target.write_bytes(b"old")

    def fails_halfway(path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, fails_halfway)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["videos.faiss"]  # no temporary left

    atomic_write_with(target, lambda path: Path(path).write_bytes(b"new index"))
    assert target.read_bytes() == b"new index"
    assert [p.name for p in tmp_path.iterdir()] == ["videos.faiss"]


def test_a_mapped_array_is_a_plain_read_only_view_of_the_file(tmp_path):
    np.save(tmp_path / "rows.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    rows = map_npy(tmp_path / "rows.npy")
    assert type(rows) is np.ndarray and not rows.flags.writeable
    np.testing.assert_array_equal(rows[[2, 0]], [[4.0, 5.0], [0.0, 1.0]])
    base = rows
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    assert base is not None  # the pages are the file's, shared by every process mapping it
    with pytest.raises(ValueError, match="read-only"):
        rows[0, 0] = 1.0
